"""Centre and random pointing baselines against hand-computed cases and a naive re-draw loop."""
from __future__ import annotations

import math
import statistics
from pathlib import Path

import pytest
import torch

from phraseground.data.types import Caption, ImageSample, Phrase
from phraseground.errors import ConfigError
from phraseground.eval.baselines import center_point, evaluate_baseline, random_points


def phrase(boxes, types=("people",)) -> Phrase:
    return Phrase("a thing", 0, 2, "1", tuple(types), tuple(boxes))


def samples() -> list[ImageSample]:
    """Image 0 (100x80, centre (50, 40)): a centre box (hit), a left box (miss), a notvisual
    phrase and a small box; image 1 (60x60, centre (30, 30)): a top-right box (miss)."""
    first = ImageSample("a", Path("a.jpg"), 100, 80, (
        Caption("a b c", (phrase([(38, 28, 62, 52)], ("people",)), phrase([(0, 0, 30, 80)], ("animals", "people")))),
        Caption("d e f", (phrase([], ("notvisual",)), phrase([(0, 0, 5, 5)], ("people",)))),
    ))
    second = ImageSample("b", Path("b.jpg"), 60, 60, (Caption("g h", (phrase([(40, 0, 60, 30)], ("scene",)),)),))
    return [first, second]


def test_center_point():
    assert center_point(640, 480) == (320.0, 240.0)
    assert center_point(5, 3) == (2.5, 1.5)


def test_random_points_are_seeded_and_inside_the_image():
    a = random_points(30, 20, 500, torch.Generator().manual_seed(7))
    b = random_points(30, 20, 500, torch.Generator().manual_seed(7))
    c = random_points(30, 20, 500, torch.Generator().manual_seed(8))
    assert a.shape == (500, 2) and torch.equal(a, b) and not torch.equal(a, c)
    assert bool((a[:, 0] >= 0).all() and (a[:, 0] < 30).all() and (a[:, 1] >= 0).all() and (a[:, 1] < 20).all())
    assert abs(a[:, 0].mean().item() - 15) < 1.5 and abs(a[:, 1].mean().item() - 10) < 1.0


def test_center_baseline_by_hand():
    report = evaluate_baseline(samples(), "center", "akbari2019")
    assert report["baseline"] == "center"
    assert (report["hits"], report["misses"], report["n_evaluated"]) == (1, 2, 3)
    assert report["accuracy"] == pytest.approx(1 / 3)
    assert report["skipped"] == {"notvisual": 1, "small_box": 1}
    assert report["per_type"]["people"] == {"accuracy": 0.5, "hits": 1, "misses": 1}
    assert report["per_type"]["scene"] == {"accuracy": 0.0, "hits": 0, "misses": 1}


def test_random_baseline_matches_a_naive_redraw():
    repeats, seed = 7, 3
    report = evaluate_baseline(iter(samples()), "random", "akbari2019", repeats=repeats, seed=seed)
    # redraw: `repeats` points per phrase, in reading order, skipped phrases included
    gen = torch.Generator().manual_seed(seed)
    hits_per_repeat = [0] * repeats
    people_hits = [0] * repeats
    n_eval = n_people = 0
    for s in samples():
        for cap in s.captions:
            for p in cap.phrases:
                pts = random_points(s.width, s.height, repeats, gen).tolist()
                if p.is_notvisual or (p.boxes[0][2] - p.boxes[0][0]) * (p.boxes[0][3] - p.boxes[0][1]) < 0.05 * s.width * s.height:
                    continue
                n_eval += 1
                n_people += "people" in p.types
                for r, (x, y) in enumerate(pts):
                    hit = any(x0 <= math.floor(x) < x1 and y0 <= math.floor(y) < y1 for x0, y0, x1, y1 in p.boxes)
                    hits_per_repeat[r] += hit
                    people_hits[r] += hit and "people" in p.types
    accuracies = [h / n_eval for h in hits_per_repeat]
    assert report["n_evaluated"] == n_eval == 3
    assert report["hits"] == pytest.approx(sum(hits_per_repeat) / repeats)
    assert report["misses"] == pytest.approx(n_eval - sum(hits_per_repeat) / repeats)
    assert report["accuracy"] == pytest.approx(statistics.mean(accuracies))
    assert report["accuracy_std"] == pytest.approx(statistics.pstdev(accuracies))
    assert report["per_type"]["people"]["hits"] == pytest.approx(sum(people_hits) / repeats)
    assert report["per_type"]["people"]["accuracy"] == pytest.approx(sum(people_hits) / repeats / n_people)
    assert report["skipped"] == {"notvisual": 1, "small_box": 1}
    assert (report["repeats"], report["seed"], report["averaged_over_repeats"]) == (repeats, seed, True)
    assert 0 < report["accuracy"] < 1  # the draws are neither all hits nor all misses


def test_random_baseline_whole_image_box_always_hits():
    whole = [ImageSample("c", Path("c.jpg"), 40, 30, (Caption("x", (phrase([(0, 0, 40, 30)]),) * 3),))]
    report = evaluate_baseline(whole, "random", "engilberge2018", repeats=5, seed=0)
    assert (report["accuracy"], report["hits"], report["misses"], report["accuracy_std"]) == (1.0, 3.0, 0.0, 0.0)


def test_bad_options():
    with pytest.raises(ConfigError, match="center, random"):
        evaluate_baseline(samples(), "corner")
    with pytest.raises(ConfigError, match="repeats"):
        evaluate_baseline(samples(), "random", repeats=0)
    with pytest.raises(ConfigError, match="akbari2019"):
        evaluate_baseline(samples(), "center", protocol="nope")

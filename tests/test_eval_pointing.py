"""Pointing game protocols checked against hand-computed cases and a naive bilinear resize."""
from __future__ import annotations

import math

import pytest
import torch

from phraseground.data.types import Phrase
from phraseground.errors import ConfigError, PhrasegroundError
from phraseground.eval.metrics import resize_heatmap
from phraseground.eval.pointing import (
    PROTOCOLS,
    PointingGame,
    get_protocol,
    point_hits,
    pointing_point,
    skip_reason,
)


def phrase(boxes=((2, 1, 5, 4),), types=("people",)) -> Phrase:
    return Phrase("a thing", 0, 2, "1", tuple(types), tuple(boxes))


def one_hot(h: int, w: int, row: int, col: int) -> torch.Tensor:
    hm = torch.zeros(h, w)
    hm[row, col] = 1.0
    return hm


def naive_bilinear(src: list[list[float]], out_h: int, out_w: int) -> list[list[float]]:
    """Bilinear resize with PyTorch's align_corners=False rule, one output pixel at a time."""
    in_h, in_w = len(src), len(src[0])

    def source(dst: int, n_in: int, n_out: int) -> tuple[int, int, float]:
        s = max((dst + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = int(math.floor(s))
        return i0, min(i0 + 1, n_in - 1), s - i0

    out = []
    for r in range(out_h):
        y0, y1, ly = source(r, in_h, out_h)
        row = []
        for c in range(out_w):
            x0, x1, lx = source(c, in_w, out_w)
            top = (1 - lx) * src[y0][x0] + lx * src[y0][x1]
            bottom = (1 - lx) * src[y1][x0] + lx * src[y1][x1]
            row.append((1 - ly) * top + ly * bottom)
        out.append(row)
    return out


def test_get_protocol_unknown_lists_known_names():
    with pytest.raises(ConfigError) as err:
        get_protocol("akbari")
    for name in ("akbari2019", "engilberge2018", "tolerance15"):
        assert name in str(err.value)
    assert get_protocol("tolerance15") is PROTOCOLS["tolerance15"]


def test_ties_take_first_argmax_row_major():
    hm = torch.tensor([[0.0, 1.0, 3.0], [3.0, 0.0, 3.0]])
    # full resolution (map already image-sized): pixel (col 2, row 0) -> its centre
    assert pointing_point(hm, 3, 2, "akbari2019") == (2.5, 0.5)
    # low resolution: cell (i 0, j 2) of a 2x3 map on a 300x100 image -> ((2.5) * 100, 0.5 * 50)
    assert pointing_point(hm, 300, 100, "engilberge2018") == (250.0, 25.0)


def test_engilberge_cell_centre_and_strict_inside():
    hm = one_hot(2, 4, row=1, col=2)
    point = pointing_point(hm, 100, 50, "engilberge2018")
    assert point == (62.5, 37.5)  # ((2 + .5) * 100 / 4, (1 + .5) * 50 / 2)
    assert point_hits(point, [(60, 30, 70, 40)], "engilberge2018")
    assert not point_hits(point, [(62.5, 30, 70, 40)], "engilberge2018")  # on the left edge
    assert not point_hits(point, [(50, 30, 62.5, 40)], "engilberge2018")  # on the right edge
    assert not point_hits(point, [(60, 37.5, 70, 40)], "engilberge2018")  # on the top edge
    game = PointingGame("engilberge2018")
    assert game.update(phrase([(60, 30, 70, 40)]), 100, 50, heatmap=hm) is True


@pytest.mark.parametrize(
    "row, col, hit",
    [(1, 2, True), (4, 5, True), (1, 5, True), (4, 2, True),  # corners: MultiGrounding's x0 <= col <= x1
     (1, 6, False), (5, 4, False), (0, 2, False), (1, 1, False)],  # their outside neighbours
)
def test_akbari_edges_are_inclusive_on_the_boxes_as_given(row, col, hit):
    # box (2, 1, 5, 4) as given: MultiGrounding's test counts columns 2..5 and rows 1..4
    game = PointingGame("akbari2019")
    assert game.update(phrase(), 8, 6, heatmap=one_hot(6, 8, row, col)) is hit
    assert game.compute()["hits"] == int(hit)


@pytest.mark.parametrize(
    "row, col, hit",
    [(2, 3, True), (4, 5, True), (1, 3, False), (2, 2, False), (5, 5, False), (4, 6, False)],
)
def test_akbari_flickr30k_frame_shifts_the_near_edges(row, col, hit):
    # our (2, 1, 5, 4) is the XML box (3, 2, 5, 4): columns 3..5, rows 2..4 in the 0-based argmax
    game = PointingGame("akbari2019", box_frame="flickr30k")
    assert game.update(phrase(), 8, 6, heatmap=one_hot(6, 8, row, col)) is hit


def test_other_protocols_keep_half_open_pixels():
    assert point_hits((4.5, 3.5), [(2, 1, 5, 4)], "tolerance15")
    assert not point_hits((5.5, 3.5), [(2, 1, 5, 4)], "engilberge2018")


def test_pixel_rule_uses_the_pixel_not_its_centre():
    # pixel column 2 is not inside a box starting at x0 = 2.5 although its centre 2.5 is
    assert not point_hits((2.5, 2.5), [(2.5, 0, 5, 4)], "akbari2019")
    assert point_hits((3.0, 2.5), [(2.5, 0, 5, 4)], "akbari2019")
    assert point_hits((2.5, 2.5), [(2.5, 0, 5, 4)], "tolerance15")


def test_hit_in_any_box():
    boxes = [(0, 0, 2, 2), (6, 3, 8, 6)]
    game = PointingGame("akbari2019")
    assert game.update(phrase(boxes), 8, 6, heatmap=one_hot(6, 8, 4, 7)) is True
    assert game.update(phrase(boxes), 8, 6, heatmap=one_hot(6, 8, 4, 4)) is False
    assert game.update(phrase(boxes), 8, 6, point=(1.9, 0.0)) is True


def test_five_percent_filter_boundary():
    game = PointingGame("akbari2019")
    exactly = phrase([(0, 0, 25, 20)])  # 500 px of 100x100 = 5 %: evaluated
    below = phrase([(0, 0, 25, 19.96)])  # 499 px: skipped
    spread = phrase([(0, 0, 5, 5), (20, 20, 25, 25)])  # 25 px each, union box 625 px: evaluated
    assert skip_reason(exactly, 100, 100, "akbari2019") is None
    assert skip_reason(below, 100, 100, "akbari2019") == "small_box"
    assert skip_reason(spread, 100, 100, "akbari2019") is None
    assert skip_reason(below, 100, 100, "engilberge2018") is None
    assert skip_reason(below, 100, 100, "tolerance15") is None
    # MultiGrounding's arithmetic: normalised coordinates first, then the area; 20x20 of
    # 100x80 is 5 % exactly, but (0.6 - 0.4) * (0.625 - 0.375) = 0.0499999... < 0.05: skipped
    assert skip_reason(phrase([(40, 30, 60, 50)]), 100, 80, "akbari2019") == "small_box"
    # in the Flickr30k frame the XML box (1..25) is 24 px wide: 480 px < 5 %
    assert skip_reason(exactly, 100, 100, "akbari2019", box_frame="flickr30k") == "small_box"
    for p in (exactly, below, spread):
        game.update(p, 100, 100, point=(1.0, 1.0))
    report = game.compute()
    assert report["skipped"] == {"small_box": 1}
    assert (report["hits"], report["misses"], report["n_evaluated"]) == (2, 0, 2)


def test_notvisual_and_no_box_skips_are_counted():
    game = PointingGame()
    hm = one_hot(6, 8, 2, 3)
    assert game.update(phrase(types=("notvisual",)), 8, 6, heatmap=hm) is None
    assert game.update(phrase(boxes=(), types=("notvisual",)), 8, 6, heatmap=hm) is None
    assert game.update(phrase(boxes=(), types=("scene",)), 8, 6, heatmap=hm) is None
    assert game.update(phrase(), 8, 6, heatmap=hm) is True
    report = game.compute()
    assert report["skipped"] == {"no_box": 1, "notvisual": 2}
    assert report["n_evaluated"] == 1 and report["accuracy"] == 1.0


def test_per_type_counts_a_phrase_in_each_type():
    game = PointingGame()
    inside, outside = one_hot(6, 8, 2, 3), one_hot(6, 8, 5, 7)
    game.update(phrase(types=("bodyparts", "people")), 8, 6, heatmap=inside)
    game.update(phrase(types=("people",)), 8, 6, heatmap=outside)
    game.update(phrase(types=("animals",)), 8, 6, heatmap=inside)
    report = game.compute()
    assert (report["hits"], report["misses"], report["accuracy"]) == (2, 1, 2 / 3)
    assert report["per_type"] == {
        "animals": {"accuracy": 1.0, "hits": 1, "misses": 0},
        "bodyparts": {"accuracy": 1.0, "hits": 1, "misses": 0},
        "people": {"accuracy": 0.5, "hits": 1, "misses": 1},
    }
    game.reset()
    assert game.compute()["n_evaluated"] == 0 and game.compute()["accuracy"] is None


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
def test_all_zero_heatmap_is_a_miss(protocol):
    # the box covers the whole image, so any answer at all would be a hit
    p = phrase([(0, 0, 8, 6)])
    assert pointing_point(torch.zeros(3, 4), 8, 6, protocol) is None
    game = PointingGame(protocol)
    assert game.update(p, 8, 6, heatmap=torch.zeros(3, 4)) is False
    assert game.compute()["misses"] == 1


def test_resize_matches_naive_bilinear_and_gives_the_point():
    gen = torch.Generator().manual_seed(0)
    low = torch.rand(3, 4, generator=gen, dtype=torch.float64)
    width, height = 10, 7
    full = resize_heatmap(low, width, height)
    naive = torch.tensor(naive_bilinear(low.tolist(), height, width), dtype=torch.float64)
    torch.testing.assert_close(full, naive, rtol=0, atol=1e-12)
    best = max(((naive[r, c].item(), r, c) for r in range(height) for c in range(width)))
    assert pointing_point(low, width, height, "akbari2019") == (best[2] + 0.5, best[1] + 0.5)


def test_resize_downsamples_too():
    low = torch.arange(20, dtype=torch.float64).reshape(4, 5)  # (h, w)
    naive = torch.tensor(naive_bilinear(low.tolist(), 3, 2), dtype=torch.float64)
    torch.testing.assert_close(resize_heatmap(low, 2, 3), naive, rtol=0, atol=1e-12)


def test_tolerance15_distance_boundary():
    box = [(50, 50, 60, 60)]
    assert point_hits((55, 55), box, "tolerance15")  # inside: distance 0
    assert point_hits((75, 55), box, "tolerance15")  # 15 px to the right
    assert not point_hits((75.01, 55), box, "tolerance15")
    assert point_hits((69, 72), box, "tolerance15")  # corner: hypot(9, 12) = 15
    assert not point_hits((69, 72.01), box, "tolerance15")
    # through the heatmap path, the point is the pixel centre
    game = PointingGame("tolerance15")
    p = phrase(box)
    assert game.update(p, 100, 100, heatmap=one_hot(100, 100, 55, 74)) is True  # centre 74.5: 14.5 px
    assert game.update(p, 100, 100, heatmap=one_hot(100, 100, 55, 75)) is False  # centre 75.5: 15.5 px


def test_tolerance_rule_against_naive_distance_loop():
    gen = torch.Generator().manual_seed(1)
    for _ in range(200):
        xy = (torch.rand(2, generator=gen) * 100).tolist()
        corners = (torch.rand(3, 4, generator=gen) * 100).tolist()
        boxes = [(min(a, c), min(b, d), max(a, c), max(b, d)) for a, b, c, d in corners]
        nearest = min(
            math.hypot(max(x0 - xy[0], 0, xy[0] - x1), max(y0 - xy[1], 0, xy[1] - y1))
            for x0, y0, x1, y1 in boxes
        )
        assert point_hits(tuple(xy), boxes, "tolerance15") == (nearest <= 15)


def test_bad_inputs_raise_clear_errors():
    game = PointingGame()
    with pytest.raises(ValueError, match="exactly one"):
        game.update(phrase(), 8, 6)
    with pytest.raises(ValueError, match="exactly one"):
        game.update(phrase(), 8, 6, heatmap=torch.ones(2, 2), point=(1, 1))
    with pytest.raises(PhrasegroundError, match="shape"):
        game.update(phrase(), 8, 6, heatmap=torch.ones(1, 2, 2))
    with pytest.raises(PhrasegroundError, match="NaN"):
        game.update(phrase(), 8, 6, heatmap=torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(PhrasegroundError, match="width"):
        game.update(phrase(), 0, 6, point=(1, 1))
    with pytest.raises(PhrasegroundError, match="xyxy"):
        game.update(phrase([(5, 1, 2, 4)]), 8, 6, point=(1, 1))
    assert game.compute()["n_evaluated"] == 0


@pytest.mark.parametrize("protocol,frame", [("akbari2019", "flickr30k"), ("engilberge2018", "xyxy")])
def test_judge_once_scores_like_update(protocol, frame):
    phrases = [phrase(), phrase(boxes=((0, 0, 1, 1),)), phrase(types=("notvisual",)), phrase(boxes=()),
               phrase(boxes=((2, 1, 5, 4), (6, 0, 8, 6)))]
    points = [(3.2, 2.9), (5.0, 4.0), (7.5, 1.0), (0.5, 5.5)]
    plain, judged = PointingGame(protocol, frame), PointingGame(protocol, frame)
    for p in phrases:
        verdict = judged.judge(p, 8, 6)
        assert (verdict[0] is None) == (skip_reason(p, 8, 6, protocol, frame) is None)
        for pt in points:
            assert judged.update(p, 8, 6, point=pt, judged=verdict) == plain.update(p, 8, 6, point=pt)
    assert judged.compute() == plain.compute()
    report = plain.compute()
    assert report["skipped"]["no_box"] == report["skipped"]["notvisual"] == 4  # the skip paths ran
    assert 0 < report["hits"] < report["n_evaluated"]  # hits and misses both

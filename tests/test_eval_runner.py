"""The one evaluation runner against the per-metric classes, and predictions out and back in."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from phraseground.eval.boxes import AttentionCorrectness, BoxAccuracy
from phraseground.eval.grounding import ground_captions
from phraseground.eval.locate import locate
from phraseground.eval.pointing import PointingGame
from phraseground.eval.predictions import PredictionsWriter, read_predictions, score_predictions
from phraseground.eval.runner import caption_batches, resize_batch, run_grounding
from phraseground.models.checkpoint import model_from_checkpoint
from phraseground.data.flickr30k import read_flickr30k
from phraseground.train.data import build_feature_set


@pytest.fixture(scope="module")
def split(tiny_bench):
    samples, _ = read_flickr30k(tiny_bench, "train")
    return samples[:8]


def per_metric_reports(model, fs, frame):
    """The old way: each metric class resizes and scores every phrase on its own."""
    game, att, box = PointingGame("akbari2019", frame), AttentionCorrectness("akbari2019", frame), \
        BoxAccuracy("akbari2019", box_frame=frame)
    for pairs in caption_batches(fs.samples, 16):
        for (i, c), res in zip(pairs, ground_captions(model, fs, pairs)):
            s = fs.samples[i]
            for k, p in enumerate(s.captions[c].phrases):
                hm = res.heatmaps[k].float()
                game.update(p, s.width, s.height, heatmap=hm)
                att.update(p, s.width, s.height, heatmap=hm)
                if res.boxes is None:
                    box.update(p, s.width, s.height, heatmap=hm)
                else:
                    box.update(p, s.width, s.height, boxes=res.boxes[k].float() * torch.tensor([s.width, s.height] * 2))
    return game.compute(), att.compute(), box.compute()


@pytest.mark.parametrize("name", ["mlmcs", "attnreg"])
def test_runner_agrees_with_each_metric_on_its_own(name, model_checkpoints, split):
    model, _ = model_from_checkpoint(model_checkpoints[name])
    fs = build_feature_set(model, split)
    report = run_grounding(model, fs, "akbari2019", batch_size=5, box_frame="flickr30k")
    point, att, box = per_metric_reports(model, fs, "flickr30k")
    assert report["pointing"] == point
    assert report["attention_correctness"]["attention_correctness"] == pytest.approx(att["attention_correctness"])
    assert report["attention_correctness"]["skipped"] == att["skipped"]
    for key in ("accuracy", "hits", "n_evaluated", "skipped", "accuracy_any_gt"):
        assert report["box"][key] == box[key], key
    assert ("pointing_box_centre" in report) is (name == "attnreg")


def test_resize_batch_is_the_single_resize():
    lows = [torch.rand(4, 4) for _ in range(3)] + [torch.rand(2, 3)]
    sizes = [(10, 7), (10, 7), (5, 5), (10, 7)]
    out = resize_batch(lows, sizes)
    for low, (w, h), got in zip(lows, sizes, out):
        want = torch.nn.functional.interpolate(low[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        assert got.shape == (h, w) and np.allclose(got, want.numpy())


@pytest.mark.parametrize("heatmaps", [True, False])
def test_predictions_out_then_in_gives_the_same_report(model_checkpoints, split, tmp_path, heatmaps):
    model, _ = model_from_checkpoint(model_checkpoints["mlmcs"])
    fs = build_feature_set(model, split)
    out = tmp_path / "preds.jsonl"
    writer = PredictionsWriter(out, heatmaps=heatmaps)
    report = run_grounding(model, fs, "akbari2019", box_frame="flickr30k", on_phrase=writer)
    writer.close()
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == len(split) and {"image", "width", "height", "predictions"} <= lines[0].keys()
    rec = lines[0]["predictions"][0]
    for key in ("label", "score", "box", "point", "boxes", "level", "unknown_words", "image_id", "caption_index",
                "phrase_index", "hit", "skip_reason"):
        assert key in rec
    n_records = sum(len(x["predictions"]) for x in lines)
    assert n_records == sum(len(c.phrases) for s in split for c in s.captions)  # skipped phrases too
    back = score_predictions(split, out, "akbari2019", "flickr30k")
    assert back["missing"] == 0
    assert back["pointing"] == report["pointing"]
    if heatmaps:
        assert (tmp_path / "preds_heatmaps").is_dir() and back["scored_from"]["point"] == 0
        assert back["box"]["accuracy"] == report["box"]["accuracy"]
        assert back["attention_correctness"]["attention_correctness"] == pytest.approx(
            report["attention_correctness"]["attention_correctness"], rel=1e-5)


def test_missing_and_malformed_predictions(split, tmp_path):
    from phraseground.errors import PhrasegroundError

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    r = score_predictions(split, empty)
    assert r["missing"] == r["pointing"]["n_evaluated"] > 0 and r["pointing"]["hits"] == 0
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"predictions": [{"label": "x"}]}\n')
    with pytest.raises(PhrasegroundError, match="bad.jsonl:1"):
        read_predictions(bad)
    bad.write_text("{nope\n")
    with pytest.raises(PhrasegroundError, match="bad.jsonl:1: not JSON"):
        read_predictions(bad)


def test_point_only_records_of_another_system(split, tmp_path):
    s = split[0]
    c, k = next((c, k) for c, cap in enumerate(s.captions) for k, p in enumerate(cap.phrases)
                if p.boxes and not p.is_notvisual)
    x0, y0, x1, y1 = s.captions[c].phrases[k].boxes[0]
    f = tmp_path / "other.jsonl"
    f.write_text(json.dumps({"image_id": s.image_id, "caption_index": c, "phrase_index": k,
                             "point": {"x": (x0 + x1) / 2, "y": (y0 + y1) / 2},
                             "box": {"xmin": x0, "ymin": y0, "xmax": x1, "ymax": y1}}) + "\n")
    r = score_predictions([s], f, "akbari2019", "flickr30k")
    assert r["pointing"]["hits"] >= 1 and r["scored_from"]["point"] == 1


def test_locate_lives_in_eval_and_predict_reexports_it():
    import phraseground.predict as predict

    assert predict.locate is locate
    hm = torch.zeros(8, 8)
    hm[2:4, 2:4] = 1.0
    _, point, box = locate(hm, None, 16, 16)
    _, _, box_mg = locate(hm, None, 16, 16, method="heat2bbox")
    assert point is not None and box is not None and box_mg is not None
    assert locate(torch.zeros(4, 4), None, 8, 8)[1:] == (None, None)

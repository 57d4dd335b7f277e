"""The command line: synth + evaluate (baseline), ground, demo, and one-line errors for bad input."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from phraseground.app.cli import main
from phraseground.data.flickr30k import read_flickr30k
from phraseground.predict import check_record


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_synth_then_center_baseline_matches_a_naive_count(tmp_path, capsys):
    data = tmp_path / "s"
    assert _run(capsys, "synth", str(data), "--images", "30", "--seed", "1", "--quiet")[0] == 0
    code, out, _ = _run(capsys, "evaluate", "--data", str(data), "--split", "test", "--baseline", "center",
                        "--json", str(tmp_path / "c.json"))
    assert code == 0 and "pointing (akbari2019)" in out
    report = json.loads((tmp_path / "c.json").read_text())
    assert report["protocol"] == "akbari2019" and report["baseline"] == "center"
    samples, _ = read_flickr30k(data, "test")
    hits = misses = 0
    skipped: dict[str, int] = {}
    assert report["box_frame"] == "flickr30k"
    for s in samples:
        cx, cy = s.width / 2, s.height / 2
        for c in s.captions:
            for p in c.phrases:
                xml = [(b[0] + 1, b[1] + 1, b[2], b[3]) for b in p.boxes]  # MultiGrounding's boxes: the XML's
                if "notvisual" in p.types:
                    skipped["notvisual"] = skipped.get("notvisual", 0) + 1
                elif not p.boxes:
                    skipped["no_box"] = skipped.get("no_box", 0) + 1
                elif ((max(b[2] for b in xml) / s.width - min(b[0] for b in xml) / s.width)
                      * (max(b[3] for b in xml) / s.height - min(b[1] for b in xml) / s.height)) < 0.05:
                    skipped["small_box"] = skipped.get("small_box", 0) + 1
                elif any(b[0] <= int(cx) <= b[2] and b[1] <= int(cy) <= b[3] for b in xml):  # edges inside
                    hits += 1
                else:
                    misses += 1
    assert (report["hits"], report["misses"], report["skipped"]) == (hits, misses, skipped)
    assert report["accuracy"] == pytest.approx(hits / (hits + misses))
    assert sum(v["hits"] for v in report["per_type"].values()) == hits


def test_ground_writes_overlays_and_json(tiny_run, tiny_bench, tmp_path, capsys):
    run, _ = tiny_run
    image = tiny_bench / "images" / "000025.jpg"
    code, out, err = _run(capsys, "ground", str(image), "--phrase", "a red star", "--sentence",
                          "[a small blue square] to the left of [a circle]", "--checkpoint", str(run / "best.pt"),
                          "--out", str(tmp_path / "g"))
    assert code == 0, err
    result = json.loads((tmp_path / "g" / "grounding.json").read_text())
    check_record(result)
    assert (result["image"], result["width"], result["height"]) == (str(image), 128, 128)
    assert [p["label"] for p in result["predictions"]] == ["a red star", "a small blue square", "a circle"]
    for p in result["predictions"]:
        assert p["level"] in ("c2", "c3", "c4")
        assert 0 <= p["point"]["x"] <= 128 and 0 <= p["point"]["y"] <= 128
        b = p["box"]
        assert 0 <= b["xmin"] < b["xmax"] <= 128 and 0 <= b["ymin"] < b["ymax"] <= 128
        png = Image.open(tmp_path / "g" / p["overlay"])
        assert png.size == (128, 128)


@pytest.mark.parametrize("case", ["missing_image", "bad_image", "empty_phrase", "unknown_words", "foreign_ckpt",
                                  "corrupt_ckpt", "unbalanced"])
def test_ground_bad_input_one_line_nonzero_nothing_written(case, tiny_run, tiny_bench, tmp_path, capsys):
    import torch

    run, _ = tiny_run
    image, ckpt, phrase = str(tiny_bench / "images" / "000025.jpg"), str(run / "best.pt"), ["--phrase", "a red star"]
    if case == "missing_image":
        image = str(tmp_path / "nope.jpg")
    elif case == "bad_image":
        (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
        image = str(tmp_path / "bad.jpg")
    elif case == "empty_phrase":
        phrase = ["--phrase", "   "]
    elif case == "unknown_words":
        phrase = ["--phrase", "zebra giraffe"]
    elif case == "foreign_ckpt":
        torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "resnet.pth")
        ckpt = str(tmp_path / "resnet.pth")
    elif case == "corrupt_ckpt":
        (tmp_path / "c.pt").write_bytes((run / "best.pt").read_bytes()[:1000])
        ckpt = str(tmp_path / "c.pt")
    elif case == "unbalanced":
        phrase = ["--sentence", "[a red star to the left"]
    code, out, err = _run(capsys, "ground", image, *phrase, "--checkpoint", ckpt, "--out", str(tmp_path / "g"))
    assert code == 2
    assert err.startswith("phraseground: error: ") and err.count("\n") == 1
    assert not (tmp_path / "g").exists()


def test_evaluate_checkpoint_json(tiny_run, tiny_bench, tmp_path, capsys):
    run, _ = tiny_run
    code, out, err = _run(capsys, "evaluate", "--checkpoint", str(run / "best.pt"), "--data", str(tiny_bench),
                          "--split", "test", "--protocol", "tolerance15", "--json", str(tmp_path / "e.json"), "--quiet")
    assert code == 0, err
    report = json.loads((tmp_path / "e.json").read_text())
    g = report["grounding"]
    assert g["pointing"]["protocol"] == "tolerance15" and g["pointing"]["n_evaluated"] > 0
    assert g["pointing"]["hits"] + g["pointing"]["misses"] == g["pointing"]["n_evaluated"]
    assert 0 <= g["box"]["accuracy"] <= 1 and 0 <= g["attention_correctness"]["attention_correctness"] <= 1


@pytest.mark.parametrize("model", ["mlmcs", "dsve"])
def test_evaluate_task_all_measures_what_the_model_supports(model, model_checkpoints, tiny_bench, tmp_path, capsys):
    """--task all: grounding for every model, retrieval only for those with a joint embedding
    (mlmcs has none: 'all' must not fail on it), while --task retrieval on mlmcs is an error."""
    args = ["--checkpoint", str(model_checkpoints[model]), "--data", str(tiny_bench), "--split", "test", "--quiet"]
    code, _, err = _run(capsys, "evaluate", *args, "--task", "all", "--json", str(tmp_path / "e.json"))
    assert code == 0, err
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["grounding"]["pointing"]["n_evaluated"] > 0
    assert ("retrieval" in report) == (model == "dsve")
    if model == "mlmcs":
        code, _, err = _run(capsys, "evaluate", *args, "--task", "retrieval")
        assert code == 2 and "cannot rank" in err


def test_evaluate_predictions_out_then_in(tiny_run, tiny_bench, tmp_path, capsys):
    run, _ = tiny_run
    preds = tmp_path / "p.jsonl"
    code, _, err = _run(capsys, "evaluate", "--checkpoint", str(run / "best.pt"), "--data", str(tiny_bench),
                        "--split", "test", "--predictions-out", str(preds), "--heatmaps", "--json", str(tmp_path / "a.json"),
                        "--quiet")
    assert code == 0, err
    code, _, err = _run(capsys, "evaluate", "--predictions", str(preds), "--data", str(tiny_bench), "--split", "test",
                        "--json", str(tmp_path / "b.json"), "--quiet")
    assert code == 0, err
    a, b = (json.loads((tmp_path / f"{n}.json").read_text())["grounding"] for n in "ab")
    assert a["pointing"] == b["pointing"] and a["box"]["accuracy"] == b["box"]["accuracy"]
    assert b["missing"] == 0 and b["scored_from"]["heatmap"] == a["pointing"]["n_evaluated"]
    code, _, err = _run(capsys, "evaluate", "--predictions", str(preds), "--checkpoint", str(run / "best.pt"),
                        "--data", str(tiny_bench))
    assert code == 2 and "neither" in err


def test_demo_end_to_end_small(tmp_path, capsys):
    code, out, err = _run(capsys, "demo", "--out", str(tmp_path / "d"), "--images", "30", "--epochs", "1", "--quiet",
                          "--set", "train.batch_size=4", "--set", "model_args.dim=16", "--set", "model_args.grid=4")
    assert code == 0, err
    report = json.loads((tmp_path / "d" / "report.json").read_text())
    for key in ("model", "protocol", "pointing_accuracy", "box_accuracy", "baselines", "n_phrases", "skipped",
                "train_seconds"):
        assert key in report
    assert set(report["baselines"]) >= {"center", "random"}
    assert report["n_phrases"] == report["hits"] + report["misses"] > 0
    assert {"report.md", "report.html", "report_files/overlays.png", "report_files/learning_curve.png",
            "report_files/per_type.png"} <= set(report["report_files"])
    assert all((tmp_path / "d" / name).is_file() for name in report["report_files"])
    html = (tmp_path / "d" / "report.html").read_text()
    assert "<h2>Learning curve</h2>" in html and "<h2>Worst misses</h2>" in html and "data:image/png;base64," in html


def test_prepare_reports_problems_and_writes_an_index(tmp_path, capsys):
    import shutil

    from phraseground.data.index import read_index

    data = tmp_path / "s"
    assert _run(capsys, "synth", str(data), "--images", "30", "--seed", "2", "--quiet")[0] == 0
    assert (data / "test.txt").read_text().split() == ["000026", "000027", "000028", "000029", "000030"]
    (data / "images" / "000027.jpg").unlink()  # a missing image is counted, not fatal
    code, out, err = _run(capsys, "prepare", "flickr30k", "--root", str(data), "--split", "test",
                          "--out", str(tmp_path / "idx" / "test.json.gz"))
    assert code == 0, err
    assert "missing" in out and str(tmp_path / "idx" / "test.json.gz") in out
    samples, _ = read_index(tmp_path / "idx" / "test.json.gz")
    assert [s.image_id for s in samples] == ["000026", "000028", "000029", "000030"]
    # training/evaluation read the index folder with --format index
    code, out, err = _run(capsys, "evaluate", "--data", str(tmp_path / "idx"), "--format", "index", "--split", "test",
                          "--baseline", "center")
    assert code == 0, err
    shutil.rmtree(data / "images")
    (data / "images").mkdir()
    code, out, err = _run(capsys, "prepare", "flickr30k", "--root", str(data), "--split", "test",
                          "--out", str(tmp_path / "bad.json"))
    assert code == 2 and err.startswith("phraseground: error:") and not (tmp_path / "bad.json").exists()

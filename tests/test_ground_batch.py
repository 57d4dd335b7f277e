"""`phraseground ground --input/--images`: batch records equal single calls, one backbone pass per image,
bad lines reported with their number while the rest goes on."""
from __future__ import annotations

import json

import pytest

from phraseground.app.cli import main
from phraseground.predict import check_record
from phraseground.predict.grounder import Grounder

PHRASES = ["a red star", "[a blue square] to the left of [a circle]"]


@pytest.fixture()
def backbone_images(monkeypatch):
    """Counts the images that go through the backbone and the backbone calls."""
    seen = {"calls": 0, "images": 0}
    real = Grounder._features

    def counting(self, images):
        seen["calls"] += 1
        seen["images"] += len(images)
        return real(self, images)

    monkeypatch.setattr(Grounder, "_features", counting)
    return seen


def _images(tiny_bench):
    return [tiny_bench / "images" / f"{k:06d}.jpg" for k in (21, 22, 23)]


def _no_overlay(pred):
    return {k: v for k, v in pred.items() if k != "overlay"}


def test_input_jsonl_equals_single_calls_with_one_backbone_pass_per_image(tiny_run, tiny_bench, tmp_path, capsys,
                                                                          backbone_images):
    run, _ = tiny_run
    ckpt = str(run / "best.pt")
    requests = tmp_path / "requests.jsonl"
    lines = [{"image": str(im), "phrases": [PHRASES[0]], "sentence": PHRASES[1]} for im in _images(tiny_bench)]
    requests.write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert main(["ground", "--input", str(requests), "--checkpoint", ckpt, "--out", str(tmp_path / "b"), "-q"]) == 0
    assert backbone_images == {"calls": 1, "images": 3}  # 3 images x 2 requests' phrases: 3 image passes, one batch
    records = [json.loads(x) for x in (tmp_path / "b" / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 3 and sum(len(r["predictions"]) for r in records) == 9  # 1 phrase + a sentence of 2 per image
    for r in records:
        check_record(r)
    backbone_images.update(calls=0, images=0)
    singles = []
    for k, im in enumerate(_images(tiny_bench)):
        for j, text in enumerate(PHRASES):
            opt = "--phrase" if j == 0 else "--sentence"
            out = tmp_path / f"s{k}{j}"
            assert main(["ground", str(im), opt, text, "--checkpoint", ckpt, "--out", str(out), "--no-overlays"]) == 0
            singles.append(json.loads((out / "grounding.json").read_text()))
    assert backbone_images == {"calls": 6, "images": 6}
    capsys.readouterr()
    for k, rec in enumerate(records):
        assert rec["image"] == singles[2 * k]["image"] and (rec["width"], rec["height"]) == (128, 128)
        merged = singles[2 * k]["predictions"] + singles[2 * k + 1]["predictions"]
        assert [_no_overlay(p) for p in rec["predictions"]] == [_no_overlay(p) for p in merged]


def test_three_images_two_phrases_six_records_three_backbone_passes(tiny_run, tiny_bench, tmp_path, capsys,
                                                                   backbone_images):
    run, _ = tiny_run
    requests = tmp_path / "requests.jsonl"
    requests.write_text("".join(json.dumps({"image": str(im), "phrases": ["a red star", "a circle"]}) + "\n"
                                for im in _images(tiny_bench)))
    assert main(["ground", "--input", str(requests), "--checkpoint", str(run / "best.pt"), "--out", str(tmp_path / "b"),
                 "--batch-size", "1", "-q"]) == 0
    assert backbone_images == {"calls": 3, "images": 3}
    records = [json.loads(x) for x in (tmp_path / "b" / "predictions.jsonl").read_text().splitlines()]
    assert sum(len(r["predictions"]) for r in records) == 6
    g = Grounder.from_checkpoint(run / "best.pt", device="cpu")
    singles = [g(im, [ph])["predictions"][0] for im in _images(tiny_bench) for ph in ("a red star", "a circle")]
    assert [p for r in records for p in r["predictions"]] == singles


def test_bad_lines_are_reported_with_their_number_and_the_rest_goes_on(tiny_run, tiny_bench, tmp_path, capsys):
    run, _ = tiny_run
    good = str(_images(tiny_bench)[0])
    requests = tmp_path / "requests.jsonl"
    requests.write_text("\n".join([
        json.dumps({"image": good, "phrases": ["a red star"]}),
        "{not json",
        json.dumps({"image": str(tmp_path / "missing.jpg"), "phrases": ["a red star"]}),
        "",
        json.dumps({"image": good, "phrases": ["qwerty"]}),
        json.dumps({"image": good, "sentence": "[a circle] left of [a star]"}),
    ]) + "\n")
    code = main(["ground", "--input", str(requests), "--checkpoint", str(run / "best.pt"), "--out", str(tmp_path / "b"),
                 "--overlays", "-q"])
    out, err = capsys.readouterr()
    assert code == 1
    errors = [line for line in err.splitlines() if line.startswith("phraseground: error: ")]
    assert [e.split(": ")[2].rsplit(":", 1)[1] for e in errors] == ["2", "3", "5"]
    assert "not JSON" in errors[0] and "not found" in errors[1] and "no word is known" in errors[2]
    records = [json.loads(x) for x in (tmp_path / "b" / "predictions.jsonl").read_text().splitlines()]
    assert [len(r["predictions"]) for r in records] == [1, 2]
    for r in records:
        for p in r["predictions"]:
            assert (tmp_path / "b" / p["overlay"]).is_file()
    failed = [json.loads(x) for x in (tmp_path / "b" / "errors.jsonl").read_text().splitlines()]
    assert [f["request"].rsplit(":", 1)[1] for f in failed] == ["2", "3", "5"]


def test_images_dir_with_phrases(tiny_run, tiny_bench, tmp_path, capsys):
    run, _ = tiny_run
    folder = tmp_path / "imgs"
    folder.mkdir()
    for im in _images(tiny_bench):
        (folder / im.name).write_bytes(im.read_bytes())
    (folder / "notes.txt").write_text("not an image")
    assert main(["ground", "--images", str(folder), "--phrase", "a red star", "--checkpoint", str(run / "best.pt"),
                 "--out", str(tmp_path / "b"), "-q"]) == 0
    records = [json.loads(x) for x in (tmp_path / "b" / "predictions.jsonl").read_text().splitlines()]
    assert [r["image"] for r in records] == [str(folder / im.name) for im in _images(tiny_bench)]

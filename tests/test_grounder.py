"""The Grounder API: record shape, one backbone pass per image, batching, EXIF frame, export round trip."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from phraseground import Grounder
from phraseground.errors import CheckpointError, PhrasegroundError
from phraseground.predict import check_record, json_ready
from phraseground.predict.export import export_checkpoint


@pytest.fixture(scope="module")
def grounder(tiny_run):
    run, _ = tiny_run
    return Grounder.from_checkpoint(run / "best.pt", device="cpu")


def _images(tiny_bench, n=3):
    return [tiny_bench / "images" / f"{k:06d}.jpg" for k in range(21, 21 + n)]


def _strip(rec):
    """A record without the fields that legitimately differ between calls (none today)."""
    return json.loads(json.dumps(json_ready(rec)))


def test_record_shape_and_coordinates(grounder, tiny_bench):
    image = _images(tiny_bench, 1)[0]
    rec = grounder(image, ["a red star", "a blue square"], heatmap=True)
    check_record(rec)
    assert (rec["image"], rec["width"], rec["height"]) == (str(image), 128, 128)
    assert [p["label"] for p in rec["predictions"]] == ["a red star", "a blue square"]
    for p in rec["predictions"]:
        b, pt = p["box"], p["point"]
        assert 0 <= b["xmin"] < b["xmax"] <= 128 and 0 <= b["ymin"] < b["ymax"] <= 128
        assert 0 <= pt["x"] <= 128 and 0 <= pt["y"] <= 128
        assert 0 <= p["score"] <= 1  # mlmcs: clamped cosines
        assert 1 <= len(p["boxes"]) <= 3 and p["boxes"][0]["score"] == pytest.approx(1.0)
        assert p["level"] in ("c2", "c3", "c4") and p["unknown_words"] == [] and p["overlay"] is None
        assert isinstance(p["heatmap"], np.ndarray) and p["heatmap"].shape == (128, 128)
    json.dumps(json_ready(rec))  # JSON-ready without the arrays


def test_sentence_unknown_words_and_errors(grounder, tiny_bench):
    image = _images(tiny_bench, 1)[0]
    rec = grounder(Image.open(image), "[a small blue zebra] to the left of [a circle]")
    assert [p["label"] for p in rec["predictions"]] == ["a small blue zebra", "a circle"]
    assert rec["predictions"][0]["unknown_words"] == ["zebra"]
    with pytest.raises(PhrasegroundError, match="no word is known"):
        grounder(image, "qwerty zxcvb")
    with pytest.raises(PhrasegroundError, match="empty phrase"):
        grounder(image, ["  "])
    with pytest.raises(PhrasegroundError, match="not found"):
        grounder(tiny_bench / "nope.jpg", "a red star")


def test_phrases_share_one_backbone_pass_and_images_are_batched(grounder, tiny_bench):
    images = _images(tiny_bench)
    phrases = ["a red star", "[a blue square] left of [a circle]"]
    grounder.stats.update(backbone_calls=0, backbone_images=0)
    batched = grounder(images, phrases)
    assert grounder.stats == {"backbone_calls": 1, "backbone_images": 3}
    singles = [grounder(im, [ph]) for im in images for ph in phrases]
    assert grounder.stats == {"backbone_calls": 7, "backbone_images": 9}
    for k, rec in enumerate(batched):
        merged = singles[2 * k]["predictions"] + singles[2 * k + 1]["predictions"]
        for a, b in zip(rec["predictions"], merged):
            assert a["label"] == b["label"] and a["point"] == b["point"] and a["box"] == b["box"]
            assert a["score"] == pytest.approx(b["score"], abs=1e-5)
    per_image = grounder(images[:2], [["a red star"], ["a circle", "a blue square"]])
    assert [len(r["predictions"]) for r in per_image] == [1, 2]


def test_stream_reports_bad_requests_in_place(grounder, tiny_bench):
    good = _images(tiny_bench, 1)[0]
    out = list(grounder.stream([(good, "a red star"), (tiny_bench / "missing.jpg", "a red star"), (good, "qwerty")],
                               return_errors=True))
    assert isinstance(out[0], dict) and all(isinstance(o, PhrasegroundError) for o in out[1:])


def test_exif_rotated_jpeg_is_grounded_in_its_displayed_frame(grounder, tiny_bench, tmp_path):
    stored = Image.open(_images(tiny_bench, 1)[0]).convert("RGB").resize((96, 128))  # stored 96 wide, 128 high
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° CW to display: displayed 128 wide, 96 high
    path = tmp_path / "rotated.jpg"
    stored.save(path, exif=exif.tobytes())
    rec = grounder(path, "a red star")
    assert (rec["width"], rec["height"]) == (128, 96)
    p = rec["predictions"][0]
    assert p["box"]["xmax"] <= 128 and p["box"]["ymax"] <= 96 and p["point"]["y"] <= 96


def test_export_round_trip(tiny_run, tiny_bench, tmp_path, grounder):
    run, _ = tiny_run
    config = export_checkpoint(run / "best.pt", tmp_path / "exp")
    files = sorted(p.name for p in (tmp_path / "exp").iterdir())
    assert files == ["config.json", "model.safetensors", "vocab.json"]
    text = (tmp_path / "exp" / "config.json").read_text()
    assert str(tmp_path) not in text and "/" not in json.dumps(config["model_args"])
    assert (tmp_path / "exp" / "model.safetensors").stat().st_size < (run / "best.pt").stat().st_size
    exported = Grounder.from_pretrained(tmp_path / "exp", device="cpu")
    images = _images(tiny_bench)
    assert [_strip(r) for r in exported(images, ["a red star", "a circle"])] == \
        [_strip(r) for r in grounder(images, ["a red star", "a circle"])]
    with pytest.raises(CheckpointError, match="config.json"):
        Grounder.from_pretrained(tmp_path)


def test_export_command_portable_and_backbone_weights_override(tiny_bench, tmp_path, capsys):
    from conftest import tiny_overrides
    from phraseground.app.cli import main
    from phraseground.encoders.vision import PACKAGE_WEIGHTS
    from phraseground.train.config import load_config
    from phraseground.train.loop import train

    local = tmp_path / "mine" / "synthcnn_local.safetensors"  # trained with a local copy of the weights
    local.parent.mkdir()
    local.write_bytes((PACKAGE_WEIGHTS / "synthcnn.safetensors").read_bytes())
    run = tmp_path / "run"
    train(load_config(None, tiny_overrides(tiny_bench, **{"train.epochs": 1, "model_args.backbone_weights": str(local)})),
          run, progress=False)
    assert main(["export", str(run / "best.pt"), str(tmp_path / "exp")]) == 0
    config = json.loads((tmp_path / "exp" / "config.json").read_text())
    assert config["model_args"]["backbone_weights"] == "pretrained"
    assert config["backbone"]["weights_id"] == "synthcnn.safetensors"
    for f in (tmp_path / "exp").iterdir():
        if f.suffix == ".json":
            assert str(tmp_path) not in f.read_text() and "/root" not in f.read_text()
    image = tiny_bench / "images" / "000025.jpg"
    ref = Grounder.from_checkpoint(run / "best.pt", device="cpu")(image, "a red star")
    by_id = Grounder.from_pretrained(tmp_path / "exp", device="cpu")(image, "a red star")
    override = Grounder.from_pretrained(tmp_path / "exp", device="cpu", backbone_weights=str(local))(image, "a red star")
    assert by_id == ref == override
    with pytest.raises(PhrasegroundError, match="not found"):
        Grounder.from_pretrained(tmp_path / "exp", device="cpu", backbone_weights=str(tmp_path / "nope.safetensors"))
    capsys.readouterr()


def test_fine_tuned_backbone_of_a_checkpoint_is_used(tiny_run, tiny_bench, tmp_path):
    """A checkpoint of online fine-tuning holds its backbone ("backbone"): the Grounder grounds
    with those weights, as evaluate does (FeatureExtractor.for_checkpoint), not the declared ones."""
    import torch

    from phraseground.features import FeatureExtractor
    from phraseground.models.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint

    run, _ = tiny_run
    ckpt = load_checkpoint(run / "best.pt")
    plain = Grounder.from_checkpoint(run / "best.pt", device="cpu")
    tuned_state = {k: (v * 0.5 if v.is_floating_point() else v) for k, v in plain.backbone.state_dict().items()}
    path = tmp_path / "tuned.pt"
    save_checkpoint({k: v for k, v in ckpt.items() if k != "format"} | {"backbone": tuned_state}, path)

    tuned = Grounder.from_checkpoint(path, device="cpu")
    for k, v in tuned.backbone.state_dict().items():
        assert torch.equal(v, tuned_state[k]), k
    model, loaded = model_from_checkpoint(path)
    reference = FeatureExtractor.for_checkpoint(model, loaded, "cpu")
    for k, v in reference.backbone.state_dict().items():
        assert torch.equal(tuned.backbone.state_dict()[k], v), k
    image = _images(tiny_bench, 1)[0]
    a = plain(image, ["a red star"], heatmap=True)["predictions"][0]["heatmap"]
    b = tuned(image, ["a red star"], heatmap=True)["predictions"][0]["heatmap"]
    assert not np.allclose(np.asarray(a), np.asarray(b))
    with pytest.raises(PhrasegroundError, match="fine-tuned backbone"):
        Grounder.from_checkpoint(path, device="cpu", backbone_weights="random")
    with pytest.raises(CheckpointError, match="fine-tuned backbone"):  # not silently dropped
        export_checkpoint(path, tmp_path / "export")
    assert not (tmp_path / "export" / "config.json").exists()

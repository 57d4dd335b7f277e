"""``cam``: class activation maps of the ImageNet classes nearest to the phrase — a model that
needs no training, on real photographs (packaged), through the project's image path."""
from __future__ import annotations

import json

import pytest
import torch

from phraseground.data.photos import read_photo_cases
from phraseground.errors import ConfigError, PhrasegroundError
from phraseground.features import extract_features
from phraseground.models.registry import create_model


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return {s.image_id: s for s in read_photo_cases(cache_dir=tmp_path_factory.mktemp("photos"))}


@pytest.fixture(scope="module")
def cam():
    return create_model("cam").eval()


def ground(cam, sample, phrases):
    from phraseground.encoders.vision import create_backbone, get_backbone_spec

    bb = create_backbone(cam.cfg.backbone, cam.cfg.backbone_weights, cam.feature_taps)
    feats = extract_features(bb, get_backbone_spec(cam.cfg.backbone), [sample.image_path], dtype=torch.float32)
    tokens = " ".join(phrases).split()
    spans, i = [], 0
    for p in phrases:
        spans.append((i, i + len(p.split())))
        i += len(p.split())
    return cam.ground(feats, [tokens], [spans])[0]


def test_photo_cases_read_from_their_packages(photos):
    assert len(photos) == 9 and sum(len(s.captions) for s in photos.values()) == 15
    chelsea = photos["skimage:chelsea"]
    assert (chelsea.width, chelsea.height) == (451, 300) and chelsea.image_path.is_file()
    assert chelsea.captions[0].phrases[0].boxes == ((25.0, 0.0, 400.0, 300.0),)


def test_bad_photo_case_names_its_line(tmp_path):
    f = tmp_path / "photos.jsonl"
    f.write_text('{"image": "skimage:chelsea", "phrase": "the cat", "box": [0, 0, 10, 10]}\n{"image": "skimage:chelsea"}\n')
    with pytest.raises(PhrasegroundError, match="photos.jsonl:2: malformed"):
        read_photo_cases(f, cache_dir=tmp_path)
    f.write_text('{"image": "nowhere:x.png", "phrase": "the cat", "box": [0, 0, 10, 10]}\n')
    with pytest.raises(PhrasegroundError, match="unknown photo reference"):
        read_photo_cases(f, cache_dir=tmp_path)


def test_the_cat_is_found_with_its_concepts(cam, photos):
    s = photos["skimage:chelsea"]
    res = ground(cam, s, ["the cat", "a man"])
    cat, man = res.extras["concepts"]
    assert {c["class"].split(",")[0] for c in cat} & {"tabby", "tiger cat", "Egyptian cat"}
    assert all(c["similarity"] >= cam.cfg.min_similarity for c in cat)
    assert float(res.scores[0]) > 0.3
    hm = res.heatmaps[0]
    r, c = divmod(int(hm.argmax()), hm.shape[1])
    x, y = (c + 0.5) / hm.shape[1] * s.width, (r + 0.5) / hm.shape[0] * s.height
    x0, y0, x1, y1 = s.captions[0].phrases[0].boxes[0]
    assert x0 <= x < x1 and y0 <= y < y1
    # ImageNet has no person class: "a man" has no matching concept, score 0, nothing grounded
    assert man == [] and float(res.scores[1]) == 0.0 and float(res.heatmaps[1].abs().sum()) == 0.0


def test_cam_options_are_checked():
    with pytest.raises(ConfigError, match="class_text"):
        create_model("cam", class_text="wiki")
    with pytest.raises(ConfigError, match="head"):  # synthcnn has no classifier head
        create_model("cam", backbone="synthcnn")


def test_evaluate_baseline_cam_on_the_photos(tmp_path, monkeypatch):
    from phraseground.app.cli import main

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    out = tmp_path / "cam.json"
    assert main(["evaluate", "--baseline", "cam", "--data", "photos", "--json", str(out), "--quiet"]) == 0
    report = json.loads(out.read_text())
    assert report["model"] == "cam" and report["baseline"] == "cam" and report["box_frame"] == "xyxy"
    pointing = report["grounding"]["pointing"]
    assert pointing["n_evaluated"] + sum(pointing["skipped"].values()) == 15
    assert pointing["accuracy"] is not None


def test_ground_model_cam_without_checkpoint(tmp_path, photos):
    from phraseground.app.cli import main

    image = photos["skimage:chelsea"].image_path
    out = tmp_path / "out"
    assert main(["ground", str(image), "--phrase", "the cat", "--phrase", "a person", "--model", "cam",
                 "--out", str(out), "--device", "cpu"]) == 0
    rec = json.loads((out / "grounding.json").read_text())
    cat, person = rec["predictions"]
    assert rec["model"] == "cam" and cat["concepts"] and cat["box"] is not None and cat["overlay"]
    assert person["concepts"] == [] and person["score"] == 0 and person["point"] is None


def test_grounder_api_from_model(photos):
    from phraseground import Grounder

    g = Grounder.from_model("cam", device="cpu")
    rec = g(photos["skimage:coffee"].image_path, ["a cup of coffee"])
    [p] = rec["predictions"]
    assert p["concepts"][0]["class"].startswith("coffee mug") and p["score"] > 0
    with pytest.raises(PhrasegroundError, match="must be trained first"):
        Grounder.from_model("mlmcs")

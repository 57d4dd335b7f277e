"""MS-COCO captions and the Karpathy split, on tiny files written in the real formats."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from phraseground.data.coco import read_coco
from phraseground.data.karpathy import read_karpathy
from phraseground.errors import ConfigError, DataFormatError


def _write_json(path: Path, obj: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def _image(path: Path, size: tuple[int, int]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (10, 20, 30)).save(path)
    return path


def _coco_image(image_id: int, split: str, width: int = 640, height: int = 480) -> dict:
    return {
        "license": 5, "file_name": f"COCO_{split}2014_{image_id:012d}.jpg", "coco_url": "http://x",
        "height": height, "width": width, "date_captured": "2013-11-14 16:28:13", "id": image_id,
    }


@pytest.fixture
def coco_root(tmp_path: Path) -> Path:
    _write_json(tmp_path / "annotations" / "captions_train2014.json", {
        "info": {}, "licenses": [],
        "images": [_coco_image(57870, "train"), _coco_image(7, "train", 300, 200), _coco_image(9, "train")],
        "annotations": [
            {"image_id": 57870, "id": 48, "caption": "A very clean and well decorated empty bathroom"},
            {"image_id": 7, "id": 49, "caption": "  Two dogs\n on a   couch. "},
            {"image_id": 57870, "id": 50, "caption": "A white bathroom."},
            {"image_id": 7, "id": 51, "caption": "   "},
            {"image_id": 123, "id": 52, "caption": "no such image"},
        ],
    })
    _write_json(tmp_path / "annotations" / "captions_val2014.json", {
        "images": [_coco_image(42, "val", 500, 375)],
        "annotations": [{"image_id": 42, "id": 1, "caption": "A cat."}],
    })
    for split, ids in (("train", (57870, 7, 9)), ("val", (42,))):
        for i in ids:
            _image(tmp_path / f"{split}2014" / f"COCO_{split}2014_{i:012d}.jpg", (4, 3))
    return tmp_path


def test_coco_train_split(coco_root: Path) -> None:
    samples, report = read_coco(coco_root, "train")
    assert [s.image_id for s in samples] == ["57870", "7"]
    first, second = samples
    assert first.image_path == coco_root / "train2014" / "COCO_train2014_000000057870.jpg"
    assert (first.width, first.height) == (640, 480)  # from the annotation file, not the 4x3 image
    assert [c.text for c in first.captions] == ["A very clean and well decorated empty bathroom", "A white bathroom."]
    assert all(c.phrases == () for c in first.captions)
    assert (second.width, second.height) == (300, 200)
    assert [c.text for c in second.captions] == ["Two dogs on a couch."]
    assert report.counts == {"empty_caption": 1, "caption_of_unknown_image": 1, "image_without_captions": 1}
    assert report.examples["caption_of_unknown_image"] == ["captions_train2014.json annotations[4] image_id=123"]


def test_coco_all_splits(coco_root: Path) -> None:
    samples, _ = read_coco(coco_root)
    assert [s.image_id for s in samples] == ["57870", "7", "42"]
    assert samples[-1].image_path == coco_root / "val2014" / "COCO_val2014_000000000042.jpg"


def test_coco_missing_image(coco_root: Path) -> None:
    missing = coco_root / "train2014" / "COCO_train2014_000000000007.jpg"
    missing.unlink()
    with pytest.raises(DataFormatError, match="COCO_train2014_000000000007.jpg: image file not found"):
        read_coco(coco_root, "train")
    samples, _ = read_coco(coco_root, "train", require_images=False)
    assert samples[1].image_path == missing


def test_coco_malformed_files(tmp_path: Path) -> None:
    path = _write_json(tmp_path / "annotations" / "captions_train2014.json", {
        "images": [_coco_image(1, "train")], "annotations": [{"image_id": 1, "id": 3}],
    })
    with pytest.raises(DataFormatError, match=r"captions_train2014.json: annotations\[0\]: missing 'caption'"):
        read_coco(tmp_path, "train", require_images=False)
    path.write_text('{"images": [],\n "annotations": [,]}')
    with pytest.raises(DataFormatError, match=r"captions_train2014.json:2: invalid JSON") as err:
        read_coco(tmp_path, "train", require_images=False)
    assert err.value.line == 2
    _write_json(path, {"images": [_coco_image(1, "train"), _coco_image(1, "train")], "annotations": []})
    with pytest.raises(DataFormatError, match="duplicate image id 1"):
        read_coco(tmp_path, "train", require_images=False)
    with pytest.raises(DataFormatError, match="captions_val2014.json: file not found"):
        read_coco(tmp_path, "val")
    with pytest.raises(ConfigError, match="unknown COCO split 'test'"):
        read_coco(tmp_path, "test")


# ----------------------------------------------------------------------------- Karpathy


def _karpathy_image(cocoid: int, split: str, folder: str, raws: list[str]) -> dict:
    return {
        "filepath": folder, "filename": f"COCO_{folder}_{cocoid:012d}.jpg", "imgid": cocoid, "split": split,
        "cocoid": cocoid, "sentids": list(range(len(raws))),
        "sentences": [
            {"tokens": r.lower().split(), "raw": r, "imgid": cocoid, "sentid": k} for k, r in enumerate(raws)
        ],
    }


@pytest.fixture
def karpathy_root(tmp_path: Path) -> Path:
    images = [
        _karpathy_image(1, "train", "train2014", ["A man with a red helmet. ", "A biker."]),
        _karpathy_image(2, "restval", "val2014", ["Two cats."]),
        _karpathy_image(3, "val", "val2014", ["A bus."]),
        _karpathy_image(4, "test", "val2014", ["A dog.", " "]),
    ]
    _write_json(tmp_path / "dataset_coco.json", {"dataset": "coco", "images": images})
    for k, im in enumerate(images, start=1):
        _image(tmp_path / im["filepath"] / im["filename"], (10 * k, 7 * k))
    return tmp_path


def test_karpathy_splits_and_restval(karpathy_root: Path) -> None:
    train, _ = read_karpathy(karpathy_root, "train")
    assert [s.image_id for s in train] == ["1"]
    assert [c.text for c in train[0].captions] == ["A man with a red helmet.", "A biker."]
    assert (train[0].width, train[0].height) == (10, 7)  # read from the image header
    folded, _ = read_karpathy(karpathy_root, "train", restval_into_train=True)
    assert [s.image_id for s in folded] == ["1", "2"]
    assert folded[1].image_path == karpathy_root / "val2014" / "COCO_val2014_000000000002.jpg"
    assert (folded[1].width, folded[1].height) == (20, 14)
    restval, _ = read_karpathy(karpathy_root, "restval")
    assert [s.image_id for s in restval] == ["2"]
    everything, _ = read_karpathy(karpathy_root)
    assert [s.image_id for s in everything] == ["1", "2", "3", "4"]


def test_karpathy_empty_sentence_counted(karpathy_root: Path) -> None:
    test, report = read_karpathy(karpathy_root, "test")
    assert [c.text for c in test[0].captions] == ["A dog."]
    assert report.counts == {"empty_caption": 1}
    assert report.examples["empty_caption"] == ["images[3].sentences[1]"]


def test_karpathy_missing_and_bad_files(karpathy_root: Path) -> None:
    missing = karpathy_root / "val2014" / "COCO_val2014_000000000003.jpg"
    missing.unlink()
    with pytest.raises(DataFormatError, match="COCO_val2014_000000000003.jpg: image file not found"):
        read_karpathy(karpathy_root, "val")
    samples, _ = read_karpathy(karpathy_root, "val", require_images=False)
    assert (samples[0].width, samples[0].height) == (0, 0)
    (karpathy_root / "train2014" / "COCO_train2014_000000000001.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataFormatError, match="COCO_train2014_000000000001.jpg: not a readable image"):
        read_karpathy(karpathy_root, "train")
    _write_json(karpathy_root / "dataset_coco.json", {"images": [_karpathy_image(5, "holdout", "val2014", ["x"])]})
    with pytest.raises(DataFormatError, match=r"dataset_coco.json: images\[0\]: unknown split 'holdout'"):
        read_karpathy(karpathy_root)
    with pytest.raises(ConfigError, match="unknown Karpathy split"):
        read_karpathy(karpathy_root, "dev")

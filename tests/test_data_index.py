"""The dataset index (write/read), sample validation and prepare_dataset on a bad tree."""
from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path

import pytest
from PIL import Image

from phraseground.data.index import DATASETS, prepare_dataset, read_index, validate_samples, write_index
from phraseground.data.validate import check_boxes
from phraseground.data.types import Caption, ImageSample, Phrase, ReadReport
from phraseground.errors import ConfigError, DataFormatError, PhrasegroundError

DATA = Path(__file__).parent / "data"


def _samples(root: Path) -> list[ImageSample]:
    man = Phrase("A man", 0, 2, "1", ("people",), ((0.0, 1.5, 10.0, 20.0), (3.0, 4.0, 5.0, 6.0)))
    sky = Phrase("the sky", 4, 2, "0", ("notvisual",))
    return [
        ImageSample(
            "12", root / "a" / "12.jpg", 640, 480, (Caption("A man under the sky", (man, sky)), Caption("A café"))
        ),
        ImageSample("7", root / "b" / "c" / "7.jpg", 30, 20, (Caption("x"),)),
    ]


@pytest.mark.parametrize("name", ["index.json", "index.json.gz"])
def test_index_roundtrip(tmp_path: Path, name: str) -> None:
    samples = _samples(tmp_path / "images")
    meta = {"dataset": "coco", "split": None, "root": tmp_path}
    path = tmp_path / "out" / name
    write_index(samples, path, meta)
    assert path.read_bytes().startswith(b"\x1f\x8b") == name.endswith(".gz")
    assert [p.name for p in path.parent.iterdir()] == [name]  # no temporary file left behind
    got, got_meta = read_index(path)
    assert got == samples
    assert got_meta == {"dataset": "coco", "split": None, "root": str(tmp_path)}
    moved, _ = read_index(path, image_root=tmp_path / "elsewhere")
    new_root = tmp_path / "elsewhere"
    assert [s.image_path for s in moved] == [new_root / "a" / "12.jpg", new_root / "b" / "c" / "7.jpg"]


def test_empty_index(tmp_path: Path) -> None:
    write_index([], tmp_path / "i.json", {})
    assert read_index(tmp_path / "i.json") == ([], {})


def test_corrupt_or_foreign_index(tmp_path: Path) -> None:
    path = tmp_path / "i.json.gz"
    write_index(_samples(tmp_path), path, {})
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(DataFormatError, match=r"i.json.gz: corrupt index file"):
        read_index(path)
    path.write_bytes(b"\x00\x01garbage")
    with pytest.raises(DataFormatError, match="corrupt index file"):
        read_index(path)
    path.write_text(json.dumps({"images": []}))
    with pytest.raises(DataFormatError, match="not a phraseground index"):
        read_index(path)
    with pytest.raises(DataFormatError, match="index file not found"):
        read_index(tmp_path / "missing.json")

    plain = tmp_path / "i.json"
    write_index(_samples(tmp_path), plain, {})
    doc = json.loads(plain.read_text())
    plain.write_text(json.dumps(dict(doc, version=99)))
    with pytest.raises(DataFormatError, match="index format version 99, this phraseground reads version 1; re-run"):
        read_index(plain)
    bad = json.loads(json.dumps(doc))
    bad["samples"][1][4][0][0] = 5  # caption text is a number
    plain.write_text(json.dumps(bad))
    with pytest.raises(DataFormatError, match=r"corrupt index: samples\[1\]"):
        read_index(plain)
    bad = json.loads(json.dumps(doc))
    bad["samples"][0][4][0][1][0][5][0] = [1, 2, 3]  # a box of three numbers
    plain.write_text(json.dumps(bad))
    with pytest.raises(DataFormatError, match=r"corrupt index: samples\[0\]: a box has 3 numbers"):
        read_index(plain)
    plain.write_text(json.dumps(dict(doc, samples={"a": 1})))
    with pytest.raises(DataFormatError, match="'samples' \\(list\\)"):
        read_index(plain)


def _naive_verdict(box: tuple, width: int, height: int) -> tuple[str, tuple]:
    x0, y0, x1, y1 = box
    if not all(math.isfinite(v) for v in box) or x1 <= x0 or y1 <= y0:
        return "broken", None
    c = (min(max(x0, 0), width), min(max(y0, 0), height), min(max(x1, 0), width), min(max(y1, 0), height))
    if c[2] <= c[0] or c[3] <= c[1]:
        return "outside", None
    return ("clipped" if c != box else "ok"), c


def test_check_boxes_against_naive_loop() -> None:
    rng = random.Random(0)
    boxes = [tuple(float(rng.randint(-20, 120)) for _ in range(4)) for _ in range(400)]
    boxes += [(1.0, 2.0, float("nan"), 4.0), (0.0, 0.0, 100.0, 50.0), (0.5, 0.5, 99.5, 49.5)]
    got = check_boxes(boxes, 100, 50)
    expected = [_naive_verdict(b, 100, 50) for b in boxes]
    assert [v for v, _ in got] == [v for v, _ in expected]
    assert [c for (v, c) in got if v in ("ok", "clipped")] == [c for (v, c) in expected if v in ("ok", "clipped")]
    assert {v for v, _ in got} == {"ok", "clipped", "broken", "outside"}
    assert check_boxes([], 10, 10) == []


def _image(path: Path, size: tuple[int, int] = (8, 6)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size).save(path)
    return path


def test_validate_samples(tmp_path: Path) -> None:
    img = _image(tmp_path / "a.jpg")

    def phrase(*boxes: tuple, first: int = 0, num: int = 1) -> Phrase:
        return Phrase("w", first, num, "1", ("referit",), boxes)

    sample = ImageSample("a", img, 100, 50, (
        Caption("w", (phrase((0, 0, 10, 10), (5, 5, 5, 9), (-10, 40, 20, 70)),)),  # good, broken, clipped
        Caption("w", (phrase((200, 0, 300, 10)),)),   # only box outside: phrase and caption dropped
        Caption("  ", ()),                            # empty
        Caption("a b", (phrase(first=1, num=2), phrase((1, 1, 2, 2)))),  # span past the caption's end
        Caption("w v", (phrase(num=2),)),             # no boxes at all (e.g. notvisual): kept as is
    ))
    missing = ImageSample("m", tmp_path / "missing.jpg", 10, 10, (Caption("x"),))
    unsized = ImageSample("u", img, 0, 0, (Caption("x"),))
    all_broken = ImageSample("z", img, 10, 10, (Caption("x", (phrase((3, 3, 1, 5)),)),))
    kept, problems = validate_samples([sample, missing, unsized, all_broken])
    assert len(kept) == 1
    assert [c.text for c in kept[0].captions] == ["w", "a b", "w v"]
    assert kept[0].captions[0].phrases[0].boxes == ((0.0, 0.0, 10.0, 10.0), (0.0, 40.0, 20.0, 50.0))
    assert [len(p.boxes) for p in kept[0].captions[1].phrases] == [1]
    assert kept[0].captions[2] == sample.captions[4]
    assert problems.counts == {
        "broken_box": 2, "box_clipped": 1, "box_outside_image": 1, "phrase_without_valid_box": 2,
        "caption_without_valid_phrase": 2, "empty_caption": 1, "broken_phrase_span": 1, "missing_image": 1,
        "unknown_image_size": 1, "image_without_captions": 1,
    }
    assert problems.examples["missing_image"] == [str(tmp_path / "missing.jpg")]
    assert problems.examples["broken_box"][0] == "image a 'w': (5, 5, 5, 9) in 100x50"
    assert validate_samples([missing], check_images=False)[0] == [missing]


def _refer_tree(
    root: Path, images: list[tuple[int, int, int]], anns: list[tuple[int, int, list]], refs: list[tuple[int, list[str]]]
) -> None:
    """A refer-layout tree: images (id, w, h), annotations (id, image id, xywh), refs (ann id, expressions)."""
    folder = root / "refclef"
    folder.mkdir(parents=True)
    image_of = {a: i for a, i, _ in anns}
    (folder / "refs(unc).json").write_text(json.dumps([
        {"ref_id": k, "ann_id": a, "image_id": image_of[a], "split": "test",
         "sentences": [{"raw": t, "sent": t.lower(), "tokens": t.split(), "sent_id": j} for j, t in enumerate(texts)]}
        for k, (a, texts) in enumerate(refs)
    ]))
    (folder / "instances.json").write_text(json.dumps({
        "images": [{"id": i, "file_name": f"{i}.jpg", "width": w, "height": h} for i, w, h in images],
        "annotations": [{"id": a, "image_id": i, "bbox": b, "category_id": 1} for a, i, b in anns],
    }))


def test_prepare_bad_tree(tmp_path: Path) -> None:
    root = tmp_path / "refer"
    _refer_tree(
        root,
        images=[(1, 100, 80), (2, 100, 80), (3, 100, 80)],
        anns=[(10, 1, [10, 10, 20, 20]), (11, 1, [90, 70, 30, 30]), (20, 2, [0, 0, 5, 5]), (30, 3, [40, 40, 0, 10])],
        refs=[(10, ["the man", "  "]), (11, ["corner"]), (20, ["sky"]), (30, ["a line"])],
    )
    for i in (1, 3):  # image 2 is missing
        _image(root / "images" / "saiapr_tc-12" / f"{i}.jpg", (100, 80))
    out = tmp_path / "index" / "referit.json.gz"
    report = prepare_dataset("referit", root, out, split="test")
    totals = (report.images_read, report.images_kept, report.captions_kept, report.phrases_kept, report.boxes_kept)
    assert totals == (3, 1, 2, 2, 2)
    assert report.problems.counts == {"missing_image": 1, "broken_box": 1, "phrase_without_valid_box": 1,
                                      "caption_without_valid_phrase": 1, "image_without_captions": 1, "box_clipped": 1}
    assert report.read_report.counts == {"empty_caption": 1}
    assert report.problems.examples["missing_image"] == [str(root / "images" / "saiapr_tc-12" / "2.jpg")]
    text = report.summary()
    assert "referit (split test): kept 1 of 3 images, 2 captions, 2 phrases, 2 boxes" in text
    assert "missing_image: 1" in text and str(root / "images" / "saiapr_tc-12" / "2.jpg") in text
    assert "while reading: empty_caption: 1" in text
    samples, meta = read_index(out)
    assert [(c.text, c.phrases[0].boxes) for c in samples[0].captions] == [
        ("the man", ((10.0, 10.0, 30.0, 30.0),)), ("corner", ((90.0, 70.0, 100.0, 80.0),)),
    ]
    assert meta["dataset"] == "referit" and meta["split"] == "test" and meta["problems"]["missing_image"] == 1


def test_prepare_everything_broken(tmp_path: Path) -> None:
    root = tmp_path / "refer"
    _refer_tree(root, images=[(1, 100, 80)], anns=[(10, 1, [10, 10, 20, 20])], refs=[(10, ["the man"])])
    out = tmp_path / "i.json"
    with pytest.raises(PhrasegroundError, match=r"no usable sample in dataset 'referit'(.|\n)*missing_image: 1"):
        prepare_dataset("referit", root, out)
    assert not out.exists()


def test_prepare_options_and_names(tmp_path: Path) -> None:
    assert set(DATASETS) == {"flickr30k", "coco", "coco-karpathy", "referit", "referit-hu", "vg"}
    with pytest.raises(ConfigError, match="unknown dataset 'imagenet'; known: flickr30k, coco"):
        prepare_dataset("imagenet", tmp_path, tmp_path / "i.json")
    message = r"unknown option\(s\) restval for dataset 'coco-karpathy'; known: restval_into_train, annotation_file"
    with pytest.raises(ConfigError, match=message):
        prepare_dataset("coco-karpathy", tmp_path, tmp_path / "i.json", restval=True)
    with pytest.raises(ConfigError, match="known: none"):
        prepare_dataset("flickr30k", tmp_path, tmp_path / "i.json", year="2014")
    images = [{"filepath": "val2014", "filename": f"{i}.jpg", "cocoid": i, "split": s,
               "sentences": [{"raw": f"caption {i}", "tokens": []}]} for i, s in ((1, "train"), (2, "restval"))]
    (tmp_path / "dataset_coco.json").write_text(json.dumps({"images": images}))
    for i in (1, 2):
        _image(tmp_path / "val2014" / f"{i}.jpg", (16, 12))
    report = prepare_dataset("coco-karpathy", tmp_path, tmp_path / "k.json", split="train", restval_into_train=True)
    assert report.images_kept == 2
    samples, meta = read_index(tmp_path / "k.json")
    assert [(s.image_id, s.width, s.height) for s in samples] == [("1", 16, 12), ("2", 16, 12)]
    assert meta["options"] == {"restval_into_train": True}


def test_prepare_referit_hu_fixture(tmp_path: Path) -> None:
    root = tmp_path / "hu"
    shutil.copytree(DATA / "referit_hu", root)
    _image(root / "8756.jpg", (480, 360))
    report = prepare_dataset("referit-hu", root, tmp_path / "hu.json", split="test")
    assert (report.images_kept, report.captions_kept, report.boxes_kept) == (1, 2, 2)
    assert report.problems.counts == {}
    (sample,), _ = read_index(tmp_path / "hu.json")
    assert (sample.width, sample.height) == (480, 360)


def test_prepare_calls_flickr30k_reader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake(root: Path, split: str | None = None, require_images: bool = True):
        calls.append((root, split, require_images))
        return [ImageSample("1", _image(tmp_path / "1.jpg"), 8, 6, (Caption("a dog"),))], ReadReport()

    monkeypatch.setitem(DATASETS, "flickr30k", fake)
    prepare_dataset("flickr30k", tmp_path, tmp_path / "f.json", split="val")
    assert calls == [(tmp_path, "val", False)]
    assert not (tmp_path / "f.json").read_bytes().startswith(b"\x1f\x8b")

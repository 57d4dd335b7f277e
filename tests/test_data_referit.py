"""ReferIt in the refer and Hu et al. layouts, the restricted pickle loader, and the real samples."""
from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from phraseground.data.referit import mask_box, read_imlist, read_refer, read_referit_hu
from phraseground.data.safe_pickle import load_pickle, pickle_to_json
from phraseground.data.types import ReadReport
from phraseground.errors import ConfigError, DataFormatError

DATA = Path(__file__).parent / "data"
REAL = DATA / "referit"


# ----------------------------------------------------------------------------- restricted pickle


class _Exploit:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return os.system, (f"touch {self.target}",)


def test_pickle_with_os_system_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps([{"ref_id": 0, "x": _Exploit(target)}], protocol=2))
    with pytest.raises(DataFormatError, match=r"refs\(unc\).p: refusing to load this pickle: .*'(posix|os)\.system'"):
        load_pickle(path)
    assert not target.exists()


@pytest.mark.parametrize("obj", [__import__("collections").OrderedDict(a=1), np.float64(1.5), Path("x")])
def test_pickle_with_any_object_is_refused(tmp_path: Path, obj: object) -> None:
    path = tmp_path / "x.p"
    path.write_bytes(pickle.dumps({"k": obj}, protocol=4))
    with pytest.raises(DataFormatError, match="refusing to load this pickle"):
        load_pickle(path)


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_plain_pickle_loads(tmp_path: Path, protocol: int) -> None:
    data = [{"ref_id": 3, "sentences": [{"raw": "top SKY", "tokens": ("top", "sky")}], "score": -1.5,
             "flags": [True, False, None], "big": 2**70, "blob": b"\x00\x01", "set": {1, 2}}]
    path = tmp_path / "x.p"
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    if protocol < 4:  # sets and bytes are pickled through a global (builtins.set, codecs.encode) before protocol 3/4
        with pytest.raises(DataFormatError, match="refusing"):
            load_pickle(path)
        data[0].pop("set"), data[0].pop("blob")
        path.write_bytes(pickle.dumps(data, protocol=protocol))
    assert load_pickle(path) == data


def test_broken_pickles(tmp_path: Path) -> None:
    path = tmp_path / "x.p"
    path.write_bytes(pickle.dumps([1, 2, 3])[:-3])
    with pytest.raises(DataFormatError, match="x.p: not a readable pickle"):
        load_pickle(path)
    with pytest.raises(DataFormatError, match="missing.p: file not found"):
        load_pickle(tmp_path / "missing.p")
    path.write_bytes(b"\x80\x02U\x02\xff\xfeq\x00.")  # a Python 2 byte string that is not UTF-8
    with pytest.raises(DataFormatError, match="not UTF-8"):
        load_pickle(path)


def test_pickle_to_json(tmp_path: Path) -> None:
    src = tmp_path / "refs(unc).p"
    data = [{"ref_id": 1, "tokens": ("a", "b"), "score": 0.25}]
    src.write_bytes(pickle.dumps(data, protocol=2))
    dst = pickle_to_json(src)
    assert dst == tmp_path / "refs(unc).json"
    assert json.loads(dst.read_text()) == [{"ref_id": 1, "tokens": ["a", "b"], "score": 0.25}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["refs(unc).json", "refs(unc).p"]  # no temp file left
    src.write_bytes(pickle.dumps({1: "int key"}, protocol=2))
    with pytest.raises(DataFormatError, match=r"root: dict key 1 is not a string"):
        pickle_to_json(src, tmp_path / "other.json")
    assert not (tmp_path / "other.json").exists()


# ----------------------------------------------------------------------------- refer layout


@pytest.fixture
def refer_root(tmp_path: Path) -> Path:
    shutil.copytree(DATA / "refer", tmp_path / "refer")
    root = tmp_path / "refer"
    image = root / "images" / "saiapr_tc-12" / "08" / "images" / "8756.jpg"
    image.parent.mkdir(parents=True)
    Image.new("RGB", (48, 36)).save(image)
    return root


def test_refer_fixture(refer_root: Path) -> None:
    samples, report = read_refer(refer_root)
    (sample,) = samples
    assert sample.image_id == "8756"
    assert sample.image_path == refer_root / "images" / "saiapr_tc-12" / "08" / "images" / "8756.jpg"
    assert (sample.width, sample.height) == (480, 360)  # from instances.json
    assert [c.text for c in sample.captions] == ["sunray at very top", "top SKY"]
    for caption in sample.captions:
        (phrase,) = caption.phrases
        assert (phrase.text, phrase.first_word, phrase.num_words) == (caption.text, 0, len(caption.tokens))
        assert phrase.types == ("referit",) and phrase.chain_id == "5"
        assert phrase.boxes == ((12.0, 0.0, 12.0 + 329.0, 0.0 + 59.0),)  # xywh [12, 0, 329, 59] -> xyxy
    assert report.counts == {}
    assert read_refer(refer_root, "test")[0] == samples
    with pytest.raises(ConfigError, match="no ref has split 'train'; splits present: test"):
        read_refer(refer_root, "train")


def test_refer_prefers_converted_json(refer_root: Path) -> None:
    expected = read_refer(refer_root)
    pickle_to_json(refer_root / "refclef" / "refs(unc).p")
    (refer_root / "refclef" / "refs(unc).p").write_bytes(b"garbage")
    assert read_refer(refer_root) == expected


def test_refer_missing_image_and_unknown_ann(refer_root: Path) -> None:
    refs = load_pickle(refer_root / "refclef" / "refs(unc).p")
    duplicate = {"raw": "sunray  at very top ", "sent": "sunray at very top", "tokens": [], "sent_id": 2}
    refs[0]["sentences"].append(duplicate)
    refs.append(dict(refs[0], ann_id=99, ref_id=1))
    (refer_root / "refclef" / "refs(unc).json").write_text(json.dumps(refs))
    samples, report = read_refer(refer_root)
    assert [c.text for c in samples[0].captions] == ["sunray at very top", "top SKY"]
    assert report.counts == {"duplicate_expression": 1, "ref_of_unknown_annotation": 1}
    (refer_root / "images" / "saiapr_tc-12" / "08" / "images" / "8756.jpg").unlink()
    with pytest.raises(DataFormatError, match="8756.jpg: image file not found"):
        read_refer(refer_root)
    assert len(read_refer(refer_root, require_images=False)[0]) == 1


def test_refer_other_dataset_folder(refer_root: Path) -> None:
    shutil.copytree(refer_root / "refclef", refer_root / "refcoco")
    samples, _ = read_refer(refer_root, dataset="refcoco", require_images=False)
    assert samples[0].image_path == refer_root / "images" / "mscoco" / "images" / "train2014" / "08/images/8756.jpg"
    samples, _ = read_refer(refer_root, dataset="refcoco", image_dir=refer_root / "imgs", require_images=False)
    assert samples[0].image_path == refer_root / "imgs" / "08/images/8756.jpg"
    with pytest.raises(ConfigError, match="unknown refer dataset 'mine'"):
        read_refer(refer_root, dataset="mine")


def test_refer_bad_instances(refer_root: Path) -> None:
    inst = refer_root / "refclef" / "instances.json"
    data = json.loads(inst.read_text())
    data["annotations"][0]["bbox"] = [1, 2, 3]
    inst.write_text(json.dumps(data))
    with pytest.raises(DataFormatError, match=r"instances.json: annotations\[0\]: bbox must be 4 numbers"):
        read_refer(refer_root)
    with pytest.raises(DataFormatError, match=r"refs\(berkeley\).p: file not found"):
        read_refer(refer_root, split_by="berkeley")


# ----------------------------------------------------------------------------- Hu et al. layout


def _mask(path: Path, shape: tuple[int, int], rows: slice | None, cols: slice | None) -> None:
    m = -np.ones(shape, dtype=np.int16)
    if rows is not None:
        m[rows, cols] = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"segimg_t": m})


def test_mask_box_is_extent_of_zero_pixels(tmp_path: Path) -> None:
    _mask(tmp_path / "1_1.mat", (8, 10), slice(2, 5), slice(3, 8))  # rows 2..4, columns 3..7
    report = ReadReport()
    assert mask_box(tmp_path / "1_1.mat", report) == (3.0, 2.0, 8.0, 5.0)
    m = -np.ones((6, 6), dtype=np.int16)
    m[0, 5] = m[4, 1] = 0  # two isolated pixels: extent columns 1..5, rows 0..4
    scipy.io.savemat(tmp_path / "1_2.mat", {"segimg_t": m})
    assert mask_box(tmp_path / "1_2.mat", report) == (1.0, 0.0, 6.0, 5.0)
    _mask(tmp_path / "1_3.mat", (4, 4), None, None)
    assert mask_box(tmp_path / "1_3.mat", report) is None
    assert mask_box(tmp_path / "1_4.mat", report) is None
    assert report.counts == {"empty_mask": 1, "missing_mask": 1}
    scipy.io.savemat(tmp_path / "1_5.mat", {"other": np.zeros((2, 2))})
    with pytest.raises(DataFormatError, match="1_5.mat: MATLAB file has no 'segimg_t' mask"):
        mask_box(tmp_path / "1_5.mat", report)
    for garbage in (b"not matlab", b"not matlab either" * 20):
        (tmp_path / "1_6.mat").write_bytes(garbage)
        with pytest.raises(DataFormatError, match="1_6.mat: not a readable MATLAB mask"):
            mask_box(tmp_path / "1_6.mat", report)


@pytest.fixture
def hu_root(tmp_path: Path) -> Path:
    root = tmp_path / "ReferIt"
    games = root / "ReferitData" / "RealGames.txt"
    games.parent.mkdir(parents=True)
    games.write_bytes(
        b"8756_2.jpg~sunray at very top~.33919597989949750~.023411371237458192\n"
        b"8756_1.jpg~sky on left~.5~.1\n"
        b"\n"
        b"8756_2.jpg~sunray  at very top ~.3~.02\n"
        b"25_1.jpg~caf\xe9 sign~.1~.1\n"
        b"25_3.jpg~nothing here~.1~.1\n"
        b"25_4.jpg~no mask~.1~.1\n"
    )
    _mask(root / "ImageCLEF" / "mask" / "8756_2.mat", (36, 48), slice(0, 6), slice(1, 34))
    _mask(root / "ImageCLEF" / "mask" / "8756_1.mat", (36, 48), slice(1, 21), slice(0, 13))
    _mask(root / "ImageCLEF" / "mask" / "25_1.mat", (20, 30), slice(10, 20), slice(0, 30))
    _mask(root / "ImageCLEF" / "mask" / "25_3.mat", (20, 30), None, None)
    for name, size in (("8756", (48, 36)), ("25", (30, 20))):
        (root / "ImageCLEF" / "images").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size).save(root / "ImageCLEF" / "images" / f"{name}.jpg")
    (root / "data" / "split").mkdir(parents=True)
    (root / "data" / "split" / "referit_test_imlist.txt").write_text("8756\n")
    (root / "data" / "split" / "referit_train_imlist.txt").write_text("25\n")
    return root


def test_hu_layout_with_masks(hu_root: Path) -> None:
    samples, report = read_referit_hu(hu_root)
    assert [s.image_id for s in samples] == ["8756", "25"]
    first, second = samples
    assert first.image_path == hu_root / "ImageCLEF" / "images" / "8756.jpg"
    assert (first.width, first.height) == (48, 36)  # from the image header
    assert [(c.text, c.phrases[0].chain_id, c.phrases[0].boxes) for c in first.captions] == [
        ("sunray at very top", "8756_2", ((1.0, 0.0, 34.0, 6.0),)),
        ("sky on left", "8756_1", ((0.0, 1.0, 13.0, 21.0),)),
    ]
    assert [(c.text, c.phrases[0].boxes) for c in second.captions] == [("café sign", ((0.0, 10.0, 30.0, 20.0),))]
    assert report.counts == {"duplicate_expression": 1, "non_utf8_line": 1, "empty_mask": 1, "missing_mask": 1}
    assert report.examples["non_utf8_line"] == ["RealGames.txt:5"]
    test, _ = read_referit_hu(hu_root, "test")
    assert [s.image_id for s in test] == ["8756"]
    with pytest.raises(DataFormatError, match="no 'val' image list found"):
        read_referit_hu(hu_root, "val")


def test_hu_layout_errors(hu_root: Path) -> None:
    (hu_root / "ImageCLEF" / "images" / "25.jpg").unlink()
    with pytest.raises(DataFormatError, match="25.jpg: image file not found"):
        read_referit_hu(hu_root)
    samples, _ = read_referit_hu(hu_root, require_images=False)
    assert (samples[1].width, samples[1].height) == (0, 0)
    games = hu_root / "ReferitData" / "RealGames.txt"
    games.write_text("8756_2.jpg~sky\n8756_2.jpg sky without separator\n")
    with pytest.raises(DataFormatError, match=r"RealGames.txt:2: expected '<image>_<region>.jpg~<expression>'"):
        read_referit_hu(hu_root, require_images=False)
    shutil.rmtree(hu_root / "ImageCLEF" / "mask")
    with pytest.raises(DataFormatError, match="no mask folder found"):
        read_referit_hu(hu_root)
    games.unlink()
    with pytest.raises(DataFormatError, match="no expression file found"):
        read_referit_hu(hu_root)


def test_hu_metadata_variant_matches_refer_box(refer_root: Path) -> None:
    samples, report = read_referit_hu(DATA / "referit_hu", "test", require_images=False)
    (sample,) = samples
    assert sample.image_id == "8756" and (sample.width, sample.height) == (0, 0)
    by_crop = {c.phrases[0].chain_id: c for c in sample.captions}
    assert by_crop["8756_1"].text == "sky on left"
    assert by_crop["8756_1"].phrases[0].boxes == ((0.0, 10.0, 121.0, 201.0),)  # inclusive [0, 10, 120, 200]
    # The same region in the refer layout (xywh) gives the same continuous box.
    refer_box = read_refer(refer_root)[0][0].captions[0].phrases[0].boxes
    assert by_crop["8756_2"].phrases[0].boxes == refer_box == ((12.0, 0.0, 341.0, 59.0),)
    assert report.counts == {}


# ----------------------------------------------------------------------------- real samples


def test_real_imlists() -> None:
    lists = {s: read_imlist(REAL / f"referit_{s}_imlist.txt") for s in ("train", "val", "test", "trainval", "all")}
    sizes = {"train": 9000, "val": 1000, "test": 10000, "trainval": 10000, "all": 20000}  # Hu et al. 2016
    assert {s: len(v) for s, v in lists.items()} == sizes
    sets = {s: set(v) for s, v in lists.items()}
    assert all(len(sets[s]) == len(lists[s]) for s in sets)  # no id twice
    assert sets["train"] | sets["val"] == sets["trainval"] and not sets["train"] & sets["val"]
    assert sets["trainval"] | sets["test"] == sets["all"] and not sets["trainval"] & sets["test"]


def _real_tree(tmp_path: Path) -> Path:
    root = tmp_path / "referit"
    root.mkdir()
    shutil.copy(REAL / "CannedGames_sample.txt", root / "CannedGames.txt")
    for s in ("train", "val", "test"):
        shutil.copy(REAL / f"referit_{s}_imlist.txt", root)
    (root / "mask").mkdir()
    return root


def test_real_canned_games_split(tmp_path: Path) -> None:
    root = _real_tree(tmp_path)
    val_ids = set((REAL / "referit_val_imlist.txt").read_text().split())
    expected: dict[str, list[str]] = {}  # crop -> unique normalised expressions, by a plain loop
    for line in (REAL / "CannedGames_sample.txt").read_text().splitlines():
        name, text = line.split("~", 1)
        crop = name[: -len(".jpg")]
        text = " ".join(text.split())
        if crop.split("_")[0] in val_ids and text not in expected.setdefault(crop, []):
            expected[crop].append(text)
    for k, crop in enumerate(expected):  # a distinct one-pixel-row mask per crop: row k % 5
        _mask(root / "mask" / f"{crop}.mat", (5, 4), slice(k % 5, k % 5 + 1), slice(0, 4))
    samples, report = read_referit_hu(root, "val", require_images=False)
    got = {c.phrases[0].chain_id: [] for s in samples for c in s.captions}
    for s in samples:
        for c in s.captions:
            assert s.image_id == c.phrases[0].chain_id.split("_")[0]
            got[c.phrases[0].chain_id].append(c.text)
    assert got == expected
    for k, crop in enumerate(expected):
        boxes = {c.phrases[0].boxes for s in samples for c in s.captions if c.phrases[0].chain_id == crop}
        assert boxes == {((0.0, float(k % 5), 4.0, float(k % 5 + 1)),)}
    assert sorted(s.image_id for s in samples) == sorted({c.split("_")[0] for c in expected})
    assert report.counts.get("missing_mask", 0) == 0


def test_real_canned_games_all_lines_parse(tmp_path: Path) -> None:
    root = _real_tree(tmp_path)
    lines = (REAL / "CannedGames_sample.txt").read_text().splitlines()
    crops = {line.split("~")[0] for line in lines}
    samples, report = read_referit_hu(root, require_images=False)
    assert samples == []  # no masks: every region is counted, none silently skipped
    assert report.counts == {"missing_mask": len(crops)}

"""Visual Genome region descriptions with the Akbari et al. 2019 cleaning, and the packaged split."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from phraseground.data.visual_genome import akbari2019_vg_split, clean_vg_phrase, read_visual_genome
from phraseground.errors import ConfigError, DataFormatError


def _region(region_id: int, image_id: int, phrase: str, x: float, y: float, w: float, h: float) -> dict:
    return {"region_id": region_id, "width": w, "height": h, "image_id": image_id, "phrase": phrase, "y": y, "x": x}


def _image_data(image_id: int, folder: str, width: int, height: int) -> dict:
    return {"width": width, "url": f"https://cs.stanford.edu/people/rak248/{folder}/{image_id}.jpg",
            "height": height, "image_id": image_id, "coco_id": None, "flickr_id": None}


def _write(root: Path, images: list[dict], regions: list[dict]) -> None:
    (root / "image_data.json").write_text(json.dumps(images))
    (root / "region_descriptions.json").write_text(json.dumps(regions))
    for im in images:
        folder = im["url"].split("/")[-2]
        (root / folder).mkdir(exist_ok=True)
        Image.new("RGB", (8, 6)).save(root / folder / f"{im['image_id']}.jpg")


def test_clean_vg_phrase() -> None:
    words = ["the", "clocks", "green", "10", "degree", "half", "cafe"]
    assert clean_vg_phrase("The clock's  GREEN, 10° — ½ café…") == words
    assert clean_vg_phrase("naïve man-made sign!") == ["naive", "manmade", "sign"]
    assert clean_vg_phrase(" ?!. ") == []
    assert clean_vg_phrase("日本 sign") == ["sign"]


@pytest.fixture
def vg_root(tmp_path: Path) -> Path:
    eleven = "one two three four five six seven eight nine ten eleven"
    regions = [
        {"id": 1, "regions": [
            _region(10, 1, "A red car.", 10, 20, 30, 40),
            _region(11, 1, "a  red car", 100, 100, 50, 50),        # same cleaned text: merged
            _region(12, 1, "A RED CAR!", 10, 20, 30, 40),          # same text and box: duplicate
            _region(13, 1, "!!!", 0, 0, 5, 5),                     # no words left
            _region(14, 1, eleven, 0, 0, 5, 5),                    # 11 words: dropped
            _region(15, 1, eleven.rsplit(" ", 1)[0], 0, 0, 5, 5),  # 10 words: kept
            _region(16, 1, "the sky", 750, -10, 100, 60),          # passes right and top edge: clipped
            _region(17, 1, "far away", 900, 10, 20, 20),           # wholly outside: dropped
            _region(18, 1, "a line", 5, 5, 0, 10),                 # zero width: dropped
        ]},
        {"id": 2, "regions": [_region(20, 2, "...", 1, 1, 2, 2)]},  # nothing usable left
        {"id": 3, "regions": [_region(30, 3, "a cat", 1, 1, 2, 2)]},  # no image_data entry
        {"id": 4, "regions": [_region(40, 4, "a dog", 1.5, 2.5, 10, 20)]},
    ]
    images = [
        _image_data(1, "VG_100K", 800, 600), _image_data(2, "VG_100K", 300, 200), _image_data(4, "VG_100K_2", 640, 480)
    ]
    _write(tmp_path, images, regions)
    return tmp_path


def test_read_visual_genome_cleaning(vg_root: Path) -> None:
    samples, report = read_visual_genome(vg_root)
    assert [s.image_id for s in samples] == ["1", "4"]
    first, second = samples
    assert first.image_path == vg_root / "VG_100K" / "1.jpg" and (first.width, first.height) == (800, 600)
    assert second.image_path == vg_root / "VG_100K_2" / "4.jpg" and (second.width, second.height) == (640, 480)
    got = [(c.text, p.first_word, p.num_words, p.chain_id, p.types, p.boxes) for c in first.captions for p in c.phrases]
    assert got == [
        ("a red car", 0, 3, "10", ("vg_region",), ((10.0, 20.0, 40.0, 60.0), (100.0, 100.0, 150.0, 150.0))),
        ("one two three four five six seven eight nine ten", 0, 10, "15", ("vg_region",), ((0.0, 0.0, 5.0, 5.0),)),
        ("the sky", 0, 2, "16", ("vg_region",), ((750.0, 0.0, 800.0, 50.0),)),
    ]
    assert second.captions[0].phrases[0].boxes == ((1.5, 2.5, 11.5, 22.5),)
    assert report.counts == {
        "region_merged": 2, "duplicate_region_box": 1, "region_without_text": 2, "region_too_long": 1,
        "region_box_clipped": 1, "region_box_outside_image": 1, "region_box_broken": 1, "image_without_regions": 1,
        "image_without_metadata": 1,
    }
    assert report.examples["region_box_outside_image"] == ["region 17"]
    assert report.examples["region_box_broken"] == ["region 18"]


def test_visual_genome_akbari_split(tmp_path: Path) -> None:
    train_id, test_id = min(akbari2019_vg_split("train")), min(akbari2019_vg_split("test"))
    _write(tmp_path, [_image_data(i, "VG_100K", 100, 100) for i in (train_id, test_id)],
           [{"id": i, "regions": [_region(i * 10, i, f"thing {i}", 1, 1, 5, 5)]} for i in (train_id, test_id)])
    assert [s.image_id for s in read_visual_genome(tmp_path, "train")[0]] == [str(train_id)]
    assert [s.image_id for s in read_visual_genome(tmp_path, "test")[0]] == [str(test_id)]
    assert [s.image_id for s in read_visual_genome(tmp_path)[0]] == [str(train_id), str(test_id)]
    with pytest.raises(ConfigError, match="unknown Visual Genome split 'val'"):
        read_visual_genome(tmp_path, "val")


def test_packaged_split_file() -> None:
    train, test = akbari2019_vg_split("train"), akbari2019_vg_split("test")
    assert (len(train), len(test)) == (90599, 17478)  # the paper's split sizes
    assert not train & test
    assert len(train | test) == 108077  # every image of Visual Genome 1.2


def test_visual_genome_errors(vg_root: Path) -> None:
    (vg_root / "VG_100K_2" / "4.jpg").unlink()
    with pytest.raises(DataFormatError, match="VG_100K_2/4.jpg: image file not found"):
        read_visual_genome(vg_root)
    assert len(read_visual_genome(vg_root, require_images=False)[0]) == 2
    regions = json.loads((vg_root / "region_descriptions.json").read_text())
    del regions[3]["regions"][0]["phrase"]
    (vg_root / "region_descriptions.json").write_text(json.dumps(regions))
    with pytest.raises(DataFormatError, match=r"region_descriptions.json: \[3\].regions\[0\]: missing 'phrase'"):
        read_visual_genome(vg_root, require_images=False)
    (vg_root / "image_data.json").write_text(json.dumps([{"image_id": 1, "width": 5, "height": 5, "url": "no-folder"}]))
    with pytest.raises(DataFormatError, match=r"image_data.json: \[0\]: url does not end in <folder>/<file>"):
        read_visual_genome(vg_root, require_images=False)


def _write_big_regions(root: Path, images: int, regions_per_image: int) -> int:
    """region_descriptions.json in the real release's layout (one line, VG 1.2 keys), written
    image by image; returns its size in bytes."""
    with open(root / "region_descriptions.json", "w") as f:
        f.write("[")
        for i in range(1, images + 1):
            regions = [_region(i * 1000 + j, i, f"a small red thing number {j} on the left", j % 50, j % 40, 20, 10)
                       for j in range(regions_per_image)]
            f.write(("" if i == 1 else ", ") + json.dumps({"regions": regions, "id": i}))
        f.write("]")
    (root / "image_data.json").write_text(json.dumps([_image_data(i, "VG_100K", 800, 600) for i in range(1, images + 1)]))
    return (root / "region_descriptions.json").stat().st_size


def test_region_descriptions_are_streamed_with_bounded_memory(tmp_path: Path) -> None:
    import tracemalloc

    from phraseground.data.visual_genome import iter_visual_genome

    peaks, sizes = [], []
    for n in (30, 150):  # ~0.25 MB and ~1.2 MB
        root = tmp_path / str(n)
        root.mkdir()
        sizes.append(_write_big_regions(root, n, 60))
        next(iter_visual_genome(root, require_images=False))  # imports done before measuring
        tracemalloc.start()
        assert sum(1 for _ in iter_visual_genome(root, require_images=False)) == n
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    # one image's regions at a time: 5x the file adds little (the image_data table), not the parse tree
    assert peaks[1] - peaks[0] < (sizes[1] - sizes[0]) / 4, (peaks, sizes)
    samples, report = read_visual_genome(tmp_path / "30", require_images=False)
    assert len(samples) == 30 and len(samples[7].captions) == 60 and report.counts == {}


def test_streamed_json_errors_name_the_file(vg_root: Path) -> None:
    path = vg_root / "region_descriptions.json"
    text = path.read_text()
    path.write_text(text[: len(text) // 2])  # truncated download
    with pytest.raises(DataFormatError, match=r"region_descriptions.json: invalid JSON"):
        read_visual_genome(vg_root)
    path.write_text(json.dumps({"regions": []}))
    with pytest.raises(DataFormatError, match=r"region_descriptions.json: expected a list at the top level, got an object"):
        read_visual_genome(vg_root)

"""The synthetic benchmark: determinism, the Flickr30k Entities format, and scene properties."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from phraseground.data.flickr30k import read_flickr30k
from phraseground.data.synthetic import COLOURS, SHAPES, generate_benchmark, split_of


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "s"
    counts = generate_benchmark(root, 60, seed=3)
    return root, counts


def test_deterministic_for_a_seed(bench, tmp_path):
    root, _ = bench
    generate_benchmark(tmp_path / "again", 60, seed=3)
    generate_benchmark(tmp_path / "other", 60, seed=4)
    assert _digest(root) == _digest(tmp_path / "again")
    assert _digest(root) != _digest(tmp_path / "other")


def test_splits_partition_the_images(bench):
    root, counts = bench
    assert counts == {"train": 48, "val": 2, "test": 10}
    ids = {s: (root / f"{s}.txt").read_text().split() for s in counts}
    assert sum(len(v) for v in ids.values()) == len(set().union(*ids.values())) == 60
    assert [split_of(i, 60) for i in (0, 47, 48, 49, 50, 59)] == ["train", "train", "val", "val", "test", "test"]
    assert [split_of(i, 3) for i in range(3)] == ["train", "val", "test"]  # every split gets an image
    assert [split_of(i, 12) for i in (9, 10, 11)] == ["train", "val", "test"]


def test_format_reads_back_with_the_flickr30k_reader(bench):
    root, _ = bench
    samples, report = read_flickr30k(root, None)
    assert len(samples) == 60
    assert set(report.counts) <= {"chain0_notvisual"}  # nothing clipped, every chain annotated
    n_objects, types = [], set()
    for s in samples:
        assert len(s.captions) == 5 and (s.width, s.height) == (128, 128)
        chains = {p.chain_id: p for c in s.captions for p in c.phrases}
        n_objects.append(len([p for p in chains.values() if p.boxes]))
        for c in s.captions:
            tokens = c.text.split()
            visual = [p for p in c.phrases if p.boxes]
            assert 1 <= len(visual) <= 3
            for p in c.phrases:
                types.update(p.types)
                assert " ".join(tokens[p.first_word:p.first_word + p.num_words]) == p.text
                for x0, y0, x1, y1 in p.boxes:
                    assert 0 <= x0 < x1 <= 128 and 0 <= y0 < y1 <= 128
    assert max(n_objects) <= 5 and min(n_objects) >= 1
    assert {"notvisual", "scene"} <= types and len(types - {"notvisual", "scene"}) >= 2


def test_boxes_enclose_the_drawn_object(bench):
    """The pixels of the phrase's colour concentrate inside its box."""
    root, _ = bench
    samples, _ = read_flickr30k(root, "test")
    checked = 0
    for s in samples:
        img = np.asarray(Image.open(s.image_path).convert("RGB"), dtype=np.float32)
        for c in s.captions:
            for p in c.phrases:
                colour = next((w for w in p.text.split() if w in COLOURS), None)
                if not p.boxes or colour is None:
                    continue
                near = np.linalg.norm(img - np.array(COLOURS[colour]), axis=-1) < 40  # (H, W)
                x0, y0, x1, y1 = (int(v) for v in p.boxes[0])
                inside = near[y0:y1, x0:x1].sum()
                assert inside >= 0.15 * (x1 - x0) * (y1 - y0)  # even a ring or a star fills 15 % of its box
                checked += 1
    assert checked > 20


def test_text_matters_distractors_share_shape_or_colour(tmp_path):
    root = tmp_path / "d"
    generate_benchmark(root, 200, seed=0)
    samples, _ = read_flickr30k(root, None)
    with_distractor = 0
    for s in samples:
        objs = {p.chain_id: p.text.split()[-2:] for c in s.captions for p in c.phrases if p.boxes}
        attrs = list(objs.values())  # [colour, shape]
        if any(sum(1 for b in attrs if b[0] == a[0] or b[1] == a[1]) > 1 for a in attrs):
            with_distractor += 1
        for colour, shape in attrs:
            assert colour in COLOURS and shape in SHAPES
    assert with_distractor / len(samples) > 0.6


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        generate_benchmark(tmp_path / "x", 2)
    with pytest.raises(ValueError):
        generate_benchmark(tmp_path / "x", 10, size=16)


def test_worker_processes_write_the_same_files(tmp_path):
    from phraseground.data import synthetic

    n = synthetic.PARALLEL_FROM  # the smallest benchmark that is generated in parallel
    one = generate_benchmark(tmp_path / "one", n, seed=2, workers=1)
    two = generate_benchmark(tmp_path / "two", n, seed=2, workers=2)
    assert one == two
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*") if p.is_file())
    assert len(files) == 3 * n + 3  # image, sentences, annotation per image; three split lists
    for rel in files:
        assert (tmp_path / "one" / rel).read_bytes() == (tmp_path / "two" / rel).read_bytes(), rel
    assert sorted(p.relative_to(tmp_path / "two") for p in (tmp_path / "two").rglob("*") if p.is_file()) == files

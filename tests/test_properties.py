"""Property-based tests (hypothesis): the readers, ``[bracketed]`` parsing and heatmap -> point/box.

Whatever the input, the only failure allowed is the project's one-line error
(PhrasegroundError and its subclasses); whatever is returned is consistent: phrase spans inside
their caption, boxes non-degenerate and inside their image, points inside the image.
"""
from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from phraseground.errors import PhrasegroundError

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                    derandomize=True, database=None)
FILES = settings(SETTINGS, max_examples=40)  # readers of files written to a temporary folder


def one_line(e: BaseException) -> None:
    msg = str(e)
    assert msg and "\n" not in msg and "\r" not in msg, repr(msg)


def check_samples(samples, validated: bool) -> None:
    """Every sample is consistent: phrase spans inside their caption; after validation (what
    ``prepare`` writes to an index) also a positive size and boxes non-degenerate, inside the image."""
    for s in samples:
        assert isinstance(s.width, int) and isinstance(s.height, int)
        if validated:
            assert s.width > 0 and s.height > 0, (s.image_id, s.width, s.height)
        for c in s.captions:
            words = c.text.split()
            assert words and c.text == " ".join(words)
            for p in c.phrases:
                assert 0 <= p.first_word and p.num_words >= 1 and p.first_word + p.num_words <= len(words)
                assert p.text == " ".join(words[p.first_word:p.first_word + p.num_words])
                if not validated:
                    continue
                for b in p.boxes:
                    assert all(math.isfinite(v) for v in b), b
                    assert 0 <= b[0] < b[2] <= s.width and 0 <= b[1] < b[3] <= s.height, (b, s.width, s.height)


def reads(fn, *args, **kwargs):
    """Call a reader, then validate its samples as ``prepare`` does (``validate_samples``).

    Returns the validated samples, or None after checking that a refusal is one line.
    """
    from phraseground.data.index import validate_samples

    try:
        out = fn(*args, **kwargs)
    except PhrasegroundError as e:
        one_line(e)
        return None
    samples = out[0] if isinstance(out, tuple) else out
    check_samples(samples, validated=False)
    kept, problems = validate_samples(samples, check_images=False)
    check_samples(kept, validated=True)
    assert sum(problems.counts.values()) >= 0
    return kept


# --------------------------------------------------------------------------- value strategies
# Each reader gets files that are valid in structure (so the reading paths are exercised, with
# odd but legal values: boxes past the edge, degenerate boxes, empty texts, unknown ids), and in
# about a third of the examples one value somewhere replaced by anything JSON can hold.
words = st.text(st.sampled_from("abcXYZ éß😀-.,'\"/#\\\t"), min_size=1, max_size=8).filter(lambda w: w.strip())
texts = st.lists(words, max_size=6).map(" ".join)
numbers = st.one_of(st.integers(-5, 300), st.integers(-2**40, 2**40),
                    st.floats(allow_nan=True, allow_infinity=True, width=32), st.just(0))
json_scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=6), st.just([]), st.just({}))
coords = st.integers(-10, 70)
sides = st.integers(1, 60)  # bad sizes come from corrupted()


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


@st.composite
def corrupted(draw, valid, rate=0.3):
    """``valid`` content; with probability ``rate`` one value (anywhere but the top) replaced."""
    data = draw(valid)
    rnd = draw(st.randoms(use_true_random=False))
    paths = [p for p in _paths(data) if p]
    if not paths or rnd.random() >= rate:
        return data
    path = rnd.choice(paths)
    node = data
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = draw(json_scalars)
    return data


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, allow_nan=True))


# --------------------------------------------------------------------------- Flickr30k Entities
bad_tokens = st.sampled_from(["[/EN#x/people", "[/EN#-1/a", "[/EN#", "[", "]", "a]", "[/EN#5/", "[]", "]]", "[a",
                              "/EN#1/x", "[/EN#2/people"])
segments = st.lists(st.one_of(
    words.filter(lambda w: "[" not in w and "]" not in w),
    st.tuples(st.integers(0, 6), st.sampled_from(["people", "other", "notvisual", "clothing/bodyparts"]),
              st.lists(words.filter(lambda w: "[" not in w and "]" not in w), min_size=1, max_size=3))
    .map(lambda t: f"[/EN#{t[0]}/{t[1]} " + " ".join(t[2]) + "]"),
), min_size=1, max_size=6)


@st.composite
def sentence_lines(draw):
    toks = " ".join(draw(segments)).split()
    if draw(st.randoms(use_true_random=False)).random() < 0.25:  # one malformed token somewhere
        toks.insert(draw(st.integers(0, len(toks))), draw(bad_tokens))
    return " ".join(toks)


@SETTINGS
@given(sentence_lines())
def test_flickr30k_sentence_parser(line):
    from phraseground.data.flickr30k import parse_sentence

    try:
        text, phrases = parse_sentence(line, "Sentences/1.txt", 3)
    except PhrasegroundError as e:
        one_line(e)
        assert str(e).startswith("Sentences/1.txt:3: ")
        return
    w = text.split()
    assert w and not any("[" in x or "]" in x for x in w)
    for p in phrases:
        assert p.num_words >= 1 and 0 <= p.first_word and p.first_word + p.num_words <= len(w)
        assert p.chain_id.isdigit()


def _xml(width, height, objects) -> str:
    parts = [f"<annotation><size><width>{escape(str(width))}</width><height>{escape(str(height))}</height>"
             "<depth>3</depth></size>"]
    for names, box, scene, nobox in objects:
        body = "".join(f"<name>{escape(str(n))}</name>" for n in names)
        if box is not None:
            body += "<bndbox>" + "".join(f"<{k}>{escape(str(v))}</{k}>"
                                         for k, v in zip(("xmin", "ymin", "xmax", "ymax"), box)) + "</bndbox>"
        body += f"<scene>{scene}</scene><nobndbox>{nobox}</nobndbox>"
        parts.append(f"<object>{body}</object>")
    return "".join(parts) + "</annotation>"


odd_field = st.sampled_from(["12.0", "x", "", "1e3", "-0", "-3", "0"])
valid_box = st.tuples(st.integers(1, 60), st.integers(1, 60), st.integers(1, 70)).map(
    lambda t: (t[0], t[1], t[0] + t[2], t[1] + t[2]))  # may pass the edge: clipped and counted
xml_objects = st.lists(st.tuples(st.lists(st.integers(0, 6), min_size=1, max_size=2),
                                 st.one_of(st.none(), valid_box), st.sampled_from(["0", "1"]),
                                 st.sampled_from(["0", "1"])), max_size=5)


@st.composite
def annotations(draw):
    """(width, height, objects) of an XML file; in a quarter of the draws one field made odd."""
    width, height, objects = draw(st.integers(1, 120)), draw(st.integers(1, 120)), draw(xml_objects)
    rnd = draw(st.randoms(use_true_random=False))
    if rnd.random() < 0.25:
        odd = draw(st.one_of(odd_field, st.integers(-5, 200)))
        spot = rnd.randrange(2 + 5 * len(objects))
        if spot == 0:
            width = odd
        elif spot == 1:
            height = odd
        else:
            k, field = divmod(spot - 2, 5)
            names, box, scene, nobox = objects[k]
            if field == 0:
                names = [draw(st.text("1a ", max_size=3))]
            elif box is not None:
                box = tuple(odd if i == field - 1 else v for i, v in enumerate(box))
            objects[k] = (names, box, scene, nobox)
    return width, height, objects


@FILES
@given(annotations(), st.lists(sentence_lines(), min_size=1, max_size=3))
def test_flickr30k_dataset_reader(annotation, sentences):
    from PIL import Image

    from phraseground.data.flickr30k import read_flickr30k

    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        for sub in ("Sentences", "Annotations", "images"):
            (root / sub).mkdir()
        (root / "Annotations" / "7.xml").write_text(_xml(*annotation))
        (root / "Sentences" / "7.txt").write_text("\n".join(sentences) + "\n")
        Image.new("RGB", (8, 8)).save(root / "images" / "7.jpg")
        (root / "test.txt").write_text("7\n")
        samples = reads(read_flickr30k, root, "test")
        if samples is not None:
            assert [s.image_id for s in samples] == ["7"]


@FILES
@given(st.binary(max_size=200))
def test_flickr30k_files_of_random_bytes(data):
    from phraseground.data.flickr30k import read_annotation, read_sentences

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "f"
        p.write_bytes(data)
        for fn in (read_sentences, read_annotation):
            try:
                fn(p)
            except PhrasegroundError as e:
                one_line(e)


# --------------------------------------------------------------------------- COCO
coco = st.fixed_dictionaries({
    "images": st.lists(st.fixed_dictionaries({"id": st.integers(0, 4), "file_name": st.just("a.jpg"),
                                              "width": sides, "height": sides}), max_size=4, unique_by=lambda d: d["id"]),
    "annotations": st.lists(st.fixed_dictionaries({"image_id": st.integers(0, 5), "caption": texts}), max_size=6)})


@FILES
@given(corrupted(coco))
def test_coco_reader(content):
    from phraseground.data.coco import read_coco

    with tempfile.TemporaryDirectory() as d:
        write_json(Path(d) / "annotations" / "captions_val2014.json", content)
        reads(read_coco, Path(d), "val", require_images=False)


# --------------------------------------------------------------------------- Visual Genome
vg_image_data = st.lists(st.fixed_dictionaries({
    "image_id": st.integers(1, 3), "url": st.sampled_from(["https://x/VG_100K/1.jpg", "https://x/VG_100K_2/2.jpg"]),
    "width": sides, "height": sides}), max_size=3, unique_by=lambda d: d["image_id"])
vg_regions = st.lists(st.fixed_dictionaries({"id": st.integers(1, 4), "regions": st.lists(st.fixed_dictionaries({
    "region_id": st.integers(0, 9), "phrase": st.lists(words, max_size=12).map(" ".join),
    "x": coords, "y": coords, "width": sides, "height": sides}), max_size=4)}), max_size=3)


@FILES
@given(corrupted(vg_image_data), corrupted(vg_regions))
def test_visual_genome_reader(image_data, regions):
    from phraseground.data.visual_genome import read_visual_genome

    with tempfile.TemporaryDirectory() as d:
        write_json(Path(d) / "image_data.json", image_data)
        write_json(Path(d) / "region_descriptions.json", regions)
        reads(read_visual_genome, Path(d), None, require_images=False)


# --------------------------------------------------------------------------- ReferIt
@st.composite
def refer_files(draw):
    """(refs, instances) that mostly refer to each other, then each maybe corrupted."""
    n = draw(st.integers(1, 3))
    images = [{"id": i, "file_name": f"{i}.jpg", "width": draw(sides), "height": draw(sides)} for i in range(n)]
    anns = [{"id": 10 + i, "image_id": i, "bbox": [draw(coords), draw(coords), draw(sides), draw(sides)]}
            for i in range(n)]
    refs = [{"split": draw(st.sampled_from(["train", "test"])), "ann_id": draw(st.sampled_from([10 + i, 99])),
             "image_id": i, "sentences": [{"raw": t} for t in draw(st.lists(texts, min_size=1, max_size=3))]}
            for i in range(n)]
    return (draw(corrupted(st.just(refs))), draw(corrupted(st.just({"images": images, "annotations": anns}))))


@FILES
@given(refer_files())
def test_referit_refer_reader(files):
    from phraseground.data.referit import read_refer

    refs, instances = files
    with tempfile.TemporaryDirectory() as d:
        write_json(Path(d) / "refclef" / "refs(unc).json", refs)
        write_json(Path(d) / "refclef" / "instances.json", instances)
        reads(read_refer, Path(d), None, require_images=False)


crops = st.sampled_from(["1_1", "1_2", "2_1"])


@FILES
@given(corrupted(st.dictionaries(crops, st.lists(texts, max_size=3), max_size=3)),
       corrupted(st.dictionaries(crops, st.lists(coords, min_size=4, max_size=4), max_size=3)), st.booleans())
def test_referit_hu_reader(queries, bboxes, with_image):
    from PIL import Image

    from phraseground.data.referit import read_referit_hu

    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        write_json(root / "data" / "metadata" / "referit_query_dict.json", queries)
        write_json(root / "data" / "metadata" / "referit_imcrop_bbox_dict.json", bboxes)
        (root / "images").mkdir()
        if with_image:
            Image.new("RGB", (30, 20)).save(root / "images" / "1.jpg")
        reads(read_referit_hu, root, None, require_images=False)


@FILES
@given(st.lists(st.one_of(st.tuples(crops, texts).map(lambda t: f"{t[0]}.jpg~{t[1]}"),
                          st.sampled_from(["1_2.jpg~", "x.jpg~y", "1_1.jpg", "~~~", "2_1.jpg~the man~10~20"])),
                max_size=6))
def test_referit_expression_file(lines):
    from phraseground.data.referit import read_referit_hu

    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "mask").mkdir()
        (root / "RealGames.txt").write_text("\n".join(lines) + "\n")
        reads(read_referit_hu, root, None, require_images=False)


# --------------------------------------------------------------------------- [bracketed] sentences
@SETTINGS
@given(st.text(st.sampled_from("ab [] \t\né😀/"), max_size=30))
def test_bracketed_sentence_parsing(sentence):
    from phraseground.predict import parse_bracketed

    try:
        text, spans = parse_bracketed(sentence)
    except PhrasegroundError as e:
        one_line(e)
        return
    w = text.split()
    assert text == " ".join(w) and not any(c in text for c in "[]")
    last = 0
    for s, e in spans:
        assert last <= s < e <= len(w)
        last = e


# --------------------------------------------------------------------------- heatmap -> point / box
finite_or_not = st.floats(allow_nan=True, allow_infinity=True, width=32)
heatmaps = st.one_of(
    arrays(np.float32, st.tuples(st.integers(1, 12), st.integers(1, 12)), elements=finite_or_not),
    arrays(np.float32, st.tuples(st.integers(1, 12), st.integers(1, 12)),
           elements=st.floats(-1e30, 1e30, width=64).map(np.float32)),
    st.tuples(st.integers(1, 12), st.integers(1, 12), st.sampled_from([0.0, 1.0, -1.0, 1e-30, 3e38])).map(
        lambda t: np.full(t[:2], t[2], np.float32)),  # all zeros / constant maps
    arrays(np.float64, st.tuples(st.integers(1, 6), st.integers(1, 6)), elements=st.floats(0, 1)),
)
sizes = st.tuples(st.integers(1, 160), st.integers(1, 160))


def inside_point(p, w, h):
    assert p is None or (0 <= p[0] <= w and 0 <= p[1] <= h), (p, w, h)


def inside_box(b, w, h):
    if b is None:
        return
    assert all(math.isfinite(v) for v in b), b
    assert 0 <= b[0] < b[2] <= w and 0 <= b[1] < b[3] <= h, (b, w, h)


@SETTINGS
@given(heatmaps, sizes)
def test_pointing_points_inside_the_image(hm, size):
    from phraseground.eval.pointing import pointing_point

    w, h = size
    for protocol in ("akbari2019", "engilberge2018", "tolerance15"):
        try:
            inside_point(pointing_point(torch.from_numpy(hm), w, h, protocol), w, h)
        except PhrasegroundError as e:
            one_line(e)


@SETTINGS
@given(heatmaps, sizes)
def test_heatmap_boxes_inside_the_image(hm, size):
    from phraseground.eval.boxes import heatmap_to_boxes
    from phraseground.eval.metrics import resize_heatmap

    w, h = size
    try:
        boxes, scores = heatmap_to_boxes(resize_heatmap(torch.from_numpy(hm), w, h))
    except PhrasegroundError as e:
        one_line(e)
        return
    assert len(boxes) == len(scores) <= 3
    for b in boxes.tolist():
        inside_box(b, w, h)


@SETTINGS
@given(heatmaps, sizes, st.one_of(st.none(), arrays(np.float32, (4,), elements=finite_or_not),
                                  arrays(np.float32, (4,), elements=st.floats(-0.5, 1.5, width=32))))
def test_locate_answers_inside_the_image(hm, size, regressed):
    from phraseground.eval.locate import LOCATE_METHODS, locate_candidates

    w, h = size
    for method in LOCATE_METHODS:
        try:
            full, point, box, cands = locate_candidates(
                torch.from_numpy(hm), None if regressed is None else torch.from_numpy(regressed), w, h, method)
        except PhrasegroundError as e:
            one_line(e)
            continue
        assert tuple(full.shape) == (h, w)
        inside_point(point, w, h)
        inside_box(box, w, h)
        for b, score in cands:
            inside_box(b, w, h)
            assert math.isfinite(score)


def test_hypothesis_is_in_the_test_extra():
    import tomllib

    meta = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert any(d.startswith("hypothesis") for d in meta["project"]["optional-dependencies"]["test"])
    pytest.importorskip("hypothesis")

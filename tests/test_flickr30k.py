"""Flickr30k Entities reader: real sample files, hand-checked values, and bad input."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from phraseground.data.flickr30k import parse_sentence, read_annotation, read_flickr30k, read_sentences
from phraseground.data.types import ReadReport
from phraseground.errors import DataFormatError

DATA = Path(__file__).parent / "data" / "flickr30k_entities"


def test_real_sentences_phrases_types_and_spans():
    sents = read_sentences(DATA / "Sentences" / "1000092795.txt")
    assert len(sents) == 5
    text, phrases = sents[1]
    assert text == "Two young , White males are outside near many bushes ."
    assert [(p.first_word, p.num_words, p.chain_id, p.types) for p in phrases] == [
        (0, 5, "1", ("people",)), (8, 2, "4", ("scene",))]
    assert text.split()[8:10] == ["many", "bushes"]


def test_real_multi_type_phrase_and_notvisual():
    sents = read_sentences(DATA / "Sentences" / "65567.txt")
    found = [(t.split()[p.first_word:p.first_word + p.num_words], p.types)
             for t, ps in sents for p in ps if p.chain_id == "255545"]
    assert (["a", "man", "'s", "arm"], ("bodyparts", "people")) in found
    sents = read_sentences(DATA / "Sentences" / "205842.txt")
    text, phrases = sents[2]
    nv = [p for p in phrases if p.chain_id == "0"]
    assert len(nv) == 1 and nv[0].types == ("notvisual",) and text.split()[nv[0].first_word] == "it"


def test_real_annotation_boxes_are_zero_based_continuous():
    report = ReadReport()
    ann = read_annotation(DATA / "Annotations" / "1000092795.xml", report)
    assert (ann.width, ann.height) == (333, 500)
    # <bndbox> 159 125 219 335 (1-based inclusive) -> (158, 124, 219, 335); the object named 1 and 6 is in both
    assert ann.chains["1"].boxes == [(158.0, 124.0, 219.0, 335.0), (196.0, 109.0, 261.0, 373.0)]
    assert ann.chains["6"].boxes == [(196.0, 109.0, 261.0, 373.0)]
    assert ann.chains["4"].boxes == [(0.0, 219.0, 211.0, 473.0), (275.0, 214.0, 332.0, 337.0)]
    assert ann.chains["10"].boxes == [] and ann.chains["10"].nobndbox and not ann.chains["10"].scene
    assert report.counts == {}


def _tree(tmp_path: Path, ids=("1000092795",)) -> Path:
    root = tmp_path / "f30k"
    (root / "images").mkdir(parents=True)
    shutil.copytree(DATA / "Sentences", root / "Sentences")
    shutil.copytree(DATA / "Annotations", root / "Annotations")
    for i in ids:
        (root / "images" / f"{i}.jpg").write_bytes(b"")
    (root / "test.txt").write_text("\n".join(ids) + "\n")
    return root


def test_read_split_joins_phrases_with_chain_boxes(tmp_path):
    samples, report = read_flickr30k(_tree(tmp_path), "test")
    (s,) = samples
    assert (s.image_id, s.width, s.height, len(s.captions)) == ("1000092795", 333, 500, 5)
    first = s.captions[0].phrases[0]
    assert first.text == "Two young guys" and first.word_span == (0, 3)
    assert first.boxes == ((158.0, 124.0, 219.0, 335.0), (196.0, 109.0, 261.0, 373.0))
    # the sample XML elides chains 2, 3, 5, 7, 8, 9 behind a comment: those phrases have no box
    assert report.counts["chain_without_annotation"] == 7
    hair = s.captions[0].phrases[1]
    assert hair.chain_id == "2" and hair.boxes == ()


@pytest.mark.parametrize("line, message", [
    ("[/EN#1/people A man [/EN#2/clothing a shirt] ]", "nested"),
    ("[/EN#1/people A man in a shirt .", "unclosed"),
    ("[/EN#x/people A man] .", "unknown chain id"),
    ("[/EN#1 A man] .", "malformed phrase tag"),
    ("A man ] in red .", "stray bracket"),
    ("[/EN#1/people ] walks", "empty phrase"),
])
def test_malformed_markup_names_file_and_line(tmp_path, line, message):
    f = tmp_path / "Sentences" / "1.txt"
    f.parent.mkdir()
    f.write_text("[/EN#3/people A woman] .\n" + line + "\n")
    with pytest.raises(DataFormatError, match=message) as e:
        read_sentences(f)
    assert f"{f}:2:" in str(e.value)


def test_parse_sentence_single_word_phrase_and_plain_words():
    text, phrases = parse_sentence("play [/EN#137648/other texas] hold [/EN#1/other em] .")
    assert text == "play texas hold em ."
    assert [(p.first_word, p.num_words) for p in phrases] == [(1, 1), (3, 1)]


def test_box_past_edge_is_clipped_and_counted(tmp_path):
    f = tmp_path / "a.xml"
    f.write_text("<annotation><size><width>100</width><height>50</height></size>"
                 "<object><name>3</name><bndbox><xmin>90</xmin><ymin>1</ymin><xmax>120</xmax><ymax>60</ymax></bndbox></object>"
                 "</annotation>")
    report = ReadReport()
    ann = read_annotation(f, report)
    assert ann.chains["3"].boxes == [(89.0, 0.0, 100.0, 50.0)]
    assert report.counts == {"box_clipped": 1}


@pytest.mark.parametrize("body, message", [
    ("<object><name>a</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object>", "unknown chain id"),
    ("<object><name>1</name><bndbox><xmin>9</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object>", "degenerate box"),
    ("<object><name>1</name><bndbox><xmin>x</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object>", "not a number"),
    ("<object><name>1</name>", "cannot parse"),
])
def test_bad_annotation_names_the_file(tmp_path, body, message):
    f = tmp_path / "b.xml"
    f.write_text(f"<annotation><size><width>10</width><height>10</height></size>{body}</annotation>")
    with pytest.raises(DataFormatError, match=message) as e:
        read_annotation(f)
    assert str(f) in str(e.value)


def test_missing_image_and_missing_split(tmp_path):
    root = _tree(tmp_path)
    (root / "images" / "1000092795.jpg").unlink()
    with pytest.raises(DataFormatError, match="missing image"):
        read_flickr30k(root, "test")
    samples, _ = read_flickr30k(root, "test", require_images=False)
    assert len(samples) == 1
    with pytest.raises(DataFormatError, match="split list"):
        read_flickr30k(root, "val")


def test_real_split_lists_parse(tmp_path):
    from phraseground.data.flickr30k import read_split_ids

    ids = read_split_ids(DATA, "test")
    assert len(ids) == 1000 and len(set(ids)) == 1000 and all(i.isdigit() for i in ids)

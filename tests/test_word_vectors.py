"""Word tables: each on-disk format written by hand, values checked, errors named with file and line."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from phraseground.data.types import ReadReport
from phraseground.encoders.text import LearnedTextEncoder
from phraseground.encoders.word_vectors import (
    WordTable,
    WordVectorEncoder,
    load_npy_table,
    load_text_vectors,
    load_word2vec_binary,
    load_word_vectors,
)
from phraseground.errors import ConfigError, DataFormatError, WeightsNotFoundError

VECS = {
    "cat": [0.5, -1.25, 2.0],
    "dog": [1.0, 0.0, -0.5],
    "café": [3.0, 0.25, 1.5],
}


def write_w2v_bin(path: Path, entries: dict[str, list[float]], newline: bool = True, count: int | None = None) -> Path:
    with open(path, "wb") as f:
        f.write(f"{len(entries) if count is None else count} 3\n".encode())
        for word, vec in entries.items():
            f.write(word.encode("utf-8") + b" " + struct.pack("<3f", *vec) + (b"\n" if newline else b""))
    return path


def assert_table(table: WordTable, entries: dict[str, list[float]]) -> None:
    assert table.words == list(entries)
    np.testing.assert_array_equal(table.matrix, np.array(list(entries.values()), np.float32))


# ---------------------------------------------------------------- formats
@pytest.mark.parametrize("newline", [True, False])
def test_word2vec_binary(tmp_path, newline):
    table = load_word2vec_binary(write_w2v_bin(tmp_path / "v.bin", VECS, newline))
    assert_table(table, VECS)
    assert table.dim == 3 and len(table) == 3


def test_word2vec_binary_restrict_limit_and_errors(tmp_path):
    path = write_w2v_bin(tmp_path / "v.bin", VECS)
    assert_table(load_word2vec_binary(path, restrict_to={"café", "zebra"}), {"café": VECS["café"]})
    assert_table(load_word2vec_binary(path, limit=2), {k: VECS[k] for k in ["cat", "dog"]})
    cut = tmp_path / "cut.bin"
    cut.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DataFormatError, match=r"cut\.bin: file ends inside entry 3 of 3"):
        load_word2vec_binary(cut)
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"three 3\n" + path.read_bytes().split(b"\n", 1)[1])
    with pytest.raises(DataFormatError, match=r"bad\.bin:1: first line is not a word2vec header"):
        load_word2vec_binary(bad)
    extra = write_w2v_bin(tmp_path / "extra.bin", VECS, count=2)
    report = ReadReport()
    assert_table(load_word2vec_binary(extra, report=report), {k: VECS[k] for k in ["cat", "dog"]})
    assert report.counts == {"trailing data after the last vector": 1}


def test_word2vec_text_with_header_and_gzip(tmp_path):
    lines = ["3 3"] + [f"{w} {' '.join(map(str, v))} " for w, v in VECS.items()]  # trailing space as gensim writes
    path = tmp_path / "v.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert_table(load_text_vectors(path), VECS)
    gz = tmp_path / "v.txt.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    assert_table(load_word_vectors(gz), VECS)
    short = tmp_path / "short.txt"
    short.write_text("\n".join(lines[:3]) + "\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"short\.txt: header announces 3 words, the file holds 2"):
        load_text_vectors(short)


def test_glove_text_oddities_counted(tmp_path):
    path = tmp_path / "glove.txt"
    path.write_text(
        "cat 0.5 -1.25 2.0\n"
        "\n"
        ". . . 1 2 3\n"  # GloVe 840B style word with spaces
        "cat 9 9 9\n"  # duplicate: first kept
        "dog 1.0 0.0 -0.5\n",
        encoding="utf-8",
    )
    report = ReadReport()
    table = load_text_vectors(path, report=report)
    assert_table(table, {"cat": VECS["cat"], ". . .": [1, 2, 3], "dog": VECS["dog"]})
    assert report.counts == {"blank line": 1, "word containing spaces": 1, "duplicate word (first kept)": 1}
    assert report.examples["duplicate word (first kept)"] == [f"{path}:4"]


@pytest.mark.parametrize(
    "content, message, line",
    [
        ("cat 1 2 3\ndog 1 2\n", "expected a word and 3 numbers, found 3 fields", 2),
        ("cat 1 2 3\ndog 1 x 3\n", "non-numeric value in the vector of 'dog'", 2),
        ("cat 1 2 3\ndog 1 nan 3\n", "non-finite value in the vector of 'dog'", 2),
        ("2 3\ncat 1 2 3\ndog 4 5\n", "expected a word and 3 numbers, found 3 fields", 3),
        ("", "no vectors in the file", None),
    ],
)
def test_malformed_text_names_file_and_line(tmp_path, content, message, line):
    path = tmp_path / "bad.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataFormatError) as err:
        load_text_vectors(path)
    assert err.value.line == line and message in str(err.value) and str(path) in str(err.value)


def test_npy_table_and_vocab(tmp_path):
    matrix = np.array(list(VECS.values()), np.float32)
    np.save(tmp_path / "utable.npy", matrix[:, None, :])  # (V, 1, D) is flattened
    (tmp_path / "dictionary.txt").write_text("cat\ndog\ncafé\n", encoding="utf-8")
    table = load_word_vectors(tmp_path / "utable.npy", vocab_file=tmp_path / "dictionary.txt")
    assert_table(table, VECS)
    (tmp_path / "dictionary.txt").write_text("cat\ndog\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"dictionary\.txt: 2 words, but .*utable\.npy has 3 rows"):
        load_npy_table(tmp_path / "utable.npy", tmp_path / "dictionary.txt")
    with pytest.raises(ConfigError, match="needs its vocabulary list"):
        load_word_vectors(tmp_path / "utable.npy")


def test_npy_object_array_read_without_arbitrary_unpickling(tmp_path):
    vocab = tmp_path / "dictionary.txt"
    vocab.write_text("cat\ndog\ncafé\n", encoding="utf-8")
    rows = np.empty(3, dtype=object)
    for i, v in enumerate(VECS.values()):
        rows[i] = np.array(v, np.float32)
    np.save(tmp_path / "utable.npy", rows, allow_pickle=True)  # how skip-thought tables are stored
    assert_table(load_npy_table(tmp_path / "utable.npy", vocab), VECS)

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    evil = np.empty(3, dtype=object)
    evil[:] = [Evil(), Evil(), Evil()]
    np.save(tmp_path / "evil.npy", evil, allow_pickle=True)
    with pytest.raises(DataFormatError, match=r"evil\.npy: .*refusing to load 'pathlib.*touch'"):
        load_npy_table(tmp_path / "evil.npy", vocab)
    assert not marker.exists()


def test_missing_file_is_weights_not_found(tmp_path):
    with pytest.raises(WeightsNotFoundError, match=r"word vector file not found: .*glove\.6B\.300d\.txt"):
        load_word_vectors(tmp_path / "glove.6B.300d.txt")


# ---------------------------------------------------------------- table and encoder
def test_word_table_unknown_words_are_counted():
    table = WordTable(list(VECS), np.array(list(VECS.values())))
    out = table.lookup(["dog", "zebra", "cat", "yak"])
    np.testing.assert_array_equal(out, [VECS["dog"], [0, 0, 0], VECS["cat"], [0, 0, 0]])
    assert table.unknown_seen == 2
    named = WordTable(["UNK", "cat"], np.array([[7, 7, 7], VECS["cat"]]), unk_token="UNK")
    np.testing.assert_array_equal(named.lookup(["zebra"]), [[7, 7, 7]])
    small = named.restrict(["zebra"])
    assert small.words == ["UNK"] and small.lookup(["cat"]).tolist() == [[7, 7, 7]]
    with pytest.raises(ConfigError, match="'<unk>' is not in the word table"):
        WordTable(["cat"], np.zeros((1, 3)), unk_token="<unk>")


def test_encoder_uses_table_vectors_and_counts_unknowns():
    unk = np.array([9.0, 9.0, 9.0], np.float32)
    table = WordTable(list(VECS), np.array(list(VECS.values())), unk_vector=unk)
    enc = WordVectorEncoder(table, lstm=True, lstm_hidden=4)
    assert isinstance(enc, LearnedTextEncoder)
    feats = enc([["dog", "zebra", "cat"], ["café"]])
    assert feats.words.shape == (2, 2, 3, 3) and feats.sentence.shape == (2, 2, 4)
    assert feats.mask.tolist() == [[True, True, True], [True, False, False]]
    expected = torch.tensor([VECS["dog"], unk.tolist(), VECS["cat"]])
    torch.testing.assert_close(feats.words[0, 0], expected)
    torch.testing.assert_close(feats.words[1, 0, 0], torch.tensor(VECS["café"]))
    assert enc.vocab.unknown_seen == 1

    feats.words.sum().backward()  # frozen table, trainable LSTM
    assert enc.embedding.weight.grad is None
    assert enc.lstm.weight_ih_l0.grad.abs().sum() > 0


def test_encoder_fine_tuned_and_without_lstm():
    table = WordTable(list(VECS), np.array(list(VECS.values())))
    enc = WordVectorEncoder(table, lstm=False, freeze=False)
    feats = enc([["cat", "dog"], ["café"]])
    assert feats.words.shape == (2, 1, 2, 3) and feats.sentence.shape == (2, 1, 3)
    torch.testing.assert_close(feats.sentence[0, 0], torch.tensor(VECS["cat"]) / 2 + torch.tensor(VECS["dog"]) / 2)
    feats.sentence.sum().backward()
    grad = enc.embedding.weight.grad
    assert grad[enc.vocab.stoi["cat"]].abs().sum() > 0 and grad[enc.vocab.stoi["<unk>"]].abs().sum() == 0

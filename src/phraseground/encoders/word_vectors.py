"""Pretrained word-vector tables and a text encoder over them.

Formats: word2vec binary (``"V D\\n"`` then per word ``word<space>`` + D little-endian float32,
usually followed by ``\\n``), word2vec text (the same header, then ``word v1 … vD`` lines), GloVe
text (no header) and a ``.npy`` matrix with a vocabulary list, one word per line (skip-thought
style ``utable.npy`` + ``dictionary.txt``). Object ``.npy`` arrays (the skip-thought tables are
pickled object arrays) are read with an unpickler that only rebuilds numpy arrays.

Unknown words never crash: they get the table's UNK vector (a named row such as ``UNK``, or
zeros) and are counted.
"""
from __future__ import annotations

import codecs
import gzip
import mmap
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterable, Sequence

import numpy as np
import torch

from ..data.types import ReadReport
from ..errors import ConfigError, DataFormatError, WeightsNotFoundError
from .text import LearnedTextEncoder, Vocab


@dataclass(eq=False)
class WordTable:
    """Words and their vectors, with an explicit vector for unknown words.

    Attributes:
        words: V distinct words; row i of ``matrix`` is the vector of ``words[i]``.
        matrix: (V, D) float32 vectors.
        unk_token: a word of the table whose vector serves unknown words (e.g. ``"UNK"``);
            when None, unknown words get ``unk_vector`` or zeros.
        unk_vector: (D,) vector for unknown words, used when ``unk_token`` is None.
        unknown_seen: number of unknown words looked up so far.
    """

    words: list[str]
    matrix: np.ndarray
    unk_token: str | None = None
    unk_vector: np.ndarray | None = None
    unknown_seen: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.matrix = np.asarray(self.matrix, dtype=np.float32)
        if self.matrix.ndim != 2 or self.matrix.shape[0] != len(self.words):
            raise ValueError(f"matrix of shape {self.matrix.shape} does not hold one row per word ({len(self.words)})")
        self.index = {w: i for i, w in enumerate(self.words)}
        if len(self.index) != len(self.words):
            raise ValueError("WordTable words must be distinct")
        if self.unk_token is not None:
            if self.unk_token not in self.index:
                raise ConfigError(f"unknown-word token {self.unk_token!r} is not in the word table")
            self.unk_vector = self.matrix[self.index[self.unk_token]]
        elif self.unk_vector is None:
            self.unk_vector = np.zeros(self.dim, dtype=np.float32)

    @property
    def dim(self) -> int:
        return self.matrix.shape[1]

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: str) -> bool:
        return word in self.index

    def lookup(self, words: Sequence[str]) -> np.ndarray:
        """(N, D) vectors of ``words``; unknown words get the UNK vector and are counted."""
        out = np.empty((len(words), self.dim), dtype=np.float32)
        for n, w in enumerate(words):
            i = self.index.get(w)
            if i is None:
                self.unknown_seen += 1
                out[n] = self.unk_vector
            else:
                out[n] = self.matrix[i]
        return out

    def restrict(self, words: Iterable[str]) -> "WordTable":
        """A smaller table with only the given words that this table knows (table order kept)."""
        keep = set(words)
        if self.unk_token is not None:
            keep.add(self.unk_token)
        rows = [i for i, w in enumerate(self.words) if w in keep]
        return WordTable([self.words[i] for i in rows], self.matrix[rows], self.unk_token,
                         None if self.unk_token else self.unk_vector)

    def embedding_matrix(self, vocab: Vocab) -> torch.Tensor:
        """(len(vocab), D) weights for ``vocab``: ``<pad>`` = zeros, ``<unk>`` = the UNK vector,
        vocabulary words missing from the table = the UNK vector (counted)."""
        pad_unk = np.stack([np.zeros(self.dim, np.float32), self.unk_vector])  # (2, D)
        return torch.from_numpy(np.vstack([pad_unk, self.lookup(vocab.itos[2:])]))


class WordVectorEncoder(LearnedTextEncoder):
    """:class:`LearnedTextEncoder` whose embedding starts from a pretrained :class:`WordTable`.

    Same layers as the parent: layer 0 = the word vector, layer 1 = the BiLSTM output (when
    ``lstm``); sentence vectors as the parent's. Unknown words map to ``<unk>`` (the table's
    UNK vector) and are counted in ``vocab.unknown_seen``.
    """

    def __init__(self, table: WordTable, lstm: bool = True, lstm_hidden: int | None = None, freeze: bool = True,
                 context_words: bool = True) -> None:
        super().__init__(Vocab(table.words), dim=table.dim, lstm=lstm, lstm_hidden=lstm_hidden, context_words=context_words)
        with torch.no_grad():
            self.embedding.weight.copy_(table.embedding_matrix(self.vocab))
        self.embedding.weight.requires_grad_(not freeze)

    def spec(self) -> dict:
        """The table's words and size: a checkpoint rebuilds the encoder without the table file."""
        return {"words": list(self.vocab.itos[2:]), "dim": int(self.word_dim)}

    @classmethod
    def from_spec(cls, spec: dict, **kwargs) -> "WordVectorEncoder":
        """Placeholder encoder of ``spec``'s shape (zero vectors), to load a state dict into."""
        words = list(spec["words"])
        return cls(WordTable(words, np.zeros((len(words), int(spec["dim"])), np.float32)), **kwargs)


# ---------------------------------------------------------------- readers
def load_word_vectors(path: str | Path, vocab_file: str | Path | None = None, **kwargs) -> WordTable:
    """Load a table, choosing the reader from the suffix: ``.bin`` word2vec binary, ``.npy``
    matrix + ``vocab_file``, anything else (``.txt``, ``.vec``, ``.gz``) word2vec/GloVe text.

    Keyword arguments go to the reader (``restrict_to``, ``limit``, ``unk_token``, ``report``).
    """
    path = Path(path)
    if path.suffix == ".bin":
        return load_word2vec_binary(path, **kwargs)
    if path.suffix == ".npy":
        if vocab_file is None:
            raise ConfigError(f"{path}: a .npy word table needs its vocabulary list (vocab_file)")
        return load_npy_table(path, vocab_file, **kwargs)
    return load_text_vectors(path, **kwargs)


class _Collector:
    """Gathers (word, vector) pairs: restriction, limit, duplicate counting."""

    def __init__(self, path: Path, restrict_to: Iterable[str] | None, report: ReadReport) -> None:
        self.path, self.report = path, report
        self.restrict = set(restrict_to) if restrict_to is not None else None
        self.words: list[str] = []
        self.vectors: list[np.ndarray] = []
        self.seen: set[str] = set()

    def wants(self, word: str, where: str) -> bool:
        if word in self.seen:
            self.report.add("duplicate word (first kept)", where)
            return False
        self.seen.add(word)
        return self.restrict is None or word in self.restrict

    def add(self, word: str, vector: np.ndarray, where: str, line: int | None = None) -> None:
        if not np.isfinite(vector).all():
            raise DataFormatError(self.path, f"non-finite value in the vector of {word!r} ({where})", line)
        self.words.append(word)
        self.vectors.append(vector)

    def table(self, dim: int, unk_token: str | None) -> WordTable:
        matrix = np.stack(self.vectors) if self.vectors else np.zeros((0, dim), np.float32)
        return WordTable(self.words, matrix, unk_token)


def _require(path: Path) -> None:
    if not path.is_file():
        raise WeightsNotFoundError(f"word vector file not found: {path} (put the pretrained table there)")


def _decode(raw: bytes, where: str, report: ReadReport) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        report.add("invalid UTF-8 (replaced)", where)
        return raw.decode("utf-8", "replace")


def _header(line: bytes) -> tuple[int, int] | None:
    """``(count, dim)`` if ``line`` is a word2vec header, else None."""
    parts = line.split()
    if len(parts) == 2 and all(p.isdigit() for p in parts):
        return int(parts[0]), int(parts[1])
    return None


def load_word2vec_binary(path: str | Path, restrict_to: Iterable[str] | None = None, limit: int | None = None,
                         unk_token: str | None = None, report: ReadReport | None = None) -> WordTable:
    """Read a word2vec ``.bin`` file (memory-mapped; only kept vectors are copied).

    Args:
        path: the file.
        restrict_to: keep only these words (the rest of the file is skipped).
        limit: read only the first ``limit`` entries.
        unk_token: table word whose vector serves unknown words.
        report: receives tolerated oddities (duplicates, invalid UTF-8 words, trailing bytes).
    """
    path, report = Path(path), report if report is not None else ReadReport()
    _require(path)
    with open(path, "rb") as f:
        if path.stat().st_size == 0:
            raise DataFormatError(path, "empty file")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            end = mm.find(b"\n")
            head = _header(mm[: end if end >= 0 else len(mm)])
            if head is None:
                raise DataFormatError(path, "first line is not a word2vec header '<count> <dim>'", 1)
            count, dim = head
            col = _Collector(path, restrict_to, report)
            pos, size = end + 1, len(mm)
            for n in range(count if limit is None else min(count, limit)):
                while pos < size and mm[pos] == 10:  # the '\n' ending the previous vector
                    pos += 1
                space = mm.find(b" ", pos)
                if space < 0 or space + 1 + 4 * dim > size:
                    raise DataFormatError(path, f"file ends inside entry {n + 1} of {count} (truncated?)")
                where = f"{path} entry {n + 1}"
                word = _decode(mm[pos:space], where, report)
                pos = space + 1 + 4 * dim
                if col.wants(word, where):
                    col.add(word, np.frombuffer(mm[space + 1 : pos], dtype="<f4").astype(np.float32), where)
            if limit is None and mm[pos:].strip():
                report.add("trailing data after the last vector", str(path))
    return col.table(dim, unk_token)


def _open_lines(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def load_text_vectors(path: str | Path, dim: int | None = None, restrict_to: Iterable[str] | None = None,
                      limit: int | None = None, unk_token: str | None = None,
                      report: ReadReport | None = None) -> WordTable:
    """Read word2vec text (with a ``<count> <dim>`` header) or GloVe text (without), ``.gz`` too.

    A line is a word and ``dim`` numbers separated by single spaces. Without a header, ``dim``
    is taken from the first line unless given. Words containing spaces (GloVe 840B has a few)
    are kept whole and counted.

    Args:
        path: the file.
        dim: vector size, for headerless files whose first word contains a space.
        restrict_to: keep only these words.
        limit: read only the first ``limit`` entries.
        unk_token: table word whose vector serves unknown words.
        report: receives tolerated oddities (blank lines, duplicates, words with spaces, invalid UTF-8).
    """
    path, report = Path(path), report if report is not None else ReadReport()
    _require(path)
    col = _Collector(path, restrict_to, report)
    expected, entries = None, 0
    try:
        with _open_lines(path) as f:
            for lineno, raw in enumerate(f, 1):
                if lineno == 1 and (head := _header(raw)) is not None:
                    expected, dim = head
                    continue
                if limit is not None and entries >= limit:
                    break
                where = f"{path}:{lineno}"
                line = _decode(raw, where, report).rstrip()
                if not line:
                    report.add("blank line", where)
                    continue
                entries += 1
                parts = line.split(" ")
                dim = dim if dim is not None else len(parts) - 1
                if dim < 1 or len(parts) < dim + 1:
                    raise DataFormatError(path, f"expected a word and {dim} numbers, found {len(parts)} fields", lineno)
                word = " ".join(parts[:-dim])
                if len(parts) > dim + 1:
                    report.add("word containing spaces", where)
                if not col.wants(word, where):
                    continue
                try:
                    vector = np.array(parts[-dim:], dtype=np.float32)
                except ValueError:
                    raise DataFormatError(path, f"non-numeric value in the vector of {word!r}", lineno) from None
                col.add(word, vector, where, lineno)
    except (OSError, EOFError) as e:  # gzip: not a gzip file / truncated stream
        raise DataFormatError(path, f"cannot read: {e}") from None
    if dim is None:
        raise DataFormatError(path, "no vectors in the file")
    if expected is not None and limit is None and entries != expected:
        raise DataFormatError(path, f"header announces {expected} words, the file holds {entries} (truncated?)")
    return col.table(dim, unk_token)


def load_npy_table(path: str | Path, vocab_file: str | Path, restrict_to: Iterable[str] | None = None,
                   limit: int | None = None, unk_token: str | None = None,
                   report: ReadReport | None = None) -> WordTable:
    """Read a ``.npy`` matrix whose row i is the vector of line i of ``vocab_file`` (UTF-8).

    Args:
        path: the ``.npy`` file: a float (V, D) array, (V, 1, D) is flattened, or an object
            array of V vectors (skip-thought tables).
        vocab_file: one word per line.
        restrict_to: keep only these words.
        limit: keep only the first ``limit`` rows.
        unk_token: table word whose vector serves unknown words (``"UNK"`` for skip-thoughts).
        report: receives tolerated oddities (duplicates, empty words, invalid UTF-8).
    """
    path, vocab_file, report = Path(path), Path(vocab_file), report if report is not None else ReadReport()
    _require(path)
    _require(vocab_file)
    matrix = _read_npy_matrix(path)
    raw_words = vocab_file.read_bytes().split(b"\n")
    if raw_words and raw_words[-1] == b"":
        raw_words.pop()
    if len(raw_words) != matrix.shape[0]:
        raise DataFormatError(vocab_file, f"{len(raw_words)} words, but {path} has {matrix.shape[0]} rows")
    col = _Collector(path, restrict_to, report)
    for lineno, raw in enumerate(raw_words[:limit], 1):
        where = f"{vocab_file}:{lineno}"
        word = _decode(raw.rstrip(b"\r"), where, report)
        if not word:
            report.add("empty word", where)
        if col.wants(word, where):
            col.add(word, matrix[lineno - 1], where)
    return col.table(matrix.shape[1], unk_token)


# Globals a numpy object array may need when unpickled; nothing else can be loaded.
_NUMPY_GLOBALS = {
    (module, name): obj
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name, obj in (("_reconstruct", np.empty(0).__reduce__()[0]), ("scalar", np.float32(0).__reduce__()[0]))
}
_NUMPY_GLOBALS.update({("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype, ("_codecs", "encode"): codecs.encode})


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        try:
            return _NUMPY_GLOBALS[module, name]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load '{module}.{name}' (only numpy arrays are allowed)") from None


def _read_npy_matrix(path: Path) -> np.ndarray:
    """A (V, D) float32 matrix from a ``.npy`` file, never running code from the file."""
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as e:
        if "allow_pickle" not in str(e):
            raise DataFormatError(path, f"not a .npy array: {e}") from None
        arr = _read_object_npy(path)
    except (OSError, EOFError) as e:
        raise DataFormatError(path, f"not a .npy array: {e}") from None
    if not isinstance(arr, np.ndarray):
        raise DataFormatError(path, "expected a single .npy array (this is an .npz archive)")
    try:
        matrix = np.asarray(arr.tolist() if arr.dtype == object else arr, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise DataFormatError(path, f"rows are not vectors of one size: {e}") from None
    if matrix.ndim < 2:
        raise DataFormatError(path, f"expected a (words, dim) matrix, got shape {matrix.shape}")
    return matrix.reshape(matrix.shape[0], -1)  # (V, D)


def _read_object_npy(path: Path) -> np.ndarray:
    """An object-dtype ``.npy`` array, unpickled with :class:`_NumpyOnlyUnpickler`."""
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version not in readers:
                raise ValueError(f"unsupported .npy version {version}")
            readers[version](f)
            # latin1 is how numpy reads Python 2 pickles of arrays
            return np.asarray(_NumpyOnlyUnpickler(f, encoding="latin1").load())
    except (pickle.UnpicklingError, ValueError, EOFError, TypeError) as e:
        raise DataFormatError(path, f"cannot read the pickled object array: {e}") from None

"""A compact, versioned index of a dataset, and ``prepare_dataset`` that validates and writes it.

Index file: JSON, gzip-compressed when the name ends in ``.gz``, written atomically::

    {"format": "phraseground-index", "version": 1, "meta": {...},
     "image_root": "/data/coco",                 # image paths are stored relative to it
     "samples": [[image_id, rel_path, width, height,
                  [[caption_text, [[phrase_text, first_word, num_words, chain_id,
                                    [type, ...], [[x0, y0, x1, y1], ...]], ...]], ...]], ...]}

``prepare_dataset`` reads a dataset once with its reader, validates it (missing images,
broken or outside boxes, empty captions, phrase spans outside the caption: counted with the
first examples and dropped, never fatal unless nothing is left) and writes the index.
"""
from __future__ import annotations

import gzip
import inspect
import json
import os
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from phraseground import __version__
from phraseground.data.coco import read_coco
from phraseground.data.flickr30k import read_flickr30k
from phraseground.data.karpathy import read_karpathy
from phraseground.data.referit import read_referit_hu, read_refer
from phraseground.data.validate import BOX_BROKEN, BOX_CLIPPED, BOX_OK, BOX_OUTSIDE, check_boxes
from phraseground.data.types import Box, Caption, ImageSample, Phrase, ReadReport
from phraseground.data.visual_genome import read_visual_genome
from phraseground.errors import ConfigError, DataFormatError, PhrasegroundError
from phraseground.io import write_bytes

INDEX_FORMAT = "phraseground-index"
INDEX_VERSION = 1
_GZIP_MAGIC = b"\x1f\x8b"
_BOX_PROBLEMS = {BOX_BROKEN: "broken_box", BOX_OUTSIDE: "box_outside_image"}

Reader = Callable[..., tuple[list[ImageSample], ReadReport]]


DATASETS: dict[str, Reader] = {
    "flickr30k": read_flickr30k,
    "coco": read_coco,
    "coco-karpathy": read_karpathy,
    "referit": read_refer,
    "referit-hu": read_referit_hu,
    "vg": read_visual_genome,
}


# ----------------------------------------------------------------------------- index file


def write_index(samples: list[ImageSample], path: Path, meta: dict[str, Any]) -> None:
    """Write samples and free-form ``meta`` (JSON-able; Paths become strings) to an index file.

    Image paths are stored relative to their common folder (made absolute first), so
    ``read_index(..., image_root=...)`` can point at a moved dataset.
    """
    path = Path(path)
    image_paths = [Path(os.path.abspath(s.image_path)) for s in samples]
    image_root = Path(os.path.commonpath([p.parent for p in image_paths])) if samples else Path()
    doc = {
        "format": INDEX_FORMAT,
        "version": INDEX_VERSION,
        "meta": meta,
        "image_root": str(image_root),
        "samples": [_encode_sample(s, p.relative_to(image_root)) for s, p in zip(samples, image_paths)],
    }
    data = json.dumps(doc, ensure_ascii=False, separators=(",", ":"), default=str).encode("utf-8")
    if path.name.endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    write_bytes(path, data)


def _encode_sample(s: ImageSample, rel_path: Path) -> list:
    captions = [
        [c.text, [[p.text, p.first_word, p.num_words, p.chain_id, list(p.types), [list(b) for b in p.boxes]]
                  for p in c.phrases]]
        for c in s.captions
    ]
    return [s.image_id, rel_path.as_posix(), s.width, s.height, captions]


def read_index(path: Path, image_root: Path | None = None) -> tuple[list[ImageSample], dict[str, Any]]:
    """Read an index written by :func:`write_index`.

    Args:
        path: the index file (gzip or plain JSON, detected from the content).
        image_root: where the images are now, if the dataset moved since the index was written.

    Returns:
        The samples and the ``meta`` dict.

    Raises:
        DataFormatError: the file is missing, corrupt, not an index, or of another format version.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw.startswith(_GZIP_MAGIC):
            raw = gzip.decompress(raw)
        doc = json.loads(raw)
    except FileNotFoundError:
        raise DataFormatError(path, "index file not found") from None
    except (OSError, EOFError, zlib.error, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataFormatError(path, f"corrupt index file ({type(e).__name__}: {e})") from None
    if not isinstance(doc, dict) or doc.get("format") != INDEX_FORMAT:
        raise DataFormatError(path, f"not a phraseground index (no \"format\": \"{INDEX_FORMAT}\")")
    if doc.get("version") != INDEX_VERSION:
        raise DataFormatError(
            path,
            f"index format version {doc.get('version')!r}, this phraseground reads version {INDEX_VERSION}; "
            "re-run `phraseground prepare` to rebuild it",
        )
    expected = {"meta": dict, "image_root": str, "samples": list}
    if not all(isinstance(doc.get(k), t) for k, t in expected.items()):
        raise DataFormatError(path, "corrupt index: needs 'meta' (object), 'image_root' (string) and 'samples' (list)")
    root = Path(image_root) if image_root is not None else Path(doc["image_root"])
    samples = []
    try:
        for s in doc["samples"]:
            samples.append(_decode_sample(s, root))
    except (TypeError, ValueError) as e:
        raise DataFormatError(path, f"corrupt index: samples[{len(samples)}]: {e}") from None
    return samples, doc["meta"]


def _decode_sample(s: list, root: Path) -> ImageSample:
    image_id, rel, width, height, captions = s
    return ImageSample(
        _typed(image_id, str),
        root / _typed(rel, str),
        _typed(width, int),
        _typed(height, int),
        tuple(Caption(_typed(text, str), tuple(_decode_phrase(p) for p in phrases)) for text, phrases in captions),
    )


def _decode_phrase(p: list) -> Phrase:
    text, first, num, chain, types, boxes = p
    decoded = []
    for b in boxes:
        if len(b) != 4:
            raise ValueError(f"a box has {len(b)} numbers")
        decoded.append(tuple(float(_typed(v, (int, float))) for v in b))
    return Phrase(
        _typed(text, str), _typed(first, int), _typed(num, int), _typed(chain, str),
        tuple(_typed(t, str) for t in types), tuple(decoded),
    )


def _typed(value: Any, types: type | tuple[type, ...]) -> Any:
    if not isinstance(value, types) or isinstance(value, bool):
        raise TypeError(f"unexpected {type(value).__name__} {value!r}")
    return value


# ----------------------------------------------------------------------------- validation


def validate_samples(samples: list[ImageSample], check_images: bool = True) -> tuple[list[ImageSample], ReadReport]:
    """Drop what is broken, clip boxes that pass the image edge, and count every case.

    Kinds counted: ``missing_image``, ``unknown_image_size``, ``empty_caption``,
    ``broken_phrase_span``, ``broken_box`` (x1 <= x0, y1 <= y0 or not finite),
    ``box_outside_image`` (nothing left after clipping), ``box_clipped`` (kept, clipped),
    ``phrase_without_valid_box``, ``caption_without_valid_phrase``, ``image_without_captions``.

    Args:
        samples: reader output.
        check_images: count images whose file does not exist.

    Returns:
        The kept samples and the counts, with the first few examples of each kind.
    """
    problems = ReadReport()
    kept = []
    for s in samples:
        if check_images and not s.image_path.is_file():
            problems.add("missing_image", str(s.image_path))
            continue
        if s.width <= 0 or s.height <= 0:
            problems.add("unknown_image_size", f"{s.image_path} ({s.width}x{s.height})")
            continue
        verdicts = iter(check_boxes([b for c in s.captions for p in c.phrases for b in p.boxes], s.width, s.height))
        captions = [_validate_caption(c, s, verdicts, problems) for c in s.captions]
        captions = tuple(c for c in captions if c is not None)
        if not captions:
            problems.add("image_without_captions", str(s.image_path))
            continue
        kept.append(replace(s, captions=captions))
    return kept, problems


def _validate_caption(
    c: Caption, s: ImageSample, verdicts: Iterator[tuple[str, Box]], problems: ReadReport
) -> Caption | None:
    """The caption with its broken parts dropped (None if nothing is left); consumes its boxes' verdicts."""
    where = f"image {s.image_id}"
    checked = [(p, [next(verdicts) for _ in p.boxes]) for p in c.phrases]
    if not c.text.strip():
        problems.add("empty_caption", where)
        return None
    if not c.phrases:
        return c
    phrases = []
    for p, box_verdicts in checked:
        if p.first_word < 0 or p.num_words <= 0 or p.first_word + p.num_words > len(c.tokens):
            problems.add("broken_phrase_span", f"{where}: '{p.text}' words {p.word_span} of '{c.text}'")
            continue
        boxes = []
        for box, (verdict, clipped) in zip(p.boxes, box_verdicts):
            if verdict == BOX_OK:
                boxes.append(box)
            elif verdict == BOX_CLIPPED:
                problems.add("box_clipped", f"{where} '{p.text}': {box} in {s.width}x{s.height}")
                boxes.append(clipped)
            else:
                problems.add(_BOX_PROBLEMS[verdict], f"{where} '{p.text}': {box} in {s.width}x{s.height}")
        if p.boxes and not boxes:
            problems.add("phrase_without_valid_box", f"{where}: '{p.text}'")
        else:
            phrases.append(replace(p, boxes=tuple(boxes)))
    if not phrases:
        problems.add("caption_without_valid_phrase", f"{where}: '{c.text}'")
        return None
    return replace(c, phrases=tuple(phrases))


# ----------------------------------------------------------------------------- prepare


@dataclass
class PrepareReport:
    """What ``prepare_dataset`` read, kept and dropped; ``summary()`` is printable."""

    dataset: str
    split: str | None
    out: Path
    images_read: int
    images_kept: int
    captions_kept: int
    phrases_kept: int
    boxes_kept: int
    read_report: ReadReport = field(default_factory=ReadReport)
    problems: ReadReport = field(default_factory=ReadReport)

    def summary(self) -> str:
        """Several lines: totals, then the reader's and the validation's counts with examples."""
        split = f" (split {self.split})" if self.split else ""
        lines = [
            f"{self.dataset}{split}: kept {self.images_kept} of {self.images_read} images, "
            f"{self.captions_kept} captions, {self.phrases_kept} phrases, {self.boxes_kept} boxes -> {self.out}"
        ]
        for title, rep in (("while reading", self.read_report), ("validation", self.problems)):
            lines.append(f"{title}: {rep.summary()}")
            for kind in sorted(rep.counts):
                lines.append(f"  {kind}, e.g. " + "; ".join(rep.examples.get(kind, [])[:3]))
        return "\n".join(lines)


def prepare_dataset(name: str, root: Path, out: Path, split: str | None = None, *, progress: bool = False,
                    **options: Any) -> PrepareReport:
    """Read a dataset, validate it once and write its index.

    Args:
        name: a key of :data:`DATASETS`.
        root: the dataset folder.
        out: the index file to write (``.json`` or ``.json.gz``).
        split: the reader's split name, or None for all.
        progress: report progress on stderr (the reader's own bar where it has one, e.g. the
            bytes of Visual Genome's region file; then each stage with its time).
        **options: keyword options of the reader (e.g. ``restval_into_train=True``).

    Raises:
        ConfigError: unknown dataset or option.
        PhrasegroundError: nothing usable was found (every sample broken, or none read).
    """
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset '{name}'; known: {', '.join(DATASETS)}")
    reader = DATASETS[name]
    params = inspect.signature(reader).parameters
    known = [p.name for p in params.values() if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "progress"]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(
            f"unknown option(s) {', '.join(unknown)} for dataset '{name}'; known: {', '.join(known) or 'none'}"
        )
    root, out = Path(root), Path(out)
    t0 = time.time()
    samples, read_report = reader(root, split, require_images=False, **options,
                                  **({"progress": True} if progress and "progress" in params else {}))
    if progress:
        print(f"prepare: read {len(samples)} images in {time.time() - t0:.1f} s; validating", file=sys.stderr, flush=True)
    t0 = time.time()
    kept, problems = validate_samples(samples)
    if progress:
        print(f"prepare: validated in {time.time() - t0:.1f} s; writing {out}", file=sys.stderr, flush=True)
    captions = [c for s in kept for c in s.captions]
    phrases = [p for c in captions for p in c.phrases]
    report = PrepareReport(
        dataset=name, split=split, out=out, images_read=len(samples), images_kept=len(kept),
        captions_kept=len(captions), phrases_kept=len(phrases), boxes_kept=sum(len(p.boxes) for p in phrases),
        read_report=read_report, problems=problems,
    )
    if not kept:
        raise PhrasegroundError(f"{root}: no usable sample in dataset '{name}', nothing written\n{report.summary()}")
    meta = {
        "dataset": name, "split": split, "root": str(root.resolve()), "options": options,
        "read_report": read_report.counts, "problems": problems.counts, "phraseground_version": __version__,
    }
    write_index(kept, out, meta)
    return report

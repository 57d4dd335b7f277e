"""Reader for the Flickr30k Entities on-disk format (also written by the synthetic benchmark).

Layout: ``Sentences/<id>.txt`` (one caption per line, ``[/EN#<chain>/<type>[/<type>…] words]``
markup), ``Annotations/<id>.xml`` (VOC-style, 1-based inclusive ``<bndbox>``, several ``<name>``
chain ids per object, ``<scene>``/``<nobndbox>`` flags), ``train.txt``/``val.txt``/``test.txt``
and the images (``images/``, ``flickr30k-images/`` or ``flickr30k_images/``).
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataFormatError
from .types import NOTVISUAL, Box, Caption, ImageSample, Phrase, ReadReport

IMAGE_DIRS = ("images", "flickr30k-images", "flickr30k_images")
_OPEN = re.compile(r"^\[/EN#([^/\s]*)((?:/[^/\s]+)+)$")


@dataclass
class ChainAnnotation:
    """Boxes and flags of one coreference chain in an annotation file."""

    boxes: list[Box] = field(default_factory=list)
    scene: bool = False
    nobndbox: bool = False


@dataclass
class ImageAnnotation:
    width: int
    height: int
    chains: dict[str, ChainAnnotation]


@dataclass(frozen=True)
class RawPhrase:
    first_word: int
    num_words: int
    chain_id: str
    types: tuple[str, ...]


def parse_sentence(line: str, path: object = "<string>", lineno: int | None = None) -> tuple[str, list[RawPhrase]]:
    """Parse one annotated caption line into plain text and its phrases (word spans).

    Raises:
        DataFormatError: on nested or unclosed brackets, a stray ``]``, a malformed
            ``[/EN#…`` tag, a non-integer chain id or an empty phrase.
    """
    words: list[str] = []
    phrases: list[RawPhrase] = []
    current: tuple[int, str, tuple[str, ...]] | None = None
    for token in line.split():
        if token.startswith("[/EN#") or token.startswith("["):
            if current is not None:
                raise DataFormatError(path, f"nested phrase markup at {token!r}", lineno)
            m = _OPEN.match(token)
            if not m:
                raise DataFormatError(path, f"malformed phrase tag {token!r} (expected [/EN#<chain>/<type>)", lineno)
            chain = m.group(1)
            if not chain.isdigit():
                raise DataFormatError(path, f"unknown chain id {chain!r} in {token!r} (must be a non-negative integer)", lineno)
            current = (len(words), str(int(chain)), tuple(m.group(2).strip("/").split("/")))
            continue
        closes = token.endswith("]") and current is not None
        word = token[:-1] if closes else token
        if "]" in word or "[" in word:
            raise DataFormatError(path, f"stray bracket in {token!r}", lineno)
        if word:
            words.append(word)
        if closes:
            start, chain, types = current
            if len(words) == start:
                raise DataFormatError(path, f"empty phrase for chain {chain}", lineno)
            phrases.append(RawPhrase(start, len(words) - start, chain, types))
            current = None
    if current is not None:
        raise DataFormatError(path, f"unclosed phrase for chain {current[1]}", lineno)
    if not words:
        raise DataFormatError(path, "empty caption", lineno)
    return " ".join(words), phrases


def read_sentences(path: Path) -> list[tuple[str, list[RawPhrase]]]:
    """Parse a ``Sentences/<id>.txt`` file: one (text, phrases) per non-empty line."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataFormatError(path, f"cannot read sentence file: {e}") from None
    return [parse_sentence(line, path, i) for i, line in enumerate(lines, 1) if line.strip()]


def _int_field(obj: ET.Element, tag: str, path: Path) -> int:
    text = obj.findtext(tag)
    try:
        return int(float(text))  # some files write "12.0"
    except (TypeError, ValueError):
        raise DataFormatError(path, f"<{tag}> is missing or not a number: {text!r}") from None


def read_annotation(path: Path, report: ReadReport | None = None) -> ImageAnnotation:
    """Parse an ``Annotations/<id>.xml`` file; boxes become 0-based xyxy clipped to the image.

    Boxes reaching past the image edge are clipped and counted in ``report`` as ``box_clipped``.
    """
    report = report if report is not None else ReadReport()
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        raise DataFormatError(path, f"cannot parse annotation XML: {e}") from None
    size = root.find("size")
    if size is None:
        raise DataFormatError(path, "missing <size>")
    width, height = _int_field(size, "width", path), _int_field(size, "height", path)
    if width <= 0 or height <= 0:
        raise DataFormatError(path, f"image size {width}x{height} is not positive")
    chains: dict[str, ChainAnnotation] = {}
    for obj in root.iter("object"):
        names = [(n.text or "").strip() for n in obj.findall("name")]
        if not names or not all(n.isdigit() for n in names):
            raise DataFormatError(path, f"object with unknown chain id(s) {names!r} (must be integers)")
        bb = obj.find("bndbox")
        box: Box | None = None
        if bb is not None:
            x0, y0 = _int_field(bb, "xmin", path) - 1, _int_field(bb, "ymin", path) - 1
            x1, y1 = _int_field(bb, "xmax", path), _int_field(bb, "ymax", path)
            if x1 <= x0 or y1 <= y0:
                raise DataFormatError(path, f"degenerate box for chain(s) {names}: {(x0 + 1, y0 + 1, x1, y1)}")
            clipped = (max(0, x0), max(0, y0), min(width, x1), min(height, y1))
            if clipped != (x0, y0, x1, y1):
                report.add("box_clipped", f"{path} chain {names[0]}")
            if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
                raise DataFormatError(path, f"box for chain(s) {names} lies outside the {width}x{height} image")
            box = tuple(float(v) for v in clipped)  # type: ignore[assignment]
        for name in names:
            chain = chains.setdefault(str(int(name)), ChainAnnotation())
            if box is not None:
                chain.boxes.append(box)
            chain.scene |= obj.findtext("scene", "0").strip() == "1"
            chain.nobndbox |= obj.findtext("nobndbox", "0").strip() == "1"
    return ImageAnnotation(width, height, chains)


def build_captions(
    sentences: list[tuple[str, list[RawPhrase]]],
    annotation: ImageAnnotation | None,
    where: str,
    report: ReadReport,
) -> tuple[Caption, ...]:
    """Attach each phrase's chain boxes; count notvisual phrases and chains the annotation lacks."""
    captions = []
    chains = annotation.chains if annotation is not None else {}
    for text, raws in sentences:
        tokens = text.split()
        phrases = []
        for r in raws:
            if r.chain_id == "0":
                report.add("chain0_notvisual", where)
            chain = chains.get(r.chain_id)
            if chain is None and r.chain_id != "0" and annotation is not None:
                report.add("chain_without_annotation", f"{where} chain {r.chain_id}")
            types = r.types if r.chain_id != "0" or NOTVISUAL in r.types else r.types + (NOTVISUAL,)
            phrases.append(
                Phrase(
                    text=" ".join(tokens[r.first_word : r.first_word + r.num_words]),
                    first_word=r.first_word,
                    num_words=r.num_words,
                    chain_id=r.chain_id,
                    types=types,
                    boxes=tuple(chain.boxes) if chain is not None else (),
                )
            )
        captions.append(Caption(text, tuple(phrases)))
    return tuple(captions)


def find_image_dir(root: Path) -> Path | None:
    """The first of the usual image folder names that exists under ``root``."""
    return next((root / d for d in IMAGE_DIRS if (root / d).is_dir()), None)


def read_split_ids(root: Path, split: str | None) -> list[str]:
    """Image ids of ``<split>.txt``, or of every sentence file when ``split`` is None."""
    if split is None:
        sdir = root / "Sentences"
        if not sdir.is_dir():
            raise DataFormatError(sdir, "no Sentences/ folder: not a Flickr30k Entities directory")
        return sorted(p.stem for p in sdir.glob("*.txt"))
    path = root / f"{split}.txt"
    if not path.is_file():
        raise DataFormatError(path, f"split list for split {split!r} not found")
    ids = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for i, image_id in enumerate(ids, 1):
        if not image_id.isalnum():
            raise DataFormatError(path, f"bad image id {image_id!r}", i)
    return ids


def read_flickr30k(
    root: Path, split: str | None = None, require_images: bool = True
) -> tuple[list[ImageSample], ReadReport]:
    """Read a Flickr30k Entities directory (real or synthetic).

    Args:
        root: directory holding ``Sentences/``, ``Annotations/``, the split lists and the images.
        split: "train", "val", "test" (reads ``<split>.txt``) or None for every sentence file.
        require_images: raise when an image file is missing (set False to read annotations only).

    Returns:
        the samples and a report of tolerated oddities (chain 0, clipped boxes, chains without boxes).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataFormatError(root, "dataset directory not found")
    report = ReadReport()
    image_dir = find_image_dir(root)
    if require_images and image_dir is None:
        raise DataFormatError(root, f"no image folder (looked for {', '.join(IMAGE_DIRS)})")
    samples = []
    for image_id in read_split_ids(root, split):
        spath = root / "Sentences" / f"{image_id}.txt"
        apath = root / "Annotations" / f"{image_id}.xml"
        if not spath.is_file():
            raise DataFormatError(spath, "sentence file missing")
        if not apath.is_file():
            raise DataFormatError(apath, "annotation file missing")
        annotation = read_annotation(apath, report)
        image_path = (image_dir or root / IMAGE_DIRS[0]) / f"{image_id}.jpg"
        if require_images and not image_path.is_file():
            raise DataFormatError(image_path, "missing image")
        captions = build_captions(read_sentences(spath), annotation, str(spath), report)
        samples.append(ImageSample(image_id, image_path, annotation.width, annotation.height, captions))
    return samples, report

"""Visual Genome region descriptions, cleaned as in Akbari et al. 2019.

Layout under ``root``::

    region_descriptions.json   [{"id": image id, "regions": [{region_id, phrase, x, y,
                                width, height}, ...]}, ...]   (pixels; may pass the image edge)
    image_data.json            [{image_id, url, width, height, coco_id, flickr_id}, ...]
    VG_100K/<id>.jpg, VG_100K_2/<id>.jpg    (the folder is named in the url)

Cleaning (the paper, following DenseCap's preprocessing): a few symbols are spelled out
(``½`` -> "half", ``°`` -> " degree", ...), accents are folded to ASCII and other non-ASCII
characters dropped, text is lower-cased and ASCII punctuation removed; regions left without
words or with more than ``max_words`` (10) words are dropped; boxes are clipped to the image;
identical descriptions of one image are merged into one caption whose phrase holds every box.
Each caption is typed ("vg_region",). ``region_descriptions.json`` (several GB) is streamed
with ``ijson`` (``iter_visual_genome``): memory holds one image's regions at a time, not the file. The train/test image ids of the paper ship with the
package (``splits/akbari2019_vg_splits.json``).
"""
from __future__ import annotations

import json
import string
import unicodedata
from functools import cache
from importlib.resources import files
from pathlib import Path, PurePosixPath
from typing import Iterator
from urllib.parse import urlparse

from phraseground.data.referit import expression_caption
from phraseground.data.validate import BOX_BROKEN, BOX_CLIPPED, BOX_OUTSIDE, check_boxes
from phraseground.data.json_stream import iter_json_list
from phraseground.io import get_field, require_file
from phraseground.data.types import Box, Caption, ImageSample, ReadReport
from phraseground.errors import ConfigError, DataFormatError

VG_TYPES = ("vg_region",)
VG_SPLITS = ("train", "test")
_SYMBOLS = {"½": "half", "—": "-", "™": "", "¢": "cent", "°": " degree", "…": ""}
_NO_PUNCTUATION = str.maketrans("", "", string.punctuation)
_Number = (int, float)


def clean_vg_phrase(text: str) -> list[str]:
    """The cleaned words of a region description (see the module doc)."""
    for symbol, spelled in _SYMBOLS.items():
        text = text.replace(symbol, spelled)
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return folded.lower().translate(_NO_PUNCTUATION).split()


@cache
def _akbari_splits() -> dict[str, frozenset[int]]:
    resource = files("phraseground").joinpath("splits", "akbari2019_vg_splits.json")
    data = json.loads(resource.read_text(encoding="utf-8"))
    return {name: frozenset(data[name]) for name in VG_SPLITS}


def akbari2019_vg_split(split: str) -> frozenset[int]:
    """Visual Genome image ids of the Akbari et al. 2019 "train" (90,599) or "test" (17,478) split."""
    if split not in VG_SPLITS:
        raise ConfigError(f"unknown Visual Genome split '{split}'; expected one of {', '.join(VG_SPLITS)}")
    return _akbari_splits()[split]


def read_visual_genome(
    root: Path, split: str | None = None, require_images: bool = True, *, max_words: int = 10,
    progress: bool = False,
) -> tuple[list[ImageSample], ReadReport]:
    """Read and clean Visual Genome region descriptions.

    Args:
        root: the Visual Genome folder (see the module doc).
        split: "train" or "test" (Akbari et al. 2019 image ids); None reads every image.
        require_images: raise DataFormatError for a missing image file.
        max_words: longer descriptions (after cleaning) are dropped.
        progress: show a progress bar over the bytes of ``region_descriptions.json``.

    Returns:
        One sample per image with at least one region left, one caption per distinct cleaned
        description, and the counts of what the cleaning dropped or changed.
    """
    report = ReadReport()
    samples = list(iter_visual_genome(root, split, require_images, report, max_words=max_words, progress=progress))
    return samples, report


def iter_visual_genome(
    root: Path, split: str | None = None, require_images: bool = True, report: ReadReport | None = None, *,
    max_words: int = 10, progress: bool = False,
) -> Iterator[ImageSample]:
    """The samples of ``read_visual_genome`` one at a time: ``region_descriptions.json`` (several
    GB) is streamed (``ijson``), so memory is bounded by one image's regions, not the file.

    Args:
        report: receives the counts of what the cleaning dropped or changed.
    """
    root = Path(root)
    report = report if report is not None else ReadReport()
    keep = akbari2019_vg_split(split) if split is not None else None
    images = _read_image_data(root / "image_data.json")
    regions_path = root / "region_descriptions.json"
    for i, entry in enumerate(iter_json_list(regions_path, "region_descriptions.json" if progress else None)):
        where = f"[{i}]"
        image_id = get_field(entry, _id_key(entry, "id", "image_id"), int, regions_path, where)
        if keep is not None and image_id not in keep:
            continue
        if image_id not in images:
            report.add("image_without_metadata", f"image id {image_id}")
            continue
        path, width, height = images[image_id]
        regions = get_field(entry, "regions", list, regions_path, where)
        captions = _image_captions(regions, (width, height), max_words, regions_path, where, report)
        if not captions:
            report.add("image_without_regions", f"image id {image_id}")
            continue
        if require_images:
            require_file(path)
        yield ImageSample(str(image_id), path, width, height, captions)


def _id_key(record: object, key: str, fallback: str) -> str:
    """The image-id key of a record: ``key``, or ``fallback`` in files of older releases."""
    return key if not isinstance(record, dict) or key in record else fallback


def _read_image_data(path: Path) -> dict[int, tuple[Path, int, int]]:
    """``image id -> (image path, width, height)``; the image folder is taken from the url."""
    images = {}
    for i, im in enumerate(iter_json_list(path)):
        where = f"[{i}]"
        image_id = get_field(im, _id_key(im, "image_id", "id"), int, path, where)
        url_parts = PurePosixPath(urlparse(get_field(im, "url", str, path, where)).path).parts
        if len(url_parts) < 2 or not url_parts[-1]:
            raise DataFormatError(path, f"{where}: url does not end in <folder>/<file>")
        image_path = path.parent / url_parts[-2] / url_parts[-1]
        width, height = (get_field(im, k, int, path, where) for k in ("width", "height"))
        images[image_id] = (image_path, width, height)
    return images


def _image_captions(
    regions: list, size: tuple[int, int], max_words: int, path: Path, where: str, report: ReadReport
) -> tuple[Caption, ...]:
    """Clean one image's regions and merge identical descriptions into multi-box captions."""
    kept: list[tuple[str, str]] = []  # (cleaned text, region id) of regions with usable text
    raw_boxes: list[Box] = []
    for j, region in enumerate(regions):
        rwhere = f"{where}.regions[{j}]"
        words = clean_vg_phrase(get_field(region, "phrase", str, path, rwhere))
        region_id = str(get_field(region, "region_id", int, path, rwhere))
        if not words:
            report.add("region_without_text", f"region {region_id}")
        elif len(words) > max_words:
            report.add("region_too_long", f"region {region_id}: {' '.join(words)}")
        else:
            x, y, w, h = (float(get_field(region, k, _Number, path, rwhere)) for k in ("x", "y", "width", "height"))
            kept.append((" ".join(words), region_id))
            raw_boxes.append((x, y, x + w, y + h))
    merged: dict[str, tuple[str, list[Box]]] = {}
    for (text, region_id), (verdict, box) in zip(kept, check_boxes(raw_boxes, *size)):
        if verdict == BOX_BROKEN:
            report.add("region_box_broken", f"region {region_id}")
            continue
        if verdict == BOX_OUTSIDE:
            report.add("region_box_outside_image", f"region {region_id}")
            continue
        if verdict == BOX_CLIPPED:
            report.add("region_box_clipped", f"region {region_id}")
        if text in merged:
            report.add("region_merged", f"region {region_id}: {text}")
        chain_id, boxes = merged.setdefault(text, (region_id, []))
        if box in boxes:
            report.add("duplicate_region_box", f"region {region_id}")
        else:
            boxes.append(box)
    return tuple(
        expression_caption(text, chain_id, tuple(boxes), VG_TYPES) for text, (chain_id, boxes) in merged.items()
    )

"""ReferIt (RefCLEF, IAPR TC-12 images): referring expressions with one box each.

Two on-disk layouts are read.

The ``refer`` layout (Yu et al., ``read_refer``)::

    refclef/refs(unc).p        untrusted pickle: list of refs (ref_id, ann_id, image_id,
                               split, sentences[{raw, sent, tokens}]); a ``refs(unc).json``
                               made by ``pickle_to_json`` next to it is preferred
    refclef/instances.json     COCO-like: images (id, file_name, width, height),
                               annotations (id, image_id, bbox = x, y, w, h)
    images/saiapr_tc-12/<file_name>

The older Hu et al. layout (``read_referit_hu``)::

    ReferitData/RealGames.txt  <image>_<region>.jpg~<expression>[~<x>~<y>]  (or CannedGames.txt)
    ImageCLEF/mask/<image>_<region>.mat   MATLAB mask ``segimg_t``; object pixels are 0
    ImageCLEF/images/<image>.jpg
    data/split/referit_{train,val,test,trainval,all}_imlist.txt
    data/metadata/referit_query_dict.json, referit_imcrop_bbox_dict.json   (optional, derived:
                               crop -> expressions, crop -> inclusive pixel box x0, y0, x1, y1)

When the derived metadata files are present they are used instead of the expression file and
masks. Every expression becomes a Caption holding one Phrase over all its words, typed
("referit",), with the region's box. Following Akbari et al. 2019, only the unique
expressions of a region are kept (duplicates are counted).
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import scipy.io

from phraseground.data.safe_pickle import load_pickle
from phraseground.data.validate import image_size
from phraseground.io import get_field, load_json, require_file
from phraseground.data.types import Box, Caption, ImageSample, Phrase, ReadReport
from phraseground.errors import ConfigError, DataFormatError

REFERIT_TYPES = ("referit",)
_REFER_IMAGE_DIRS = {
    "refclef": Path("images", "saiapr_tc-12"),
    "refcoco": Path("images", "mscoco", "images", "train2014"),
    "refcoco+": Path("images", "mscoco", "images", "train2014"),
    "refcocog": Path("images", "mscoco", "images", "train2014"),
}
_CROP_NAME = re.compile(r"(\d+)_(\d+)\.jpg")


def expression_caption(text: str, chain_id: str, boxes: tuple[Box, ...], types: tuple[str, ...]) -> Caption:
    """A Caption whose single Phrase spans every word of ``text`` (whitespace-normalised)."""
    text = " ".join(text.split())
    return Caption(text, (Phrase(text, 0, len(text.split()), chain_id, types, boxes),))


def _region_captions(
    texts: Iterable[str], chain_id: str, box: Box, report: ReadReport, where: str
) -> list[Caption]:
    """Captions for the unique non-empty expressions of one region."""
    seen: set[str] = set()
    out = []
    for raw in texts:
        text = " ".join(raw.split())
        if not text:
            report.add("empty_caption", where)
        elif text in seen:
            report.add("duplicate_expression", f"{where}: {text}")
        else:
            seen.add(text)
            out.append(expression_caption(text, chain_id, (box,), REFERIT_TYPES))
    return out


# ----------------------------------------------------------------------------- refer layout


def read_refer(
    root: Path,
    split: str | None = None,
    require_images: bool = True,
    *,
    dataset: str = "refclef",
    split_by: str = "unc",
    image_dir: Path | None = None,
) -> tuple[list[ImageSample], ReadReport]:
    """Read a dataset in the ``refer`` layout (RefCLEF by default).

    Args:
        root: the ``refer`` data folder (holding ``refclef/`` and ``images/``).
        split: a split named in the refs ("train", "val", "test", ...); None reads all.
        require_images: raise DataFormatError for a missing image file.
        dataset: the sub-folder ("refclef", "refcoco", "refcoco+", "refcocog").
        split_by: which refs file, ``refs(<split_by>).p`` ("unc", "berkeley", "google", ...).
        image_dir: where the image ``file_name``s are relative to; defaults to refer's
            folder for the dataset (``images/saiapr_tc-12`` for refclef).

    Returns:
        One sample per image with one caption per unique expression, and the oddities.
    """
    root = Path(root)
    if image_dir is None:
        if dataset not in _REFER_IMAGE_DIRS:
            known = ", ".join(_REFER_IMAGE_DIRS)
            raise ConfigError(f"unknown refer dataset '{dataset}'; pass image_dir or use one of {known}")
        image_dir = root / _REFER_IMAGE_DIRS[dataset]
    folder = root / dataset
    refs_json = folder / f"refs({split_by}).json"
    refs_path = refs_json if refs_json.is_file() else folder / f"refs({split_by}).p"
    refs = load_json(refs_path) if refs_path == refs_json else load_pickle(refs_path)
    if not isinstance(refs, list):
        raise DataFormatError(refs_path, f"expected a list of refs, got {type(refs).__name__}")
    images, boxes = _read_instances(folder / "instances.json")

    report = ReadReport()
    by_image: dict[int, list[Caption]] = {}
    splits_seen: set[str] = set()
    for i, ref in enumerate(refs):
        where = f"refs[{i}]"
        ref_split = get_field(ref, "split", str, refs_path, where)
        splits_seen.add(ref_split)
        if split is not None and ref_split != split:
            continue
        ann_id = get_field(ref, "ann_id", int, refs_path, where)
        image_id = get_field(ref, "image_id", int, refs_path, where)
        if ann_id not in boxes or image_id not in images:
            report.add("ref_of_unknown_annotation", f"{where} ann_id={ann_id} image_id={image_id}")
            continue
        texts = [
            get_field(s, "raw", str, refs_path, f"{where}.sentences[{j}]")
            for j, s in enumerate(get_field(ref, "sentences", list, refs_path, where))
        ]
        by_image.setdefault(image_id, []).extend(
            _region_captions(texts, str(ann_id), boxes[ann_id], report, f"{refs_path.name} {where}")
        )
    if split is not None and split not in splits_seen:
        raise ConfigError(f"{refs_path}: no ref has split '{split}'; splits present: {', '.join(sorted(splits_seen))}")

    samples = []
    for image_id, captions in by_image.items():
        file_name, width, height = images[image_id]
        path = image_dir / file_name
        if require_images:
            require_file(path)
        samples.append(ImageSample(str(image_id), path, width, height, tuple(captions)))
    return samples, report


def _read_instances(path: Path) -> tuple[dict[int, tuple[str, int, int]], dict[int, Box]]:
    """``image id -> (file_name, width, height)`` and ``annotation id -> xyxy box``."""
    data = load_json(path)
    images = {}
    for i, im in enumerate(get_field(data, "images", list, path, "top level")):
        where = f"images[{i}]"
        images[get_field(im, "id", int, path, where)] = (
            get_field(im, "file_name", str, path, where),
            get_field(im, "width", int, path, where),
            get_field(im, "height", int, path, where),
        )
    boxes = {}
    for i, ann in enumerate(get_field(data, "annotations", list, path, "top level")):
        where = f"annotations[{i}]"
        bbox = get_field(ann, "bbox", list, path, where)
        if len(bbox) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox):
            raise DataFormatError(path, f"{where}: bbox must be 4 numbers x, y, w, h")
        x, y, w, h = (float(v) for v in bbox)
        boxes[get_field(ann, "id", int, path, where)] = (x, y, x + w, y + h)
    return images, boxes


# ----------------------------------------------------------------------------- Hu et al. layout


def read_referit_hu(
    root: Path,
    split: str | None = None,
    require_images: bool = True,
    *,
    expressions: Path | None = None,
    image_dir: Path | None = None,
    mask_dir: Path | None = None,
) -> tuple[list[ImageSample], ReadReport]:
    """Read ReferIt in the Hu et al. (2016) layout.

    Args:
        root: the ReferIt folder (see the module doc for the files looked for).
        split: "train", "val", "test", "trainval" or "all", chosen by the
            ``referit_<split>_imlist.txt`` image list; None reads every expression.
        require_images: raise DataFormatError for a missing image file; when False the
            size of a missing image is (0, 0).
        expressions: the expression file; default: the derived metadata JSON files when
            present, else ``RealGames.txt`` / ``CannedGames.txt`` under ``root`` or
            ``root/ReferitData``.
        image_dir: the image folder; default ``ImageCLEF/images``, ``images`` or ``root``.
        mask_dir: the mask folder; default ``ImageCLEF/mask`` or ``mask``.

    Returns:
        One sample per image, one caption per unique expression of each region, and the
        oddities (missing or empty masks, duplicate expressions, undecodable lines).
    """
    root = Path(root)
    report = ReadReport()
    keep = _read_imlist(root, split) if split is not None else None
    metadata = root / "data" / "metadata"
    if expressions is None and (metadata / "referit_query_dict.json").is_file():
        regions = _regions_from_metadata(metadata, keep, report)
    else:
        if expressions is None:
            expressions = _first_existing(
                root, ["ReferitData/RealGames.txt", "RealGames.txt", "ReferitData/CannedGames.txt", "CannedGames.txt"],
                "expression file",
            )
        if mask_dir is None:
            mask_dir = _first_existing(root, ["ImageCLEF/mask", "mask"], "mask folder")
        regions = _regions_from_masks(Path(expressions), Path(mask_dir), keep, report)
    if image_dir is None:
        image_dir = next((root / d for d in ("ImageCLEF/images", "images") if (root / d).is_dir()), root)

    by_image: dict[str, list[Caption]] = {}
    for crop, (texts, box) in regions.items():
        image_id = crop.split("_")[0]
        by_image.setdefault(image_id, []).extend(_region_captions(texts, crop, box, report, crop))
    samples = []
    for image_id, captions in by_image.items():
        path = Path(image_dir) / f"{image_id}.jpg"
        width, height = image_size(path, required=require_images)
        samples.append(ImageSample(image_id, path, width, height, tuple(captions)))
    return samples, report


def _first_existing(root: Path, candidates: list[str], what: str) -> Path:
    for c in candidates:
        if (root / c).exists():
            return root / c
    raise DataFormatError(root, f"no {what} found (looked for {', '.join(candidates)})")


def read_imlist(path: Path) -> list[str]:
    """Image ids of a ``referit_<split>_imlist.txt`` file, one per line."""
    ids = []
    try:
        lines = Path(path).read_text(encoding="ascii").splitlines()
    except FileNotFoundError:
        raise DataFormatError(path, "file not found") from None
    except UnicodeDecodeError as e:
        raise DataFormatError(path, f"not an image-id list ({e.reason})") from None
    for n, line in enumerate(lines, start=1):
        line = line.strip()
        if not line:
            continue
        if not line.isdigit():
            raise DataFormatError(path, f"expected an image id, got '{line}'", line=n)
        ids.append(line)
    return ids


def _read_imlist(root: Path, split: str) -> set[str]:
    name = f"referit_{split}_imlist.txt"
    candidates = [f"data/split/{name}", f"split/{name}", name]
    return set(read_imlist(_first_existing(root, candidates, f"'{split}' image list")))


def _regions_from_metadata(
    folder: Path, keep: set[str] | None, report: ReadReport
) -> dict[str, tuple[list[str], Box]]:
    """``crop -> (expressions, box)`` from the derived ``referit_*_dict.json`` files."""
    query_path = folder / "referit_query_dict.json"
    bbox_path = folder / "referit_imcrop_bbox_dict.json"
    queries, bboxes = load_json(query_path), load_json(bbox_path)
    for p, d in ((query_path, queries), (bbox_path, bboxes)):
        if not isinstance(d, dict):
            raise DataFormatError(p, f"expected an object keyed by crop name, got {type(d).__name__}")
    regions = {}
    for crop, texts in queries.items():
        if keep is not None and crop.split("_")[0] not in keep:
            continue
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise DataFormatError(query_path, f"'{crop}': expected a list of strings")
        if not texts:
            report.add("region_without_expression", crop)
            continue
        if crop not in bboxes:
            report.add("region_without_box", f"{bbox_path.name}: {crop}")
            continue
        b = bboxes[crop]
        if not (isinstance(b, list) and len(b) == 4 and all(isinstance(v, (int, float)) for v in b)):
            raise DataFormatError(bbox_path, f"'{crop}': box must be 4 numbers x0, y0, x1, y1")
        regions[crop] = (texts, (float(b[0]), float(b[1]), float(b[2]) + 1, float(b[3]) + 1))  # inclusive -> continuous
    return regions


def _regions_from_masks(
    path: Path, mask_dir: Path, keep: set[str] | None, report: ReadReport
) -> dict[str, tuple[list[str], Box]]:
    """``crop -> (expressions, box)`` from an expression file and the region masks."""
    if not mask_dir.is_dir():
        raise DataFormatError(mask_dir, "mask folder not found")
    texts: dict[str, list[str]] = {}
    for n, line in _read_lines(path, report):
        fields = line.split("~")
        match = _CROP_NAME.fullmatch(fields[0].strip())
        if len(fields) < 2 or match is None:
            raise DataFormatError(path, "expected '<image>_<region>.jpg~<expression>'", line=n)
        if keep is None or match.group(1) in keep:
            texts.setdefault(f"{match.group(1)}_{match.group(2)}", []).append(fields[1])
    regions = {}
    for crop, crop_texts in texts.items():
        box = mask_box(mask_dir / f"{crop}.mat", report)
        if box is not None:
            regions[crop] = (crop_texts, box)
    return regions


def _read_lines(path: Path, report: ReadReport) -> Iterable[tuple[int, str]]:
    """Non-blank lines with their 1-based numbers; lines that are not UTF-8 are read as Latin-1."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataFormatError(path, "file not found") from None
    for n, line in enumerate(raw.splitlines(), start=1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            text = line.decode("latin-1")
            report.add("non_utf8_line", f"{path.name}:{n}")
        if text.strip():
            yield n, text


def mask_box(path: Path, report: ReadReport) -> Box | None:
    """The box (continuous xyxy) around the object pixels (value 0) of a ReferIt mask.

    Returns None, and counts the case, for a missing mask or one without object pixels.
    """
    if not path.is_file():
        report.add("missing_mask", str(path))
        return None
    try:
        mat = scipy.io.loadmat(path)
    except (scipy.io.matlab.MatReadError, ValueError, TypeError, OSError, NotImplementedError) as e:
        raise DataFormatError(path, f"not a readable MATLAB mask ({e})") from None
    if "segimg_t" not in mat:
        raise DataFormatError(path, "MATLAB file has no 'segimg_t' mask")
    rows, cols = np.nonzero(np.asarray(mat["segimg_t"]) == 0)
    if rows.size == 0:
        report.add("empty_mask", str(path))
        return None
    return float(cols.min()), float(rows.min()), float(cols.max()) + 1, float(rows.max()) + 1

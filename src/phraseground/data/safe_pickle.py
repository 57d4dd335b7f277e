"""Helpers shared by the dataset readers: safe reading of untrusted files, atomic writing,
image sizes and box checks.

Dataset annotations come from the internet: the ``refer`` pickles (``refs(unc).p``) in
particular could carry code. :func:`load_pickle` uses a restricted unpickler whose
``find_class`` refuses every global, so only plain containers (list, tuple, dict, set),
str, bytes, numbers, bool and None can load. :func:`pickle_to_json` converts such a
pickle to JSON once, so later runs read the JSON. The JSON, image-header and box helpers
used by every reader live here too, so each reader reports bad files the same way.
"""
from __future__ import annotations

import json
import math
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from torchvision.ops import clip_boxes_to_image

from phraseground.data.types import Box
from phraseground.errors import DataFormatError

BOX_OK, BOX_CLIPPED, BOX_BROKEN, BOX_OUTSIDE = "ok", "clipped", "broken", "outside"


class _RefusedGlobal(pickle.UnpicklingError):
    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"{module}.{name}")
        self.qualname = f"{module}.{name}"


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that refuses to import anything (classes, functions, reducers)."""

    def find_class(self, module: str, name: str) -> Any:
        raise _RefusedGlobal(module, name)


def load_pickle(path: Path) -> Any:
    """Load an untrusted pickle that may only hold plain data.

    Python 2 byte strings are decoded as UTF-8.

    Raises:
        DataFormatError: the file is missing, truncated, not a pickle, or refers to any
            global object (e.g. ``os.system``); nothing from the file is executed.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return RestrictedUnpickler(f, encoding="utf-8").load()
    except FileNotFoundError:
        raise DataFormatError(path, "file not found") from None
    except _RefusedGlobal as e:
        raise DataFormatError(
            path,
            f"refusing to load this pickle: it refers to the Python object '{e.qualname}'; "
            "only plain containers, strings, numbers, booleans and None are allowed",
        ) from None
    except UnicodeDecodeError as e:
        raise DataFormatError(path, f"pickle holds a byte string that is not UTF-8 ({e.reason})") from None
    except (pickle.UnpicklingError, EOFError, ValueError, IndexError, KeyError, TypeError) as e:
        raise DataFormatError(path, f"not a readable pickle ({type(e).__name__}: {e})") from None


def _to_json_value(obj: Any, path: Path, where: str) -> Any:
    """Return ``obj`` as JSON-ready data; refuse anything JSON cannot hold faithfully."""
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise DataFormatError(path, f"{where}: {obj} has no JSON form")
        return obj
    if isinstance(obj, (list, tuple)):
        return [_to_json_value(v, path, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise DataFormatError(path, f"{where}: dict key {k!r} is not a string")
            out[k] = _to_json_value(v, path, f"{where}[{k!r}]")
        return out
    raise DataFormatError(path, f"{where}: a {type(obj).__name__} has no JSON form")


def pickle_to_json(src: Path, dst: Path | None = None) -> Path:
    """Convert an untrusted plain-data pickle to JSON (atomic write), once.

    Args:
        src: the pickle, e.g. ``refclef/refs(unc).p``.
        dst: output path; defaults to ``src`` with the suffix ``.json``.

    Returns:
        The JSON path.
    """
    src = Path(src)
    dst = Path(dst) if dst is not None else src.with_suffix(".json")
    data = _to_json_value(load_pickle(src), src, "root")
    atomic_write_bytes(dst, json.dumps(data, ensure_ascii=False).encode("utf-8"))
    return dst


def load_json(path: Path) -> Any:
    """Parse a JSON file, naming the file (and line) in any error."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DataFormatError(path, "file not found") from None
    except json.JSONDecodeError as e:
        raise DataFormatError(path, f"invalid JSON: {e.msg} (column {e.colno})", line=e.lineno) from None
    except UnicodeDecodeError as e:
        raise DataFormatError(path, f"not UTF-8 text ({e.reason})") from None


def get_field(record: Any, key: str, types: type | tuple[type, ...], path: Path, where: str) -> Any:
    """``record[key]`` checked to be of ``types``; DataFormatError naming file and record otherwise.

    ``bool`` is never accepted where a number is expected.
    """
    if not isinstance(record, dict):
        raise DataFormatError(path, f"{where}: expected an object, got {type(record).__name__}")
    if key not in record:
        raise DataFormatError(path, f"{where}: missing '{key}'")
    value = record[key]
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in _as_tuple(types)):
        raise DataFormatError(path, f"{where}: '{key}' has type {type(value).__name__}")
    return value


def _as_tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def image_size(path: Path, required: bool = True) -> tuple[int, int]:
    """``(width, height)`` from the image file header (no decoding).

    Args:
        path: the image file.
        required: when False a missing file gives ``(0, 0)`` (size unknown) instead of an error.

    Raises:
        DataFormatError: the file is missing (and required) or is not a readable image.
    """
    path = Path(path)
    if not required and not path.is_file():
        return 0, 0
    try:
        with Image.open(path) as im:
            return im.size
    except FileNotFoundError:
        raise DataFormatError(path, "image file not found") from None
    except (UnidentifiedImageError, OSError) as e:
        raise DataFormatError(path, f"not a readable image ({e})") from None


def require_file(path: Path, what: str = "image file") -> None:
    """Raise DataFormatError naming ``path`` unless it is an existing file."""
    if not Path(path).is_file():
        raise DataFormatError(path, f"{what} not found")


def check_boxes(boxes: list[Box], width: int, height: int) -> list[tuple[str, Box]]:
    """Check xyxy boxes against an image and clip them to it.

    Returns:
        Per box a verdict and the clipped box: ``BOX_OK``; ``BOX_CLIPPED`` (it passed the image
        edge); ``BOX_BROKEN`` (not finite, or ``x1 <= x0`` or ``y1 <= y0``); ``BOX_OUTSIDE``
        (nothing of it is inside the image).
    """
    if not boxes:
        return []
    raw = torch.tensor(boxes, dtype=torch.float64)  # (K, 4) xyxy
    ordered = torch.isfinite(raw).all(dim=1) & (raw[:, 2] > raw[:, 0]) & (raw[:, 3] > raw[:, 1])
    clipped = clip_boxes_to_image(raw, (height, width))  # (K, 4)
    inside = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    moved = (clipped != raw).any(dim=1)
    verdicts = []
    for box_ok, in_ok, box_moved, box in zip(ordered.tolist(), inside.tolist(), moved.tolist(), clipped.tolist()):
        verdict = BOX_BROKEN if not box_ok else BOX_OUTSIDE if not in_ok else BOX_CLIPPED if box_moved else BOX_OK
        verdicts.append((verdict, tuple(box)))
    return verdicts

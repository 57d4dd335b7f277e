"""Safe reading of untrusted pickles.

Dataset annotations come from the internet: the ``refer`` pickles (``refs(unc).p``) in
particular could carry code. :func:`load_pickle` uses a restricted unpickler whose
``find_class`` refuses every global, so only plain containers (list, tuple, dict, set),
str, bytes, numbers, bool and None can load. :func:`pickle_to_json` converts such a
pickle to JSON once, so later runs read the JSON.
"""
from __future__ import annotations

import json
import math
import pickle
from pathlib import Path
from typing import Any

from phraseground.errors import DataFormatError
from phraseground.io import write_bytes


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
    write_bytes(dst, json.dumps(data, ensure_ascii=False).encode("utf-8"))
    return dst

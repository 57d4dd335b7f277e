"""Writing files safely and reading JSON: the one atomic writer and the one file-name helper.

Everything the project writes (checkpoints, indexes, reports, overlays, the synthetic benchmark)
goes through :func:`atomic_write`: a reader, or a run killed at any moment, sees either the old
file or the complete new one, never half of it, and no temporary file is left behind.
"""
from __future__ import annotations

import errno
import json
import os
import re
import unicodedata
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

from .errors import DataFormatError, OutputError

__all__ = ["atomic_write", "write_bytes", "write_text", "write_json", "load_json", "get_field",
           "require_file", "safe_filename", "remove_stale_temps", "output_error", "WRITE_ERRNOS"]

#: errno values that mean "this output cannot be written here" (not a bug): they become one
#: OutputError line naming the path
WRITE_ERRNOS = frozenset(getattr(errno, n) for n in ("EROFS", "ENOSPC", "EFBIG", "EACCES", "EPERM", "EDQUOT",
                                                      "ENOTDIR", "EEXIST", "EISDIR") if hasattr(errno, n))


def output_error(e: OSError, path: str | os.PathLike | None = None) -> OutputError | None:
    """The one-line OutputError for an OSError that means the output cannot be written, else None."""
    if e.errno not in WRITE_ERRNOS:
        return None
    where = e.filename if e.filename is not None else path
    return OutputError(f"cannot write {where}: {e.strerror or os.strerror(e.errno)}")

_TMP_SUFFIX = ".tmp"


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}{_TMP_SUFFIX}")


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", *, fsync: bool = True) -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; on success it replaces ``path``.

    The temporary file lives in the same folder (so ``os.replace`` is atomic), is flushed and
    fsynced before the rename, and is removed on any error (the exception propagates; an
    OSError meaning the output cannot be written there — read-only, full disk, file-size
    limit, no permission — becomes one :class:`OutputError` line naming the path). Missing
    parent folders are created. The file gets the usual permissions (``0o666`` minus the umask).

    Args:
        path: the final file.
        mode: ``"wb"`` (bytes) or ``"w"`` (UTF-8 text, ``"\\n"`` line ends).
        fsync: flush the data to disk before the rename (off only for bulk files that can be
            regenerated).

    Example:
        >>> with atomic_write("out/report.json", "w") as f:  # doctest: +SKIP
        ...     f.write("{}")
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write: mode must be 'wb' or 'w', not {mode!r}")
    path = Path(path)
    tmp = _temp_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as e:
        raise (output_error(e, path) or e) from None
    try:
        text = {"encoding": "utf-8", "newline": "\n"} if mode == "w" else {}
        with os.fdopen(fd, mode, **text) as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError) and output_error(e, path) is not None:
            raise output_error(e, path) from None  # e.g. EFBIG/ENOSPC while writing: one line, no temp left
        raise


def write_bytes(path: str | os.PathLike, data: bytes, *, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_write(path, "wb", fsync=fsync) as f:
        f.write(data)


def write_text(path: str | os.PathLike, text: str, *, fsync: bool = True) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    with atomic_write(path, "w", fsync=fsync) as f:
        f.write(text)


def write_json(path: str | os.PathLike, data: Any, indent: int | None = 2) -> None:
    """Write ``data`` as JSON (a trailing newline; numpy/torch scalars as floats) atomically."""
    write_text(path, json.dumps(data, indent=indent, ensure_ascii=False, default=float) + "\n")


def remove_stale_temps(path: str | os.PathLike) -> None:
    """Remove temporary files of ``path`` left by a writer that was killed (``kill -9``) mid-write.

    Only call this where no other process may be writing ``path`` at the same time."""
    path = Path(path)
    for stale in path.parent.glob(f".{glob_escape(path.name)}.*{_TMP_SUFFIX}"):
        stale.unlink(missing_ok=True)


def glob_escape(name: str) -> str:
    """``name`` with glob metacharacters escaped."""
    return re.sub(r"([*?\[])", r"[\1]", name)


def load_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file, naming the file (and line) in any error.

    Raises:
        DataFormatError: the file is missing, not UTF-8, or not valid JSON.
    """
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
    allowed = types if isinstance(types, tuple) else (types,)
    if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
        raise DataFormatError(path, f"{where}: '{key}' has type {type(value).__name__}")
    return value


def require_file(path: str | os.PathLike, what: str = "image file") -> None:
    """Raise DataFormatError naming ``path`` unless it is an existing file."""
    if not Path(path).is_file():
        raise DataFormatError(path, f"{what} not found")


def safe_filename(text: str, index: int | str, suffix: str = ".png", max_len: int = 60) -> str:
    """A plain file name for user or dataset text (a phrase, an image id): ``<index>_<slug><suffix>``.

    The slug keeps ASCII letters, digits, ``-`` and ``_`` (accents folded, everything else
    becomes ``_``), so the name never holds a path separator, never is ``.``/``..`` or hidden,
    and is at most ``max_len`` characters. ``index`` keeps names of equal texts apart; give
    each file of a folder its own index.

    >>> safe_filename("a red star / ../../etc", 3)
    '03_a_red_star_etc.png'
    """
    def slug(value: str) -> str:
        folded = unicodedata.normalize("NFKD", str(value)).encode("ascii", "ignore").decode("ascii")
        return re.sub(r"[^A-Za-z0-9-]+", "_", folded).strip("_-")

    if not re.fullmatch(r"(\.[A-Za-z0-9]+)?", suffix):
        raise ValueError(f"safe_filename: suffix must be like '.png', not {suffix!r}")
    head = f"{index:02d}" if isinstance(index, int) else (slug(index) or "0")
    room = max_len - len(suffix)
    if room < 1:
        raise ValueError(f"safe_filename: max_len {max_len} leaves no room beside {suffix!r}")
    head = head[:room]
    body = slug(text)[: room - len(head) - 1].rstrip("_-")
    return f"{head}_{body}{suffix}" if body else f"{head}{suffix}"

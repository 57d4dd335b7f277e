"""Reading large JSON files one record at a time (``ijson``), with bounded memory.

``iter_json_list(path)`` yields the items of a file whose top level is an array without ever
holding the whole parse tree: memory is that of one item (plus ijson's read buffer), whatever the
file's size. Errors name the file, as ``phraseground.io.load_json`` does.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from phraseground.errors import DataFormatError


def iter_json_list(path: Path, progress: str | None = None) -> Iterator[Any]:
    """The items of the top-level JSON array of ``path``, parsed one at a time.

    Args:
        progress: when given, a progress bar over the file's bytes with this description.

    Raises:
        DataFormatError: the file is missing, its top level is not an array, or it is not valid JSON.
    """
    import ijson

    path = Path(path)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise DataFormatError(path, "file not found") from None
    with f:
        head = f.read(1 << 16).lstrip()
        if head.startswith(b"\xef\xbb\xbf"):
            head = head[3:].lstrip()
        if not head.startswith(b"["):
            kind = "an object" if head.startswith(b"{") else "not an array"
            raise DataFormatError(path, f"expected a list at the top level, got {kind}")
        f.seek(0)
        source = f
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=path.stat().st_size, desc=progress, unit="B", unit_scale=True, dynamic_ncols=True)
            source = _Counting(f, bar)
        try:
            yield from ijson.items(source, "item", use_float=True)
        except ijson.JSONError as e:
            raise DataFormatError(path, f"invalid JSON: {str(e).splitlines()[0][:200]}") from None
        except UnicodeDecodeError as e:
            raise DataFormatError(path, f"not UTF-8 text ({e.reason})") from None
        finally:
            if bar is not None:
                bar.close()


class _Counting:
    """A binary file whose reads advance a progress bar."""

    def __init__(self, f, bar) -> None:
        self.f, self.bar = f, bar

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.bar.update(len(data))
        return data

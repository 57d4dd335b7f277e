"""The one atomic writer and the one file-name helper (phraseground.io)."""
from __future__ import annotations

import os
import stat

import pytest

from phraseground.io import atomic_write, load_json, remove_stale_temps, safe_filename, write_json, write_text


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "out.bin"
    with atomic_write(target) as f:
        f.write(b"new")
        assert not target.exists()  # nothing visible until the block ends
    assert target.read_bytes() == b"new"
    write_text(target, "héllo\n")
    assert target.read_text(encoding="utf-8") == "héllo\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.bin"]
    mode = stat.S_IMODE(target.stat().st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask  # not mkstemp's 0o600


def test_atomic_write_error_keeps_the_old_file(tmp_path):
    target = tmp_path / "report.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_write(target, "w") as f:
            f.write('{"half": ')
            raise RuntimeError("killed mid-write")
    assert load_json(target) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]
    with pytest.raises(ValueError):
        with atomic_write(target, "a"):
            pass


def test_remove_stale_temps(tmp_path):
    target = tmp_path / "last.pt"
    (tmp_path / ".last.pt.0123abcd.tmp").write_bytes(b"x")
    (tmp_path / ".other.pt.0123abcd.tmp").write_bytes(b"x")
    remove_stale_temps(target)
    assert [p.name for p in tmp_path.iterdir()] == [".other.pt.0123abcd.tmp"]


@pytest.mark.parametrize("text", [
    "a red star", "../../etc/passwd", "..", ".", "", "   ", "/", "a\\b", "C:\\x", "\x00nul", "NUL", "ünïcödé star",
    "星", "x" * 500, ".hidden", "a.b.c", "-rf", "tab\tnew\nline",
])
def test_safe_filename_is_always_a_plain_bounded_name(text):
    name = safe_filename(text, 7)
    assert name.startswith("07") and name.endswith(".png") and len(name) <= 60
    assert "/" not in name and "\\" not in name and "\x00" not in name and not name.startswith(".")
    stem = name[: -len(".png")]
    assert set(stem) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def test_safe_filename_examples():
    assert safe_filename("a red star", 0) == "00_a_red_star.png"
    assert safe_filename("ünïcödé star", 12, ".json") == "12_unicode_star.json"
    assert safe_filename("../..", 3) == "03.png"
    assert safe_filename("a red star", "000017_2") == "000017_2_a_red_star.png"
    assert len(safe_filename("word " * 100, 1, max_len=30)) <= 30
    assert safe_filename("a", "x" * 100, max_len=20) == "x" * 16 + ".png"
    with pytest.raises(ValueError):
        safe_filename("a", 1, suffix="/../x")

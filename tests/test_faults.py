"""Faults: a read-only output folder, a full disk, kill -9 while writing a checkpoint or evaluating.

Each ends with one ``phraseground: error:`` line (or, for kill -9, with the previous files
intact) and leaves no partial file. Sessions and CI run as root, which ignores file
permissions: a read-only folder is a read-only bind mount, a full disk is ``RLIMIT_FSIZE``
with SIGXFSZ ignored (writes then fail with EFBIG).
"""
from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from phraseground.app.cli import main

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _one_line(code: int, err: str) -> None:
    assert code == 2 and err.startswith("phraseground: error: ") and err.count("\n") == 1, (code, err)


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _complete(files: list[Path]) -> None:
    """Every file there is whole: no temporary, JSON parses, PNG decodes, checkpoints load."""
    from PIL import Image

    for p in files:
        assert ".tmp" not in p.name, p
        if p.suffix == ".json":
            json.loads(p.read_text())
        elif p.suffix == ".png":
            Image.open(p).load()
        elif p.suffix == ".pt":
            from phraseground.models.checkpoint import load_checkpoint

            load_checkpoint(p)


@contextlib.contextmanager
def read_only(folder: Path):
    """``folder`` as a read-only bind mount of itself (skips when mounting is not allowed)."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("bind mounts need root")
    r = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {r.stderr.decode().strip()}")
    try:
        r = subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], capture_output=True)
        if r.returncode != 0:
            pytest.skip(f"cannot remount read-only: {r.stderr.decode().strip()}")
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)


@contextlib.contextmanager
def file_size_limit(limit: int):
    """Files may not grow past ``limit`` bytes (RLIMIT_FSIZE, SIGXFSZ ignored: writes fail with EFBIG)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)


# ------------------------------------------------------------------------- read-only folder
def test_read_only_output_folder_is_one_line_for_every_command(tiny_run, tiny_bench, tmp_path, capsys):
    run, _ = tiny_run
    image = str(tiny_bench / "images" / "000025.jpg")
    ro = tmp_path / "ro"
    (ro / "existing").mkdir(parents=True)
    with read_only(ro):
        cases = {
            "ground, new folder": ["ground", image, "--phrase", "a red star", "--checkpoint", str(run / "best.pt"),
                                   "--out", str(ro / "g")],
            "ground, existing folder": ["ground", image, "--phrase", "a red star", "--checkpoint",
                                        str(run / "best.pt"), "--out", str(ro / "existing")],
            "evaluate --json": ["evaluate", "--baseline", "center", "--data", str(tiny_bench), "--split", "test",
                                "--json", str(ro / "e.json")],
            "train --out": ["train", "--set", f"data.root={tiny_bench}", "--set", "train.epochs=1",
                            "--out", str(ro / "run"), "--quiet"],
            "prepare --out": ["prepare", "flickr30k", "--root", str(tiny_bench), "--split", "test",
                              "--out", str(ro / "idx" / "test.json.gz")],
            "synth": ["synth", str(ro / "bench"), "--images", "3", "--quiet"],
        }
        for what, argv in cases.items():
            code, _, err = _cli(capsys, *argv)
            _one_line(code, err)
            assert "Read-only file system" in err or "read-only" in err.lower(), (what, err)
        assert _files(ro) == []


# ------------------------------------------------------------------------- full disk
def test_full_disk_ground_is_one_line_and_leaves_only_whole_files(tiny_run, tiny_bench, tmp_path, capsys):
    run, _ = tiny_run
    out = tmp_path / "g"
    with file_size_limit(6000):  # the overlays (about 20 kB each) cannot be written
        code, _, err = _cli(capsys, "ground", str(tiny_bench / "images" / "000025.jpg"), "--phrase", "a red star",
                            "--phrase", "a blue square", "--checkpoint", str(run / "best.pt"), "--out", str(out))
    _one_line(code, err)
    assert "File too large" in err
    _complete(_files(tmp_path))
    assert not (out / "grounding.json").exists()


def test_full_disk_checkpoint_keeps_the_previous_one(tiny_run, tmp_path):
    from phraseground.errors import OutputError
    from phraseground.models.checkpoint import load_checkpoint, save_checkpoint

    run, _ = tiny_run
    target = tmp_path / "last.pt"
    target.write_bytes((run / "best.pt").read_bytes())
    before = target.read_bytes()
    payload = load_checkpoint(target)
    payload.pop("format")
    with file_size_limit(len(before) // 2):
        with pytest.raises(OutputError, match="File too large") as e:
            save_checkpoint(payload, target)
    assert "\n" not in str(e.value) and str(target) in str(e.value)
    assert target.read_bytes() == before and _files(tmp_path) == [target]


def test_full_disk_evaluate_json_keeps_the_previous_report(tiny_bench, tmp_path, capsys):
    report = tmp_path / "e.json"
    report.write_text('{"previous": true}\n')
    with file_size_limit(200):
        code, _, err = _cli(capsys, "evaluate", "--baseline", "center", "--data", str(tiny_bench), "--split", "test",
                            "--json", str(report))
    _one_line(code, err)
    assert json.loads(report.read_text()) == {"previous": True} and _files(tmp_path) == [report]


# ------------------------------------------------------------------------- kill -9
_WRITER = """
import sys, torch
from phraseground.models.checkpoint import save_checkpoint
path = sys.argv[1]
k = 0
while True:
    k += 1
    save_checkpoint({"version": k, "state_dict": {"w": torch.full((4_000_000,), float(k))}}, path)
"""


@pytest.mark.slow
def test_kill_9_while_writing_checkpoints_leaves_a_whole_one(tmp_path):
    from phraseground.models.checkpoint import load_checkpoint, save_checkpoint

    import torch

    target = tmp_path / "last.pt"
    save_checkpoint({"version": 0, "state_dict": {"w": torch.zeros(4)}}, target)
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    for delay in (0.0, 0.05, 0.2):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(target)], env=env)
        try:
            deadline = time.time() + 120
            while not any(".tmp" in p.name for p in tmp_path.iterdir()):  # a write under way
                assert proc.poll() is None and time.time() < deadline
                time.sleep(0.005)
            time.sleep(delay)
        finally:
            proc.kill()  # SIGKILL
            proc.wait()
        ckpt = load_checkpoint(target)  # the previous or the new one, whole
        assert float(ckpt["state_dict"]["w"][0]) == ckpt["version"]
    save_checkpoint({"version": -1, "state_dict": {}}, target)  # the next write clears what kill -9 left
    assert _files(tmp_path) == [target]


@pytest.mark.slow
def test_kill_9_during_evaluation_keeps_the_previous_report(tiny_run, tiny_bench, tmp_path):
    run, _ = tiny_run
    report = tmp_path / "e.json"
    report.write_text('{"previous": true}\n')
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "phraseground.app.cli", "evaluate", "--checkpoint", str(run / "best.pt"),
            "--data", str(tiny_bench), "--split", "test", "--task", "all", "--json", str(report), "--quiet"]
    for delay in (1.0, 3.0, 6.0):
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        finished = proc.poll() is not None
        proc.kill()
        proc.wait()
        report_now = json.loads(report.read_text())  # whole: the previous report or the complete new one
        if finished:
            assert "grounding" in report_now
        else:  # killed before, during or just after the write (the process may still be exiting)
            assert report_now == {"previous": True} or "grounding" in report_now
        report.write_text('{"previous": true}\n')
        assert _files(tmp_path) == [report]

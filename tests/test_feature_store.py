"""The disk feature store: fingerprint (reuse and mismatch), resume after a real kill -9,
corrupted and truncated shards, disk space, and the values it serves."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from phraseground.data.flickr30k import read_flickr30k
from phraseground.feature_store import FeatureStoreError, open_store
from phraseground.features import FeatureSpec, build_backbone, extract_features

SPEC = FeatureSpec("synthcnn", "pretrained", ("c2", "c3", "c4"), 4)


@pytest.fixture(scope="module")
def images(tiny_bench) -> list[Path]:
    samples, _ = read_flickr30k(tiny_bench, "train")
    return [s.image_path for s in samples]


def _files(store) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(store.path.iterdir()) if p.name != "manifest.json"}


def _open(root: Path, images, spec=SPEC, **kw):
    kw.setdefault("shard_images", 6)
    kw.setdefault("batch_size", 4)
    return open_store(root, spec, images, label="train", **kw)


def test_store_serves_the_backbone_features(images, tmp_path):
    store = _open(tmp_path, images, quiet=True)
    assert len(store) == len(images) == 20 and len(list(store.path.glob("shard-*.npy"))) == 4
    ref = extract_features(build_backbone(SPEC), SPEC.backbone_spec, images, grid=4, batch_size=64)
    idx = [19, 0, 7, 6, 7]
    got = store.select(idx)
    for tap in SPEC.taps:
        assert got[tap].dtype == torch.float32 and got[tap].shape == (5, *ref[tap].shape[1:])
        assert torch.equal(got[tap], ref[tap][idx].float())  # fp16 on disk, the same values as in RAM
    assert isinstance(store._shards[0], np.memmap)  # read by memory mapping


def test_fingerprint_reuse_and_mismatch(images, tmp_path, capsys):
    first = _open(tmp_path, images)
    stamps = {p.name: p.stat().st_mtime_ns for p in first.path.iterdir()}
    capsys.readouterr()
    again = _open(tmp_path, images)
    assert again.path == first.path and "reusing" in capsys.readouterr().err
    assert stamps == {p.name: p.stat().st_mtime_ns for p in first.path.iterdir()}  # nothing rewritten

    other_grid = _open(tmp_path, images, FeatureSpec("synthcnn", "pretrained", ("c2", "c3", "c4"), 5))
    err = capsys.readouterr().err
    assert other_grid.path != first.path and "does not match (grid: 4 -> 5)" in err
    assert other_grid.select([0])["c2"].shape[-1] == 5

    _open(tmp_path, images[:-1])
    assert "image list: 20 -> 19 images" in capsys.readouterr().err

    _open(tmp_path, images, FeatureSpec("synthcnn", "random", ("c2", "c3", "c4"), 5))
    assert "weights: " in capsys.readouterr().err

    _open(tmp_path, images, FeatureSpec("synthcnn", "pretrained", ("c3", "c4"), 5))
    assert 'taps: ["c2", "c3", "c4"] -> ["c3", "c4"]' in capsys.readouterr().err


def test_corrupted_and_truncated_shards(images, tmp_path):
    store = _open(tmp_path, images, quiet=True)
    good = _files(store)
    shard = store.path / "shard-00002.npy"
    data = bytearray(shard.read_bytes())
    data[-7] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(FeatureStoreError, match=r"shard-00002\.npy is corrupted \(sha256 mismatch\).*--rebuild"):
        _open(tmp_path, images, quiet=True)
    assert _open(tmp_path, images, quiet=True, verify="size").n_images == 20  # sizes only: not seen
    (store.path / "shard-00001.npy").write_bytes(good["shard-00001.npy"][:-100])
    with pytest.raises(FeatureStoreError, match=r"shard-00001\.npy is truncated.*\(and 1 more shards\)"):
        _open(tmp_path, images, quiet=True)
    rebuilt = _open(tmp_path, images, quiet=True, rebuild=True)
    assert _files(rebuilt) == good


def test_not_enough_disk_space_is_one_clear_error(images, tmp_path, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(FeatureStoreError, match=r"not enough disk space .* needs 184\.32 KB more, 1\.00 KB free"):
        _open(tmp_path, images, quiet=True)
    assert not list(tmp_path.glob("*/shard-*"))


_CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from phraseground.feature_store import open_store
    from phraseground.features import FeatureExtractor, FeatureSpec

    root, slow = Path(sys.argv[1]), float(sys.argv[2])
    images = [Path(p) for p in sys.argv[3:]]
    spec = FeatureSpec("synthcnn", "pretrained", ("c2", "c3", "c4"), 4)

    class Slow(FeatureExtractor):
        def forward(self, x):
            time.sleep(slow)
            return super().forward(x)

    if slow < 0:  # a full disk: writes fail with EFBIG past 30 kB (root ignores permissions)
        import resource, signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (30_000, 30_000))
        slow = 0
    open_store(root, spec, images, label="train", shard_images=6, batch_size=2, quiet=True, extractor=Slow(spec))
""")


def _child(root: Path, slow: float, images) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", _CHILD, str(root), str(slow), *map(str, images)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_resume_after_kill_9_gives_the_uninterrupted_store(images, tmp_path):
    reference = _open(tmp_path / "ref", images, batch_size=2, quiet=True)
    proc = _child(tmp_path / "killed", 0.4, images)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if len(list((tmp_path / "killed").glob("*/shard-*.json"))) >= 1:
            time.sleep(0.5)  # inside the next shard: a partial file is being written
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    folder = next((tmp_path / "killed").iterdir())
    finished = sorted(p.name for p in folder.glob("shard-*.json"))
    assert 1 <= len(finished) < 4, finished  # really killed mid-extraction
    assert any(p.name.startswith(".") for p in folder.iterdir())  # the partial shard's temporary file
    kept = {name: (folder / name).stat().st_mtime_ns for name in finished}
    resumed = _open(tmp_path / "killed", images, batch_size=2, quiet=True)
    assert {name: (folder / name).stat().st_mtime_ns for name in finished} == kept  # finished shards kept
    assert _files(resumed) == _files(reference)  # identical to the uninterrupted run
    assert not any(p.name.startswith(".") for p in folder.iterdir())


def test_a_full_disk_during_extraction_is_one_clear_error(images, tmp_path):
    proc = _child(tmp_path, -1, images)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert "FeatureStoreError: cannot write the feature store" in err and "File too large" in err
    folder = next(tmp_path.glob("synthcnn-*"))
    assert not any(p.name.startswith(".") for p in folder.iterdir())  # no temporary file left
    resumed = _open(tmp_path, images, batch_size=2, quiet=True)  # the rerun (disk freed) finishes it
    assert len(resumed) == 20


def test_features_command_then_train_reuses_the_store(tiny_bench, tmp_path):
    from conftest import tiny_overrides
    from phraseground.train.config import load_config
    from phraseground.train.loop import train

    store = tmp_path / "store"
    sets = [a for o in tiny_overrides(tiny_bench) for a in ("--set", o)]
    done = subprocess.run([sys.executable, "-m", "phraseground.app.cli", "features", *sets, "--device", "auto",
                           "--out", str(store)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "train: 20 images" in done.stdout and "val: 1 images" in done.stdout
    assert "img/s" in done.stderr  # the progress bar
    stamps = {p: p.stat().st_mtime_ns for p in store.rglob("*")}
    cfg = load_config(None, tiny_overrides(tiny_bench, **{"data.feature_store": str(store), "train.epochs": 1}))
    train(cfg, tmp_path / "run", progress=False)
    assert {p: p.stat().st_mtime_ns for p in store.rglob("*")} == stamps  # train and validation reused both stores

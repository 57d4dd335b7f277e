"""The shared training loop: checkpoints, exact resume (also after a real kill), config
handling, and a 2-process torchrun (DDP, gloo) run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import tiny_overrides
from phraseground.errors import CheckpointError, ConfigError
from phraseground.models.checkpoint import load_checkpoint, model_from_checkpoint
from phraseground.train.config import load_config
from phraseground.train.loop import train


def _state(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["state_dict"]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def reference_run(tiny_run):
    return tiny_run


def test_run_directory_contents(reference_run):
    out, summary = reference_run
    assert {"config.yaml", "log.jsonl", "last.pt", "best.pt"} <= {p.name for p in out.iterdir()}
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert any("val_score" in r for r in records) and all("epoch" in r for r in records)
    ckpt = load_checkpoint(out / "last.pt", "mlmcs")
    assert ckpt["progress"]["epoch"] == 2 and ckpt["config"]["model_args"]["dim"] == 16
    assert summary["steps"] == 2 * (20 * 5 // 4)
    model, _ = model_from_checkpoint(out / "best.pt")  # the checkpoint alone rebuilds the model
    assert model.cfg.dim == 16 and model.cfg.grid == 4


def test_resume_after_stop_is_exact(reference_run, tiny_bench, tmp_path):
    ref, _ = reference_run
    cfg = load_config(None, tiny_overrides(tiny_bench, **{"train.max_steps": 31}))  # stops mid-epoch 2
    train(cfg, tmp_path, progress=False)
    assert load_checkpoint(tmp_path / "last.pt")["progress"]["step_in_epoch"] == 6
    cfg = load_config(None, tiny_overrides(tiny_bench))
    train(cfg, tmp_path, resume=True, progress=False)
    assert _same(_state(tmp_path / "last.pt"), _state(ref / "last.pt"))
    assert _same(_state(tmp_path / "best.pt"), _state(ref / "best.pt"))


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "phraseground.app.cli", *args]


@pytest.mark.slow
def test_resume_after_a_real_kill_loses_nothing(reference_run, tiny_bench, tmp_path):
    ref, _ = reference_run
    sets = [a for o in tiny_overrides(tiny_bench, **{"train.checkpoint_every": 2}) for a in ("--set", o)]
    proc = subprocess.Popen(_cli("train", "--out", str(tmp_path), "--quiet", *sets),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:  # wait for a mid-run checkpoint, then kill -9
        if (tmp_path / "last.pt").exists() and load_checkpoint(tmp_path / "last.pt")["progress"]["global_step"] >= 4:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = load_checkpoint(tmp_path / "last.pt")["progress"]["global_step"]
    assert killed_at < 50  # really stopped mid-run
    done = subprocess.run(_cli("train", "--out", str(tmp_path), "--quiet", "--resume", *sets), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert _same(_state(tmp_path / "last.pt"), _state(ref / "last.pt"))
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]  # nothing half-written left behind


def test_resume_with_another_model_config_is_refused(reference_run, tiny_bench, tmp_path):
    ref, _ = reference_run
    cfg = load_config(None, tiny_overrides(tiny_bench, **{"model_args.dim": 32}))
    with pytest.raises(CheckpointError, match="differs"):
        train(cfg, ref, resume=True, progress=False)


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown option"):
        load_config(None, ["train.epoch=3"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["train.epochs"])
    bad = tmp_path / "c.yaml"
    bad.write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(bad)
    cfg = load_config(None, ["train.epochs=3", "model_args.dim=64"])
    assert cfg.train.epochs == 3 and cfg.model_args.dim == 64


def test_no_config_means_the_models_documented_default():
    """`train` without --config trains what the README and `demo` use, not bare dataclass defaults."""
    from phraseground.train.config import default_config

    for model in ("mlmcs", "dsve", "attnreg"):
        assert load_config(None, [f"model={model}"]) == default_config(model)
    cfg = load_config(None, ["train.epochs=3"])
    assert cfg.model == "mlmcs" and cfg.train.epochs == 3 and cfg.train.caption_sampling == "one"
    assert cfg.model_args.dim == 128


def test_corrupted_and_foreign_checkpoints(reference_run, tmp_path):
    ref, _ = reference_run
    data = (ref / "last.pt").read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable"):
        load_checkpoint(tmp_path / "trunc.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a phraseground checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="expected 'dsve'"):
        load_checkpoint(ref / "last.pt", "dsve")

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    torch.save({"format": "phraseground-checkpoint-v1", "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()


@pytest.mark.slow
def test_torchrun_two_processes(tiny_bench, tmp_path):
    """DDP with gloo on 2 CPU processes: trains, rank 0 writes the checkpoints. ``--standalone``
    rendezvous on a free port, so concurrent runs of the suite do not collide."""
    sets = [a for o in tiny_overrides(tiny_bench, **{"train.epochs": 1}) for a in ("--set", o)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PG_BACKEND": "gloo"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "phraseground.app.cli", "train", "--out", str(tmp_path), "--quiet", *sets]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    ckpt = load_checkpoint(tmp_path / "last.pt", "mlmcs")
    assert ckpt["progress"]["global_step"] == (20 * 5) // (4 * 2)  # each step consumes 2 ranks × 4 items
    model, _ = model_from_checkpoint(tmp_path / "best.pt")
    assert all(torch.isfinite(p).all() for p in model.parameters())

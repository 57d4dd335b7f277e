"""Shared fixtures: a tiny synthetic benchmark and a tiny training config."""
from __future__ import annotations

from pathlib import Path

import pytest

from phraseground.data.synthetic import generate_benchmark


@pytest.fixture(scope="session")
def tiny_bench(tmp_path_factory) -> Path:
    """25 images: 20 train, 1 val, 4 test."""
    root = tmp_path_factory.mktemp("bench") / "synthetic"
    generate_benchmark(root, 25, seed=5)
    return root


def tiny_overrides(root: Path, **extra: object) -> list[str]:
    """A small mlmcs run on ``root``: D = 16, M = 4, batch 4, 2 epochs."""
    values = {
        "data.root": str(root), "model_args.dim": 16, "model_args.grid": 4, "model_args.text_dim": 16,
        "train.batch_size": 4, "train.epochs": 2, "train.lr_milestones": "[1]", "train.val_max_images": 1,
        "train.checkpoint_every": 3, "train.caption_sampling": "all",
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


@pytest.fixture(scope="session")
def tiny_run(tiny_bench, tmp_path_factory) -> tuple[Path, dict]:
    """A tiny mlmcs training run (2 epochs) shared by the tests that need a checkpoint."""
    from phraseground.train.config import load_config
    from phraseground.train.loop import train

    out = tmp_path_factory.mktemp("run")
    summary = train(load_config(None, tiny_overrides(tiny_bench)), out, progress=False)
    return out, summary

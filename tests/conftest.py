"""Shared fixtures: a tiny synthetic benchmark and a tiny training config."""
from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from phraseground.data.synthetic import generate_benchmark


@pytest.fixture(scope="session")
def tiny_bench(tmp_path_factory) -> Path:
    """25 images: 20 train, 1 val, 4 test."""
    root = tmp_path_factory.mktemp("bench") / "synthetic"
    generate_benchmark(root, 25, seed=5)
    return root


def free_port() -> int:
    """A TCP port nobody listens on now (for torchrun's rendezvous in parallel test runs)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_overrides(root: Path, **extra: object) -> list[str]:
    """A small mlmcs run on ``root``: D = 16, M = 4, batch 4, 2 epochs."""
    values = {
        "data.root": str(root), "model_args.dim": 16, "model_args.grid": 4, "model_args.word_dim": 16,
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


TINY_MODEL_ARGS = {
    "mlmcs": ["model_args.dim=16", "model_args.grid=4", "model_args.word_dim=16"],
    "dsve": ["model_args.maps=16", "model_args.dim=16", "model_args.word_dim=8", "model_args.localize_k=4",
             "model_args.warmup_epochs=0"],
    "attnreg": ["model_args.grid=4", "model_args.image_attention_hidden=8", "model_args.region_hidden=8",
                "model_args.word_dim=8", "model_args.lstm_hidden=8", "model_args.text_attention_hidden=8"],
}


def tiny_checkpoint(model: str, root: Path, out: Path) -> Path:
    """A near-random checkpoint of ``model`` (one epoch of a few steps on ``root``), built by the
    training loop so that it follows whatever the checkpoint contract is; returns best.pt."""
    from phraseground.train.config import load_config
    from phraseground.train.loop import train

    run = Path(out) / f"tiny_{model}"
    if not (run / "best.pt").is_file():
        overrides = [f"model={model}", f"data.root={root}", *TINY_MODEL_ARGS[model], "train.batch_size=8",
                     "train.epochs=1", "train.caption_sampling=one", "train.val_max_images=1",
                     "train.checkpoint_every=0"]
        train(load_config(None, overrides), run, progress=False)
    return run / "best.pt"


@pytest.fixture(scope="session")
def model_checkpoints(tiny_bench, tmp_path_factory) -> dict[str, Path]:
    """One tiny near-random checkpoint per registered model (mlmcs, dsve, attnreg)."""
    out = tmp_path_factory.mktemp("tiny_models")
    return {m: tiny_checkpoint(m, tiny_bench, out) for m in TINY_MODEL_ARGS}


@contextlib.contextmanager
def live_server(app, timeout: float = 30.0):
    """Run an ASGI app under a real uvicorn on a free port in a thread; yields its base URL."""
    import threading
    import time

    import uvicorn

    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + timeout
    while not srv.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(10)

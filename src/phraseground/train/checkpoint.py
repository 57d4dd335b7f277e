"""Checkpoints: written atomically, loaded without unpickling arbitrary objects.

A checkpoint is a dict of tensors and plain containers (``torch.load(weights_only=True)``):
``format``, ``model`` (registry name), ``config`` (the resolved experiment config as a dict),
``vocab`` (word list or None), ``state_dict``, and for resuming ``optimizer``, ``scheduler``,
``progress`` (epoch, step, ...) and ``rng`` (RNG states as tensors).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from ..io import atomic_write, remove_stale_temps

FORMAT = "phraseground-checkpoint-v1"


def save_checkpoint(payload: dict[str, Any], path: Path) -> None:
    """Write ``payload`` to ``path`` through a temporary file and an atomic rename."""
    remove_stale_temps(path)  # left by a writer killed mid-write (only rank 0 writes checkpoints)
    with atomic_write(path) as f:
        torch.save({"format": FORMAT, **payload}, f)


def load_checkpoint(path: Path, expect_model: str | None = None) -> dict[str, Any]:
    """Read a checkpoint safely; CheckpointError for a missing, corrupted or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated zip, pickle refusing an object, ...
        reason = str(e).strip().splitlines()[0].split(". ")[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a readable phraseground checkpoint ({reason[:160]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a phraseground checkpoint (format {ckpt.get('format') if isinstance(ckpt, dict) else type(ckpt).__name__!r})")
    if expect_model is not None and ckpt.get("model") != expect_model:
        raise CheckpointError(f"{path}: checkpoint of model {ckpt.get('model')!r}, expected {expect_model!r}")
    return ckpt


def model_from_checkpoint(path: Path, expect_model: str | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild a model from a checkpoint alone (its config and vocabulary travel inside it)."""
    from ..models.registry import create_model

    ckpt = load_checkpoint(path, expect_model)
    try:
        model = create_model(ckpt["model"], vocab=ckpt.get("vocab"), **ckpt["config"]["model_args"])
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except (KeyError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{path}: checkpoint does not rebuild its model ({str(e).splitlines()[0][:200]})") from None
    model.eval()
    return model, ckpt

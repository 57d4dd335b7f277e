"""Checkpoints: written atomically, loaded without unpickling arbitrary objects, and
self-contained: the model is rebuilt from the checkpoint alone.

A checkpoint is a dict of tensors and plain containers (``torch.load(weights_only=True)``):
``format``, ``model`` (registry name), ``config`` (the resolved experiment config as a dict),
``vocab`` (word list or None), ``text_spec`` (what rebuilds a pretrained text encoder with
placeholder weights — ELMo options, a word table's words — so its files are not re-read: the
state dict holds those weights), ``state_dict``, and for resuming ``optimizer``, ``scheduler``,
``progress`` (epoch, step, ...) and ``rng`` (CPU, CUDA, numpy and Python RNG states).

This module sits in the models layer: the trainer writes checkpoints, the predictor and the
evaluation read them, and neither needs the other.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, ConfigError, OutputError
from ..io import atomic_write, output_error, remove_stale_temps
from .base import GroundingModel

#: v2: typed model configs (``taps``, ``word_dim``), ``text_spec``, the model contract of models/base.py;
#: v3: a BiLSTM text encoder whose outputs the model does not use has no output projection
FORMAT = "phraseground-checkpoint-v3"
_OLDER = ("phraseground-checkpoint-v1", "phraseground-checkpoint-v2")


def save_checkpoint(payload: dict[str, Any], path: Path) -> None:
    """Write ``payload`` to ``path`` through a temporary file and an atomic rename."""
    remove_stale_temps(path)  # left by a writer killed mid-write (only rank 0 writes checkpoints)
    with atomic_write(path) as f:
        sink = _WriteRecorder(f)
        try:
            torch.save({"format": FORMAT, **payload}, sink)
        except RuntimeError:  # torch.save hides the OSError of a failed write (full disk, size limit)
            if sink.error is not None:
                raise (output_error(sink.error, path) or OutputError(f"cannot write {path}: {sink.error}")) from None
            raise


class _WriteRecorder:
    """A file wrapper that remembers the OSError a write raised (torch.save turns it into a bare RuntimeError)."""

    def __init__(self, f) -> None:
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


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
    if isinstance(ckpt, dict) and ckpt.get("format") in _OLDER:
        raise CheckpointError(f"{path}: checkpoint format {ckpt['format']!r} is from an older phraseground "
                              f"(this version reads {FORMAT!r}); retrain, or use the version that wrote it")
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a phraseground checkpoint (format {ckpt.get('format') if isinstance(ckpt, dict) else type(ckpt).__name__!r})")
    if expect_model is not None and ckpt.get("model") != expect_model:
        raise CheckpointError(f"{path}: checkpoint of model {ckpt.get('model')!r}, expected {expect_model!r}")
    return ckpt


def model_from_checkpoint(path: Path, expect_model: str | None = None) -> tuple[GroundingModel, dict[str, Any]]:
    """Rebuild a model from a checkpoint alone: its config, vocabulary and text spec travel
    inside it, the state dict fills every weight (no ELMo / word-table file is read)."""
    from .registry import create_model

    ckpt = load_checkpoint(path, expect_model)
    try:
        model = create_model(ckpt["model"], vocab=ckpt.get("vocab"), config=ckpt["config"]["model_args"],
                             text_spec=ckpt.get("text_spec") or None)
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except (KeyError, TypeError, RuntimeError, ConfigError) as e:
        raise CheckpointError(f"{path}: checkpoint does not rebuild its model ({str(e).splitlines()[0][:200]})") from None
    model.eval()
    return model, ckpt


def model_payload(model: GroundingModel, config: dict[str, Any], vocab: list[str] | None) -> dict[str, Any]:
    """The part of a checkpoint that rebuilds the model: name, config, vocabulary, text spec, weights."""
    return {"model": model.model_name, "config": config, "vocab": vocab, "text_spec": model.text_spec(),
            "state_dict": model.state_dict()}

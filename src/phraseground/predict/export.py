"""Portable models: ``phraseground export CKPT DIR`` and ``Grounder.from_pretrained(DIR)``.

An exported folder holds

* ``model.safetensors`` — the model's weights only (no optimizer, scheduler or RNG state);
* ``config.json`` — ``format``, ``model``, ``model_args`` (the frozen backbone named by its id,
  never by a file path), ``backbone`` (name, weights id, sha256 of the package weights when
  known), the package version;
* ``vocab.json`` — the word list, for models with a vocabulary.

Nothing in it names a path of the machine that trained it: a local backbone weights file used
in training becomes ``"pretrained"`` (resolved from the package or the standard caches at load
time, or given with ``backbone_weights=``); other absolute paths in ``model_args`` (e.g. a
text encoder's files) are reduced to their file names and can be given again with
``model_args=`` at load time.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..encoders.vision import get_backbone_spec, load_state_file
from ..errors import CheckpointError
from ..io import write_bytes, write_json

log = logging.getLogger(__name__)

FORMAT = "phraseground-export-v1"
WEIGHTS, CONFIG, VOCAB = "model.safetensors", "config.json", "vocab.json"


def _portable(value: Any, key: str, dropped: list[str]) -> Any:
    """``value`` with every absolute path replaced by its file name (recorded in ``dropped``)."""
    if isinstance(value, dict):
        return {k: _portable(v, f"{key}.{k}", dropped) for k, v in value.items()}
    if isinstance(value, list):
        return [_portable(v, f"{key}[{i}]", dropped) for i, v in enumerate(value)]
    if isinstance(value, str) and (os.path.isabs(value) or value.startswith("~")):
        dropped.append(key)
        return Path(value).name
    return value


def export_checkpoint(checkpoint: Path, out_dir: Path) -> dict[str, Any]:
    """Write the portable form of a training checkpoint into ``out_dir``; returns its config."""
    from safetensors.torch import save

    from ..models.checkpoint import load_checkpoint

    ckpt = load_checkpoint(Path(checkpoint))
    if ckpt.get("backbone") is not None:  # dropping it would ground with the declared weights
        raise CheckpointError(f"{checkpoint}: holds a fine-tuned backbone (online training), which export does not "
                              "carry yet: ground from the checkpoint itself")
    args = dict(ckpt["config"]["model_args"])
    model_name = ckpt["model"]
    from ..models.registry import build_config

    cfg = build_config(model_name, args)  # fills the defaults, so the export does not depend on them
    args = dataclasses.asdict(cfg)
    spec = get_backbone_spec(args["backbone"])
    if args.get("backbone_weights") not in ("pretrained", "random"):
        log.info("export: backbone weights %r replaced by the backbone's id %s", args.get("backbone_weights"), spec.weights_id)
        args["backbone_weights"] = "pretrained"
    dropped: list[str] = []
    args = _portable(args, "model_args", dropped)
    for key in dropped:
        log.warning("export: %s was an absolute path; kept only its file name (give it again at load time)", key)
    config = {
        "format": FORMAT,
        "model": model_name,
        "model_args": args,
        "backbone": {"name": spec.name, "weights_id": spec.weights_id, "source": spec.source, "sha256": spec.sha256},
        "phraseground_version": __version__,
        "checkpoint_format": ckpt.get("format"),
        "text_spec": ckpt.get("text_spec") or {},  # rebuilds ELMo / word-table encoders without their files
    }
    state = {k: v.detach().cpu().contiguous().clone() for k, v in ckpt["state_dict"].items()}  # no shared storage
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = save(state, metadata={"format": FORMAT, "model": model_name})
    write_bytes(out_dir / WEIGHTS, data)
    if ckpt.get("vocab") is not None:
        write_json(out_dir / VOCAB, list(ckpt["vocab"]), indent=None)
    else:
        (out_dir / VOCAB).unlink(missing_ok=True)
    write_json(out_dir / CONFIG, config)  # last: a folder with config.json is complete
    return config


def read_export_config(directory: Path) -> dict[str, Any]:
    directory = Path(directory)
    path = directory / CONFIG
    if not path.is_file():
        raise CheckpointError(f"{directory}: no {CONFIG} (write one with `phraseground export CKPT {directory}`)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a phraseground export (format "
                              f"{config.get('format') if isinstance(config, dict) else None!r}, expected {FORMAT!r})")
    return config


def load_exported(directory: Path, model_args: dict[str, Any] | None = None) -> torch.nn.Module:
    """Rebuild the model of an exported folder (eval mode, CPU).

    Args:
        model_args: overrides of the exported ``model_args`` (e.g. a text encoder's local files).
    """
    from ..models.registry import create_model

    directory = Path(directory)
    config = read_export_config(directory)
    vocab = None
    if (directory / VOCAB).is_file():
        try:
            vocab = json.loads((directory / VOCAB).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{directory / VOCAB}: not readable JSON ({e})") from None
    args = {**config["model_args"], **(model_args or {})}
    try:
        state = load_state_file(directory / WEIGHTS)
    except Exception as e:  # noqa: BLE001 - WeightsNotFoundError or a decoding error
        raise CheckpointError(f"{directory / WEIGHTS}: {e}") from None
    try:
        model = create_model(config["model"], vocab=vocab, text_spec=config.get("text_spec") or None, **args)
        model.load_state_dict(state, strict=True)
    except (KeyError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{directory}: export does not rebuild its model ({str(e).splitlines()[0][:200]})") from None
    model.eval()
    return model

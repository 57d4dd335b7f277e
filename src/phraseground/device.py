"""One meaning of ``--device`` / ``device=`` for every command and API: auto, cpu, cuda, cuda:N."""
from __future__ import annotations

import os

import torch

from .errors import ConfigError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """The torch device a name stands for.

    ``auto`` (or None) is CUDA when a GPU is present, else the CPU. ``cuda`` under torchrun
    (``LOCAL_RANK`` set) is ``cuda:LOCAL_RANK``, so every process of a job takes its own GPU;
    ``cuda:N`` is taken as given. Asking for CUDA without a GPU is a ConfigError.
    """
    if isinstance(device, torch.device):
        return device
    name = (device or "auto").strip().lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r}: CUDA is not available on this machine (use --device cpu or auto)")
        if name == "cuda" and "LOCAL_RANK" in os.environ:
            name = f"cuda:{int(os.environ['LOCAL_RANK'])}"
        try:
            d = torch.device(name)
        except RuntimeError:
            raise ConfigError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
        if d.index is not None and d.index >= torch.cuda.device_count():
            raise ConfigError(f"device {device!r}: only {torch.cuda.device_count()} GPU(s) present")
        return d
    raise ConfigError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N")

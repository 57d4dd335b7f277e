"""One registry, one factory: models are built by name from a config dataclass."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from ..errors import ConfigError
from .base import GroundingModel

_REGISTRY: dict[str, tuple[type[GroundingModel], type]] = {}


def register_model(name: str, config_cls: type) -> Callable[[type[GroundingModel]], type[GroundingModel]]:
    """Class decorator: register a GroundingModel subclass under ``name`` with its config dataclass."""

    def wrap(cls: type[GroundingModel]) -> type[GroundingModel]:
        cls.model_name = name
        _REGISTRY[name] = (cls, config_cls)
        return cls

    return wrap


MODEL_MODULES = ("mlmcs", "dsve", "attnreg")


def _ensure_loaded() -> None:
    import importlib

    for module in MODEL_MODULES:  # importing a model module registers it
        importlib.import_module(f"{__package__}.{module}")


def list_models() -> list[str]:
    _ensure_loaded()
    return sorted(_REGISTRY)


def model_config_class(name: str) -> type:
    _ensure_loaded()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name][1]


def build_config(name: str, values: dict[str, Any] | None = None) -> Any:
    """Config dataclass of ``name`` from a plain dict, rejecting unknown keys."""
    cls = model_config_class(name)
    values = dict(values or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown {name} option(s) {unknown}; known: {sorted(known)}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"invalid {name} config: {e}") from None


def create_model(name: str, vocab: list[str] | None = None, **overrides: Any) -> GroundingModel:
    """Build model ``name`` with random trainable weights (and its declared frozen parts).

    Args:
        vocab: word list for models with learned word embeddings (``Vocab`` order).
        overrides: config fields.
    """
    cfg = build_config(name, overrides)
    cls = _REGISTRY[name][0]
    return cls(cfg, vocab=vocab)

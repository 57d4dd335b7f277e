"""One registry, one factory: models are built by name from a config dataclass."""
from __future__ import annotations

from typing import Any, Callable

from ..errors import ConfigError
from ..schema import from_data, to_data
from .base import GroundingModel

_REGISTRY: dict[str, tuple[type[GroundingModel], type]] = {}


def register_model(name: str, config_cls: type) -> Callable[[type[GroundingModel]], type[GroundingModel]]:
    """Class decorator: register a GroundingModel subclass under ``name`` with its config dataclass."""

    def wrap(cls: type[GroundingModel]) -> type[GroundingModel]:
        cls.model_name = name
        _REGISTRY[name] = (cls, config_cls)
        return cls

    return wrap


#: modules of this package that hold no model (every other module is imported: importing a
#: model module registers it, so a new model is one new file, ``models/<name>.py``)
SUPPORT_MODULES = ("base", "registry", "checkpoint", "text_factory", "sru", "box_loss")


def _ensure_loaded() -> None:
    import importlib
    import pkgutil

    from . import __path__ as package_path

    for info in pkgutil.iter_modules(package_path):
        if info.name not in SUPPORT_MODULES and not info.name.startswith("_"):
            importlib.import_module(f"{__package__}.{info.name}")


def list_models() -> list[str]:
    _ensure_loaded()
    return sorted(_REGISTRY)


def model_config_class(name: str) -> type:
    _ensure_loaded()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name][1]


def model_class(name: str) -> type[GroundingModel]:
    """The registered class of ``name`` (its ``supervision`` says how it trains: "weak", "full",
    or "none" for models that need no training, such as ``cam``)."""
    model_config_class(name)
    return _REGISTRY[name][0]


def build_config(name: str, values: Any = None, path: str = "model_args") -> Any:
    """Config dataclass of ``name`` from a plain dict (or an instance), each value converted
    by its annotation; unknown keys, wrong types and bad values are ConfigErrors naming the key."""
    return from_data(model_config_class(name), values, path)


def create_model(name: str, vocab: list[str] | None = None, config: Any = None,
                 text_spec: dict[str, Any] | None = None, **overrides: Any) -> GroundingModel:
    """Build model ``name`` with random trainable weights (and its declared frozen parts).

    Args:
        vocab: word list for models with learned word embeddings (``Vocab`` order).
        config: the model's config (dataclass or dict); ``overrides`` are applied on top.
        text_spec: what ``model.text_spec()`` returned (from a checkpoint): pretrained text
            encoders are then built with placeholder weights, without reading their files.
        overrides: config fields.
    """
    values = to_data(config) if config is not None else {}
    cfg = build_config(name, {**(values or {}), **overrides})
    cls = _REGISTRY[name][0]
    return cls(cfg, vocab=vocab, text_spec=text_spec)

"""Typed configuration: plain data (YAML, ``--set`` overrides, a checkpoint) -> dataclasses.

Every config section (``model_args`` of each model, ``data``, ``train``) is a dataclass; its
annotations say what each value must be. :func:`from_data` converts values by those
annotations (``"1e-4"`` -> ``1e-4`` for a float: YAML 1.1 reads a number without a dot as a
string) and rejects unknown keys and wrong types with the key path, e.g.
``config: train.epochs: expected int, got 'abc'``, before anything else happens.

Supported annotations: ``int``, ``float``, ``str``, ``bool``, ``list[T]``, ``tuple[T, ...]``,
``dict`` / ``dict[str, Any]`` (free-form options), ``X | None``, ``Literal[...]``, ``Any`` and
nested dataclasses. A dataclass may define ``validate(self)`` for checks across fields; a
:class:`ConfigError` it raises is reported under the section's key path.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from .errors import ConfigError

__all__ = ["from_data", "to_data", "convert"]

#: old option names -> new ones (rejected with a hint, so old configs fail clearly)
RENAMED: dict[str, str] = {"levels": "taps", "tap": "taps", "text_dim": "word_dim"}


def _fail(path: str, message: str) -> ConfigError:
    return ConfigError(f"config: {path}: {message}" if path else f"config: {message}")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def convert(value: Any, annotation: Any, path: str) -> Any:
    """``value`` converted to ``annotation``; ConfigError naming ``path`` when it cannot be."""
    origin = get_origin(annotation)
    if annotation is Any or annotation is typing.Any:
        return value
    if origin in (Union, types.UnionType):
        options = get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return convert(value, option, path)
            except ConfigError as e:
                errors.append(str(e))
        names = " or ".join(_name(o) for o in options)
        raise _fail(path, f"expected {names}, got {_show(value)}")
    if origin is Literal:
        allowed = get_args(annotation)
        if value not in allowed:
            raise _fail(path, f"expected one of {list(allowed)}, got {_show(value)}")
        return value
    if dataclasses.is_dataclass(annotation):
        return from_data(annotation, value, path)
    if annotation is bool:
        if not isinstance(value, bool):
            raise _fail(path, f"expected bool (true/false), got {_show(value)}")
        return value
    if annotation is int:
        return _to_int(value, path)
    if annotation is float:
        return _to_float(value, path)
    if annotation is str:
        if not isinstance(value, str):
            raise _fail(path, f"expected str, got {_show(value)} (quote it)")
        return value
    if annotation is list or origin is list or annotation is tuple or origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _fail(path, f"expected a list, got {_show(value)}")
        args = [a for a in get_args(annotation) if a is not Ellipsis]
        item = args[0] if args else Any
        out = [convert(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if (annotation is tuple or origin is tuple) else out
    if annotation is dict or origin is dict:
        if not isinstance(value, dict):
            raise _fail(path, f"expected a mapping, got {_show(value)}")
        args = get_args(annotation)
        if args and args[0] is str and any(not isinstance(k, str) for k in value):
            raise _fail(path, "mapping keys must be strings")
        return {k: convert(v, args[1], _join(path, str(k))) if args else v for k, v in value.items()}
    raise TypeError(f"schema: unsupported annotation {annotation!r} at {path}")


def _name(annotation: Any) -> str:
    return "null" if annotation is type(None) else getattr(annotation, "__name__", str(annotation))


def _to_int(value: Any, path: str) -> int:
    if isinstance(value, bool):
        raise _fail(path, f"expected int, got {_show(value)}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            try:
                number = float(value)
            except ValueError:
                number = math.nan
            if math.isfinite(number) and number.is_integer():
                return int(number)
    raise _fail(path, f"expected int, got {_show(value)}")


def _to_float(value: Any, path: str) -> float:
    if isinstance(value, bool):
        raise _fail(path, f"expected float, got {_show(value)}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            pass
    raise _fail(path, f"expected float, got {_show(value)}")


def from_data(cls: type, values: Any, path: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping (or return an instance of it unchanged after its
    ``validate``), converting each value by its annotation.

    Raises:
        ConfigError: ``config: <path>.<key>: ...`` for an unknown key (with the likely intended
            one), a value of the wrong type, or a failed ``validate``.
    """
    if isinstance(values, cls):
        values = to_data(values)
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise _fail(path, f"expected a mapping of options, got {_show(values)}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in values.items():
        where = _join(path, str(key))
        if key not in fields:
            if key in RENAMED and RENAMED[key] in fields:
                raise _fail(where, f"renamed: use {_join(path, RENAMED[key])}")
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise _fail(where, f"unknown option; {hint}known: {', '.join(sorted(fields))}")
        kwargs[key] = convert(value, hints[key], where)
    try:
        obj = cls(**kwargs)
        if hasattr(obj, "validate"):
            obj.validate()
    except ConfigError as e:
        message = str(e)
        if message.startswith("config:"):
            raise
        field, sep, rest = message.partition(": ")
        if sep and field in fields:  # "<field>: <problem>" -> the field's key path
            raise _fail(_join(path, field), rest) from None
        raise _fail(path, message) from None
    return obj


def to_data(obj: Any) -> Any:
    """A dataclass (tree) as plain dicts and lists (YAML/JSON/checkpoint ready)."""
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj

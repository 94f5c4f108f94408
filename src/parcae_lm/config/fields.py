"""The type check every config dataclass runs on itself: each field's value against its annotation.

Parsed configs (YAML, flags) are typed by jsonargparse already; this catches what reaches a dataclass any
other way — a `config.json` read from disk, or a dataclass built in code — before a wrong type turns into
a TypeError deep inside the model, or a NaN into a silently wrong run. Floats must be finite.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
import types
import typing
from typing import Any

from parcae_lm.errors import ConfigError


def check_types(obj: Any, prefix: str = "") -> None:
    """Raise ConfigError naming `prefix + field` unless every field of dataclass `obj` holds a value of its
    annotated type (bool is not an int, an int is a float, floats are finite)."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        value, hint = getattr(obj, f.name), hints[f.name]
        if not _matches(value, hint):
            raise ConfigError(f"{prefix}{f.name} must be {_describe(hint)}, got {value!r}")
        if not _finite(value):
            raise ConfigError(f"{prefix}{f.name} must be finite, got {value!r}")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _matches(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if origin is list:
        return isinstance(value, list) and all(_matches(v, args[0]) for v in value)
    if origin is tuple:
        return (
            isinstance(value, tuple | list)
            and len(value) == len(args)
            and all(_matches(v, a) for v, a in zip(value, args))
        )
    if origin is dict:
        return isinstance(value, dict)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list | tuple):
        return all(_finite(v) for v in value)
    return True


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is type(None):
        return "null"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is list:
        return f"a list of {_describe(args[0])} values"
    if origin is tuple:
        return f"a list of {len(args)} values ({', '.join(_describe(a) for a in args)})"
    if origin is dict:
        return "a mapping"
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return "one of " + ", ".join(str(m.value) for m in hint)
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))

"""Type checks of config values against their dataclass annotations (used by :mod:`genhancer.config`).

``coerce(value, annotation, where)`` returns the value as the annotation's type or raises a
one-line :class:`~genhancer.errors.ConfigError`; ``check_range`` applies a field's choices /
bounds metadata. Kept apart from the dataclasses so the config module stays readable.
"""

from __future__ import annotations

import math
import types
import typing
from typing import Any

from genhancer.errors import ConfigError


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


class _NonFinite(ConfigError):
    """A number that is nan or infinite: no config field accepts one."""


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against annotation ``tp``; allow int -> float and str digits for str stage."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return coerce(value, arg, where)
            except _NonFinite:
                raise  # the truer message than "expected float or null"
            except ConfigError:
                continue
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{where}: expected null, got {value!r}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
        (inner,) = typing.get_args(tp)
        return [coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML reads `1e-3` (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(number):
            # No field means anything by nan or inf (.inf, .nan, "nan", "1e999" all land here).
            raise _NonFinite(f"{where}: expected a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int) and not isinstance(value, bool):  # `stage: 1` in YAML
            return str(value)
        if isinstance(value, bool):  # a YAML file's `no` / `off` / `yes` / `on` (overrides keep the text)
            raise ConfigError(f"{where}: expected a string, got {value!r} (YAML reads no, off, yes and on as "
                              "booleans; quote the word, e.g. \"no\")")
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise ConfigError(f"{where}: unsupported type {tp}")


def check_range(value: Any, meta: dict, where: str) -> None:
    if value is None:
        return
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{where}: expected one of {', '.join(map(str, choices))}; got {value!r}")
    lo, hi = meta.get("lo"), meta.get("hi")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if lo is not None and value < lo:
            raise ConfigError(f"{where}: expected a value >= {lo}, got {value!r}")
        if hi is not None and value > hi:
            raise ConfigError(f"{where}: expected a value <= {hi}, got {value!r}")

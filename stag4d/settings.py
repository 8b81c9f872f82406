"""How a component declares its settings: a dataclass whose fields are made with :func:`setting`.

Each component owns one such dataclass (its ``Config``, or the component itself when it is a
plain strategy object, as gsplat's strategies); the run config (:mod:`stag4d.config`) composes
them. A field carries its default (written only here), its meaning and its allowed range::

    @dataclass
    class ModelConfig:
        num_pts: int = setting(10000, "initial Gaussians, uniform in a ball", ge=1)

:func:`check_settings` checks every field of a config against its declared range (numbers must
be finite unless ``allow_inf``) and raises a one-line :class:`ConfigError` that names the key.
This module is light: no torch, no component imports.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterator, Optional, Sequence

from omegaconf import OmegaConf

from stag4d.errors import UserError

REQUIRED = "???"  # the default of a setting that has none (OmegaConf's MISSING)


class ConfigError(UserError):
    """A bad configuration file, override or value (one line naming the setting and the fix)."""


def setting(default: Any, help: str = "", *, ge: Optional[float] = None, gt: Optional[float] = None,
            le: Optional[float] = None, lt: Optional[float] = None, choices: Optional[Sequence[Any]] = None,
            allow_inf: bool = False, min_items: Optional[int] = None) -> Any:
    """A dataclass field with its default, help text and allowed values.

    Args:
        default: the default; a list is copied for each instance.
        help: one line for ``--help-config`` and the error messages.
        ge, gt, le, lt: bounds of a number (or of every number in a list); None = unbounded.
        choices: the allowed values (strings) of the field.
        allow_inf: accept +-inf (NaN is never accepted).
        min_items: the least number of entries of a list.
    """
    metadata = {"help": help, "ge": ge, "gt": gt, "le": le, "lt": lt, "choices": tuple(choices) if choices else None,
                "allow_inf": allow_inf, "min_items": min_items}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: _copy(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _copy(value: Any) -> Any:
    if isinstance(value, list):
        return [_copy(v) for v in value]
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    return value


def describe(field: dataclasses.Field) -> str:
    """The help text of a field made by :func:`setting` ("" otherwise)."""
    return str(field.metadata.get("help", ""))


def _numbers(value: Any) -> Iterator[Any]:
    if isinstance(value, (list, tuple)):
        for item in value:
            yield from _numbers(item)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield value


def range_text(meta: dict) -> str:
    """The declared range of a field as text, e.g. ">= 1" or "in (0, 180)"."""
    low = (f"[{meta['ge']:g}" if meta.get("ge") is not None else f"({meta['gt']:g}" if meta.get("gt") is not None
           else None)
    high = (f"{meta['le']:g}]" if meta.get("le") is not None else f"{meta['lt']:g})" if meta.get("lt") is not None
            else None)
    if low and high:
        return f"in {low}, {high}"
    if low:
        return (">= " if low[0] == "[" else "> ") + low[1:]
    if high:
        return ("<= " if high[-1] == "]" else "< ") + high[:-1]
    return "finite"


def check_value(key: str, value: Any, meta: dict) -> None:
    """Raise ConfigError when ``value`` is outside the range declared in ``meta`` (a field's metadata)."""
    if value is None:
        return
    choices = meta.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"{key}={value} is not one of {', '.join(map(str, choices))}")
    min_items = meta.get("min_items")
    if min_items is not None and isinstance(value, (list, tuple)) and len(value) < min_items:
        raise ConfigError(f"{key}={list(value)} needs at least {min_items} entr{'y' if min_items == 1 else 'ies'}")
    for number in _numbers(value):
        number = float(number)
        bad = math.isnan(number) or (math.isinf(number) and not meta.get("allow_inf"))
        for bound, ok in (("ge", lambda b: number >= b), ("gt", lambda b: number > b),
                          ("le", lambda b: number <= b), ("lt", lambda b: number < b)):
            if meta.get(bound) is not None and not ok(meta[bound]):
                bad = True
        if bad:
            shown = list(value) if isinstance(value, (list, tuple)) else value
            raise ConfigError(f"{key}={shown} must be {range_text(meta)}" + (" (every entry)" if shown is not value else ""))


def check_settings(config: Any) -> None:
    """Check every field of the dataclass ``config`` (and of nested dataclasses) against its range,
    then call its ``check()`` method when it has one (rules that involve several fields).

    Error messages name the key as users write it (the field name, see :mod:`stag4d.config`).
    """
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            check_settings(value)
        elif field.metadata:
            check_value(field.name, value, dict(field.metadata))
    check = getattr(config, "check", None)
    if callable(check):
        check()


def fields_help(config_cls: type) -> list[tuple[str, Any, str]]:
    """(name, default, help) of every field of a settings dataclass, in declaration order."""
    rows = []
    for field in dataclasses.fields(config_cls):
        if field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = field.default_factory()  # type: ignore[misc]
        else:
            default = "(required)"
        rows.append((field.name, default, describe(field)))
    return rows


def to_container(config: Any) -> dict[str, Any]:
    """A settings dataclass (nested ones too) as plain dicts and lists (for checkpoints)."""
    return OmegaConf.to_container(OmegaConf.structured(config), resolve=True)  # type: ignore[return-value]


def to_yaml(config: Any) -> str:
    """A settings dataclass as YAML text (what a saved run's ``config.yaml`` holds)."""
    return OmegaConf.to_yaml(OmegaConf.structured(config), resolve=True)


__all__ = ["REQUIRED", "ConfigError", "check_settings", "check_value", "describe", "fields_help", "range_text", "setting",
           "to_container", "to_yaml"]

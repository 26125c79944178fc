"""A small schema engine: frozen dataclasses declare settings, this module reads TOML into them.

Every setting is a dataclass field made with `setting()`, which carries its default, one line of
help and an optional validator.  `build()` turns a TOML table into the dataclass, refusing unknown
keys and wrong types with a message that names the key, the value and what was expected.  The same
declarations render the commented reference file (`render_defaults`), so the documentation of the
settings cannot drift from the code.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeVar, get_args, get_origin

T = TypeVar("T")
Validator = Callable[[Any], str | None]  # returns an error text, or None when the value is good


class ConfigError(ValueError):
    """A configuration value is wrong.  The message names the key, the value and what was expected."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(f"{key}: {message}" if key else message)


def setting(default: Any, help: str, check: Validator | None = None) -> Any:
    """Declare one setting: its default, one line of help, and optionally a validator."""
    meta = {"help": help, "check": check}
    if isinstance(default, list | dict | set):
        raise TypeError("use a tuple or a frozen mapping as a default")
    if isinstance(default, Mapping):  # a read-only mapping, but dataclasses want a factory for it
        frozen = types.MappingProxyType(dict(default))
        return dataclasses.field(default_factory=lambda: frozen, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def section(cls: type[T], help: str) -> Any:
    """Declare a nested section whose settings are all defaulted."""
    return dataclasses.field(default_factory=cls, metadata={"help": help, "check": None})


# Validators shared by every settings class.  Each returns an error text, or None when the value is good.


def positive(value: float) -> str | None:
    return None if value > 0 else "expected a number greater than zero"


def not_negative(value: float) -> str | None:
    return None if value >= 0 else "expected zero or more"


def ip_networks(values: tuple[str, ...]) -> str | None:
    for v in values:
        try:
            ipaddress.ip_network(v, strict=False)
        except ValueError:
            return f"{v!r} is not an IP network (e.g. 192.0.2.0/24 or 2001:db8::/32)"
    return None


def internal(default: Any) -> Any:
    """A dataclass field filled in by code, never read from the file (unknown there)."""
    return dataclasses.field(default=default, metadata={"internal": True})


def help_of(field: dataclasses.Field[Any]) -> str:
    return str(field.metadata.get("help", ""))


def describe(tp: Any) -> str:
    """A human name for a type, used in 'expected ...' messages."""
    if tp is bool:
        return "true or false"
    if tp is int:
        return "a whole number"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin is tuple:
        return f"a list of {describe(get_args(tp)[0])}s"
    if origin in (dict, Mapping, typing.Mapping):
        return f"a table of {describe(get_args(tp)[1])}s"
    if dataclasses.is_dataclass(tp):
        return "a table"
    if origin in (types.UnionType, typing.Union):
        return " or ".join(describe(a) for a in get_args(tp))
    return str(tp)


def convert(tp: Any, value: Any, key: str) -> Any:
    """Check `value` against type `tp` and return it in the dataclass's form (lists become tuples)."""

    def wrong() -> ConfigError:
        return ConfigError(key, f"{value!r} is not valid: expected {describe(tp)}")

    origin = get_origin(tp)
    if tp is bool:
        if not isinstance(value, bool):
            raise wrong()
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong()
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            raise wrong()
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise wrong()
        return value
    if origin is Literal:
        if value not in get_args(tp):
            raise wrong()
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise wrong()
        item = get_args(tp)[0]
        return tuple(convert(item, v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin in (dict, Mapping, typing.Mapping):
        if not isinstance(value, dict):
            raise wrong()
        vt = get_args(tp)[1]
        return types.MappingProxyType({k: convert(vt, v, f"{key}.{k}") for k, v in value.items()})
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            raise wrong()
        return build(tp, value, key)
    raise TypeError(f"settings type {tp!r} at {key} is not supported")


def build(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    """Build dataclass `cls` from a TOML table, validating every key."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"[{prefix}]" if prefix else "the top level"
        known = ", ".join(sorted(fields))
        raise ConfigError(_join(prefix, unknown[0]), f"unknown key in {where} (known keys: {known})")
    values: dict[str, Any] = {}
    for name, value in data.items():
        key = _join(prefix, name)
        converted = convert(hints[name], value, key)
        check = fields[name].metadata.get("check")
        if check is not None:
            problem = check(converted)
            if problem:
                raise ConfigError(key, f"{value!r} is not valid: {problem}")
        values[name] = converted
    return cls(**values)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def toml_value(value: Any) -> str:
    """Render a default as TOML (only the shapes settings use)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, tuple | list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot render {value!r} as TOML")


def render_section(obj: Any, name: str, help: str = "") -> list[str]:
    """Commented TOML for one settings dataclass and the sections nested in it."""
    lines: list[str] = []
    nested: list[tuple[str, Any, str]] = []
    if help:
        lines.append(f"# {help}")
    lines.append(f"[{name}]")
    for field in dataclasses.fields(obj):
        value = getattr(obj, field.name)
        if dataclasses.is_dataclass(value):
            nested.append((f"{name}.{field.name}", value, help_of(field)))
            continue
        lines.append(f"# {help_of(field)}")
        lines.append(f"{field.name} = {toml_value(value)}")
    for sub_name, sub, sub_help in nested:
        lines.append("")
        lines.extend(render_section(sub, sub_name, sub_help))
    return lines

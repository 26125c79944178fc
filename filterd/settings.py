"""A small schema engine: frozen dataclasses declare settings, this module reads TOML into them.

Every setting is a dataclass field made with `setting()`, which carries its default, one line of
help and an optional validator.  `build()` turns a TOML table into the dataclass, refusing unknown
keys and wrong types with a message that names the key, the value and what was expected -- all of
them in one pass (`ConfigErrors`, gathered by a `Collector`), so an admin fixes a file in one go.
The same declarations render the commented reference file (`render_defaults`), so the
documentation of the settings cannot drift from the code, and the effective configuration as
plain data (`as_table`, `changed`, `render_table`: ``filterctl config show``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import ipaddress
import math
import re
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, get_args, get_origin

T = TypeVar("T")
Validator = Callable[[Any], str | None]  # returns an error text, or None when the value is good


@dataclass(frozen=True)
class Problem:
    """One thing wrong (or doubtful) in a configuration: the key (section.key) and what about it."""

    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}" if self.key else self.message


class ConfigError(ValueError):
    """A configuration value is wrong.  The message names the key, the value and what was expected."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.detail = message
        super().__init__(f"{key}: {message}" if key else message)

    @property
    def problems(self) -> tuple[Problem, ...]:
        """Every error this exception stands for (one here; several in `ConfigErrors`)."""
        return (Problem(self.key, self.detail),)


class ConfigErrors(ConfigError):
    """Several configuration errors, found in one pass: an admin fixes them all in one go instead
    of meeting them one restart at a time.  `where` (the file) prefixes the message."""

    def __init__(self, problems: Sequence[Problem], where: str = "") -> None:
        self.all = tuple(problems)
        self.where = where
        first = self.all[0]
        super().__init__(first.key, first.message)
        head = f"{where}: " if where else ""
        lines = "".join(f"\n  {p}" for p in self.all)
        self.args = (f"{head}{len(self.all)} errors:{lines}",)

    @property
    def problems(self) -> tuple[Problem, ...]:
        return self.all


class Collector:
    """Gathers the `ConfigError`s of several independent steps, so one pass reports them all."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def add(self, key: str, message: str) -> None:
        self.problems.append(Problem(key, message))

    @contextlib.contextmanager
    def collect(self) -> Iterator[None]:
        """Run the block; a `ConfigError` it raises is recorded and the caller carries on."""
        try:
            yield
        except ConfigError as exc:
            self.problems.extend(exc.problems)

    def raise_if_any(self) -> None:
        """Raise what was gathered: the error itself when there is one, else `ConfigErrors`."""
        if len(self.problems) == 1:
            only = self.problems[0]
            raise ConfigError(only.key, only.message)
        if self.problems:
            raise ConfigErrors(self.problems)


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
        items: dict[str, Any] = {}
        collector = Collector()  # every bad entry of the table, not only the first
        for k, v in value.items():
            with collector.collect():
                items[k] = convert(vt, v, f"{key}.{k}")
        collector.raise_if_any()
        return types.MappingProxyType(items)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            raise wrong()
        return build(tp, value, key)
    raise TypeError(f"settings type {tp!r} at {key} is not supported")


def build(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    """Build dataclass `cls` from a TOML table, validating every key; every error of the table
    (and of the tables nested in it) is reported at once, as `ConfigErrors` when there are several."""
    built, problems = build_partial(cls, data, prefix)
    collector = Collector()
    collector.problems.extend(problems)
    collector.raise_if_any()
    return built


def build_partial(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> tuple[T, list[Problem]]:
    """`build`, returning the problems instead of raising them, with each bad value left at its
    default: the checks across sections still run on the rest (one pass names every mistake)."""
    hints = _type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}  # type: ignore[arg-type]
    collector = Collector()
    for name in sorted(set(data) - set(fields)):
        collector.add(_join(prefix, name), unknown_key_message(name, prefix, fields))
    values: dict[str, Any] = {}
    for name, value in data.items():
        if name not in fields:
            continue
        key = _join(prefix, name)
        with collector.collect():
            converted = convert(hints[name], value, key)
            check = fields[name].metadata.get("check")
            problem = check(converted) if check is not None else None
            if problem:
                raise ConfigError(key, f"{value!r} is not valid: {problem}")
            values[name] = converted
    return cls(**values), collector.problems


_HINTS: dict[type, dict[str, Any]] = {}


def _type_hints(cls: type) -> dict[str, Any]:
    """A settings class's field types, resolved once: resolving them compiles every annotation
    (most of the time a table took), and a configuration builds some classes thousands of times
    (a ``[policy."..."]`` table per domain)."""
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


def unknown_key_message(name: str, prefix: str, known: Mapping[str, Any]) -> str:
    """'unknown key', with the known key it is most likely a typo of (as Postfix's postconf does)."""
    where = f"[{prefix}]" if prefix else "the top level"
    close = difflib.get_close_matches(name, list(known), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown key in {where}{hint} (known keys: {', '.join(sorted(known))})"


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


class Table(dict[str, Any]):
    """A section of the configuration as plain data (`as_table`): rendered as a ``[header]``,
    where a setting whose value is a mapping (``[scores]`` entries, DKIM keys) is a plain dict."""


def as_table(obj: Any) -> Table:
    """A settings dataclass as plain data: tuples become lists, read-only mappings dicts."""
    table = Table()
    for field in dataclasses.fields(obj):
        if field.metadata.get("internal"):
            continue
        table[field.name] = _plain(getattr(obj, field.name))
    return table


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return as_table(value)
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def changed(current: Mapping[str, Any], default: Mapping[str, Any]) -> Table:
    """The settings of `current` whose value differs from `default` (as ``postconf -n`` shows);
    a section with no change is left out."""
    out = Table()
    for key, value in current.items():
        if isinstance(value, Table):
            sub = changed(value, default.get(key, Table()))
            if sub:
                out[key] = sub
        elif key not in default or value != default[key]:
            out[key] = value
    return out


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else toml_value(key)


def render_table(table: Mapping[str, Any], name: str = "") -> list[str]:
    """TOML for plain data: a setting per line, sections (and non-empty mappings) under their
    ``[header]``, shaped like the configuration file so the output reads back as one.  A table
    holding only sections ([checks]) gets no header of its own."""
    scalars: list[str] = []
    nested: list[tuple[str, Mapping[str, Any]]] = []
    for key, value in table.items():
        if isinstance(value, Table) or (isinstance(value, Mapping) and (value or not name)):
            nested.append((f"{name}.{toml_key(key)}" if name else toml_key(key), value))
        else:
            scalars.append(f"{toml_key(key)} = {toml_value(value)}")
    lines = [f"[{name}]", *scalars] if name and (scalars or not nested) else scalars
    for sub, value in nested:
        if lines:
            lines.append("")
        lines.extend(render_table(value, sub))
    return lines


def json_ready(value: Any) -> Any:
    """Plain data for JSON, which has no infinity: ``inf`` thresholds become the string "inf"."""
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, Mapping):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    return value

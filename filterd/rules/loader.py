"""Reading rule files: the shipped set, then the admin's directory over it.

A rule file is TOML; each table is one rule, named by its table name::

    [PHISH_ACCOUNT_SUSPENDED]
    kind = "body"
    pattern = '(?i)your account (?:has been|is|was) (?:suspended|locked)'
    score = 2.5
    description = "says the reader's account is suspended"

Files in a directory are read in name order.  The shipped set may define each name once.  The
admin's directory (``[checks.rules] local_dir``) is read after it: a table that names a shipped
rule and has no ``kind`` changes only that rule's ``score``, ``description`` or ``enabled``; a
table with a ``kind`` defines a new rule, or replaces a shipped one whole.

Everything is checked here, before a single message is looked at: unknown keys, wrong types,
every pattern compiled, every meta's names resolved and the metas searched for cycles.  Each
error is a `RuleError` naming the file and the rule.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filterd.rules import meta
from filterd.rules.engine import compile_pattern
from filterd.rules.helpers import HELPERS
from filterd.settings import ConfigError

KINDS = ("header", "body", "rawbody", "full", "uri", "mime", "meta", "helper")
_COMMON = frozenset({"kind", "score", "description", "enabled"})
_KIND_KEYS: Mapping[str, frozenset[str]] = {
    "header": frozenset({"header", "pattern", "exists", "negate"}),
    "body": frozenset({"pattern"}),
    "rawbody": frozenset({"pattern"}),
    "full": frozenset({"pattern"}),
    "uri": frozenset({"pattern", "hosts"}),
    "mime": frozenset({"content_type", "filename", "extensions", "min_parts", "max_parts"}),
    "meta": frozenset({"expression"}),
    "helper": frozenset({"test"}),  # plus the named helper's own parameters
}
_OVERRIDE_KEYS = frozenset({"score", "description", "enabled"})
_NAME = re.compile(r"^[A-Z_][A-Z0-9_]{0,63}$")
_HEADER_NAME = re.compile(r"^[!-9;-~]+(?::(?:addr|name))?$")
ALL_HEADERS = "ALL"


class RuleError(ConfigError):
    """A rule file is wrong; the message names the file and the rule."""

    def __init__(self, path: Path | str, rule: str, message: str) -> None:
        self.path = str(path)
        self.rule = rule
        super().__init__(f"{path}: rule {rule}" if rule else str(path), message)


@dataclass(frozen=True)
class Rule:
    name: str
    kind: str
    source: str  # the file that defined it (and, after an override, the file that changed it)
    score: float = 1.0
    description: str = ""
    enabled: bool = True
    pattern: str | None = None
    headers: tuple[str, ...] = ()
    exists: bool | None = None
    negate: bool = False
    hosts: tuple[str, ...] = ()
    content_type: str | None = None
    filename: str | None = None
    extensions: tuple[str, ...] = ()
    min_parts: int | None = None
    max_parts: int | None = None
    expression: meta.Expression | None = None
    test: str | None = None
    params: Mapping[str, float] = field(default_factory=dict)

    @property
    def hidden(self) -> bool:
        """A ``__NAME`` rule only feeds metas: never reported, never scored."""
        return self.name.startswith("__")


def load_rules(
    default_dir: Path, local_dir: Path | None = None, reserved: Collection[str] = ()
) -> list[Rule]:
    """Read the shipped directory, then the admin's over it; `reserved` are names other checks use."""
    rules: dict[str, Rule] = {}
    if not default_dir.is_dir():
        raise RuleError(default_dir, "", "rule directory not found")
    for path in _rule_files(default_dir):
        for name, table in _read(path):
            if name in rules:
                raise RuleError(path, name, f"already defined in {rules[name].source}")
            rules[name] = parse_rule(path, name, table, reserved)
    if local_dir is not None:
        if not local_dir.is_dir():
            raise RuleError(local_dir, "", "local rule directory not found")
        seen: dict[str, Path] = {}
        for path in _rule_files(local_dir):
            for name, table in _read(path):
                if name in seen:
                    raise RuleError(path, name, f"already set in {seen[name]}")
                seen[name] = path
                if "kind" in table:
                    rules[name] = parse_rule(path, name, table, reserved)
                elif name in rules:
                    rules[name] = _override(path, rules[name], table)
                else:
                    raise RuleError(path, name, "no such rule to override (a new rule needs a kind)")
    check_metas(rules)
    return list(rules.values())


def _rule_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("*.toml") if p.is_file() and not p.name.startswith("."))


def _read(path: Path) -> Iterable[tuple[str, dict[str, Any]]]:
    try:
        data = tomllib.loads(path.read_text("utf-8"))
    except OSError as exc:
        raise RuleError(path, "", f"cannot read: {exc.strerror}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise RuleError(path, "", f"not valid TOML: {exc}") from exc
    for name, table in data.items():
        if not isinstance(table, dict):
            raise RuleError(path, name, "expected a table [RULE_NAME] holding the rule's keys")
        yield name, table


def parse_rule(path: Path | str, name: str, table: Mapping[str, Any], reserved: Collection[str] = ()) -> Rule:
    """Validate one rule table into a `Rule`, compiling what it matches with."""

    def fail(message: str) -> RuleError:
        return RuleError(path, name, message)

    if not _NAME.match(name):
        raise fail("a rule name is A-Z, 0-9 and _, starting with a letter or _, at most 64 characters")
    if name in reserved:
        raise fail("this name is a symbol of another check; choose another")
    kind = table.get("kind")
    if kind not in KINDS:
        raise fail(f"kind {kind!r} is not one of {', '.join(KINDS)}")
    allowed = _COMMON | _KIND_KEYS[kind]
    if kind == "helper":
        helper = HELPERS.get(table.get("test"))  # type: ignore[arg-type]
        if helper is None:
            raise fail(f"test {table.get('test')!r} is not one of {', '.join(HELPERS)}")
        allowed |= frozenset(helper.params)
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise fail(f"unknown key {unknown[0]!r} for a {kind} rule (known: {', '.join(sorted(allowed))})")
    get = _Getter(table, fail)
    values: dict[str, Any] = {"name": name, "kind": kind, "source": str(path)}
    hidden = name.startswith("__")
    if hidden:
        if "score" in table:
            raise fail("a __ rule only feeds metas and has no score")
        values["score"] = 0.0
    else:
        values["score"] = get.number("score", 1.0)
        if not get.string("description", ""):
            raise fail("description is missing (it is the reason shown in the report)")
    values["description"] = get.string("description", "")
    values["enabled"] = get.boolean("enabled", True)

    if kind in ("body", "rawbody", "full"):
        values["pattern"] = get.pattern("pattern", required=True)
    elif kind == "header":
        headers = get.strings("header", required=True)
        for h in headers:
            if not (h == ALL_HEADERS or _HEADER_NAME.match(h)):
                raise fail(
                    f'header {h!r} is not a header name (or "{ALL_HEADERS}", or Name:addr / Name:name)'
                )
        if ALL_HEADERS in headers and len(headers) > 1:
            raise fail(f'"{ALL_HEADERS}" already means every header; list it alone')
        values["headers"] = headers
        values["pattern"] = get.pattern("pattern")
        if "exists" in table:
            if values["pattern"] is not None:
                raise fail("give either pattern or exists, not both")
            values["exists"] = get.boolean("exists", True)
        elif values["pattern"] is None:
            raise fail("a header rule needs a pattern or exists = true/false")
        values["negate"] = get.boolean("negate", False)
        if values["negate"] and values["pattern"] is None:
            raise fail("negate applies to a pattern")
    elif kind == "uri":
        values["pattern"] = get.pattern("pattern")
        hosts = get.strings("hosts")
        values["hosts"] = tuple(h.lower().strip(".") for h in hosts)
        if (values["pattern"] is None) == (not hosts):
            raise fail("a uri rule needs exactly one of pattern or hosts")
        if any(not h or " " in h or "/" in h for h in values["hosts"]):
            raise fail("hosts are host names such as bit.ly (no scheme, no path)")
    elif kind == "mime":
        values["content_type"] = get.pattern("content_type")
        values["filename"] = get.pattern("filename")
        values["extensions"] = tuple(e.lower().lstrip(".") for e in get.strings("extensions"))
        values["min_parts"] = get.integer("min_parts")
        values["max_parts"] = get.integer("max_parts")
        if not any(k in table for k in _KIND_KEYS["mime"]):
            raise fail(f"a mime rule needs one of {', '.join(sorted(_KIND_KEYS['mime']))}")
    elif kind == "meta":
        source = get.string("expression", None)
        if source is None:
            raise fail("a meta rule needs an expression")
        try:
            values["expression"] = meta.parse(source)
        except meta.MetaSyntaxError as exc:
            raise fail(f"expression: {exc}") from None
        if name in values["expression"].names:
            raise fail("the expression names the rule itself")
    elif kind == "helper":
        values["test"] = table["test"]
        params: dict[str, float] = {}
        for key, spec in HELPERS[table["test"]].params.items():
            value = (
                get.number(key, spec.default) if spec.kind is float else get.integer(key, int(spec.default))
            )
            assert value is not None
            if not spec.low <= value <= spec.high:
                raise fail(f"{key} = {value} is out of range [{spec.low:g}, {spec.high:g}]")
            params[key] = value
        values["params"] = params
    return Rule(**values)


def _override(path: Path, rule: Rule, table: Mapping[str, Any]) -> Rule:
    def fail(message: str) -> RuleError:
        return RuleError(path, rule.name, message)

    unknown = sorted(set(table) - _OVERRIDE_KEYS)
    if unknown:
        raise fail(
            f"unknown key {unknown[0]!r} in an override (an override sets score, description or "
            "enabled; give a kind to replace the rule whole)"
        )
    get = _Getter(table, fail)
    if rule.hidden and "score" in table:
        raise fail("a __ rule only feeds metas and has no score")
    return dataclasses.replace(
        rule,
        score=get.number("score", rule.score),
        description=get.string("description", rule.description) or rule.description,
        enabled=get.boolean("enabled", rule.enabled),
        source=f"{rule.source}, {path}",
    )


def check_metas(rules: Mapping[str, Rule]) -> None:
    """Every name a meta uses must exist; metas must not depend on themselves through others."""
    for rule in rules.values():
        if rule.expression is None:
            continue
        for used in sorted(rule.expression.names):
            if used not in rules:
                raise RuleError(rule.source, rule.name, f"expression names unknown rule {used}")
    for cycle_start in rules:
        cycle = _find_cycle(rules, cycle_start)
        if cycle:
            first = rules[cycle[0]]
            raise RuleError(first.source, first.name, "metas depend on each other: " + " -> ".join(cycle))


def _find_cycle(rules: Mapping[str, Rule], start: str) -> list[str] | None:
    """A dependency path from `start` back to itself, if there is one."""
    path: list[str] = []
    done: set[str] = set()

    def visit(name: str) -> list[str] | None:
        if name in path:
            return [*path[path.index(name) :], name]
        if name in done:
            return None
        expr = rules[name].expression
        if expr is None:
            return None
        path.append(name)
        for used in sorted(expr.names):
            found = visit(used)
            if found:
                return found
        path.pop()
        done.add(name)
        return None

    return visit(start)


def meta_order(rules: Iterable[Rule]) -> list[Rule]:
    """The meta rules, each after every meta it uses (the loader has refused cycles)."""
    metas = {r.name: r for r in rules if r.expression is not None}
    ordered: list[Rule] = []
    placed: set[str] = set()

    def place(name: str) -> None:
        if name in placed or name not in metas:
            return
        placed.add(name)
        expr = metas[name].expression
        assert expr is not None
        for used in sorted(expr.names):
            place(used)
        ordered.append(metas[name])

    for name in metas:
        place(name)
    return ordered


class _Getter:
    """Typed access to a rule table; a wrong type raises the rule's error."""

    def __init__(self, table: Mapping[str, Any], fail: Any) -> None:
        self.table = table
        self.fail = fail

    def _raw(self, key: str, required: bool) -> Any:
        if key not in self.table:
            if required:
                raise self.fail(f"{key} is missing")
            return None
        return self.table[key]

    def string(self, key: str, default: str | None) -> str | None:
        value = self._raw(key, False)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self.fail(f"{key} = {value!r}: expected a string")
        return value

    def strings(self, key: str, required: bool = False) -> tuple[str, ...]:
        value = self._raw(key, required)
        if value is None:
            return ()
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
            raise self.fail(f"{key} = {value!r}: expected a string or a list of strings")
        return tuple(value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self._raw(key, False)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.fail(f"{key} = {value!r}: expected true or false")
        return value

    def number(self, key: str, default: float) -> float:
        value = self._raw(key, False)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise self.fail(f"{key} = {value!r}: expected a number")
        return float(value)

    def integer(self, key: str, default: int | None = None) -> int | None:
        value = self._raw(key, False)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self.fail(f"{key} = {value!r}: expected a whole number, zero or more")
        return value

    def pattern(self, key: str, required: bool = False) -> str | None:
        value = self._raw(key, required)
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise self.fail(f"{key} = {value!r}: expected a regular expression (a string)")
        try:
            compile_pattern(value)
        except ValueError as exc:
            raise self.fail(f"{key}: bad regular expression {value!r}: {exc}") from None
        return value

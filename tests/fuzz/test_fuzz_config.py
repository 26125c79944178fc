"""Fuzzing the configuration loader: whatever the file holds, the only error is `ConfigError`.

Two kinds of input: TOML text glued from the real section and key names, plausible and odd values
and junk (through `load_config`, which also meets invalid TOML and invalid UTF-8); and parsed
documents built from the declared schema with values of every TOML type (through `parse_config`
and then `Pipeline.from_config`, as `filterctl config check` and the daemon's start do).  A
`ConfigError` must name what was wrong; any other exception fails the test."""

from __future__ import annotations

import dataclasses
import datetime
import math
import tempfile
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from hypothesis import given, settings
from hypothesis import strategies as st

from filterd.config import Config, known_symbols, load_config, parse_config, registered_checks
from filterd.pipeline import Pipeline
from filterd.settings import ConfigError
from tests.fuzz.harness import examples, exercise


def schema() -> dict[str, dict[str, tuple[Any, Any]]]:
    """Section name -> {key: (type, default)} for every declared section, [checks.NAME] included."""
    defaults = parse_config({})
    sections = [
        (f.name, getattr(defaults, f.name))
        for f in dataclasses.fields(Config)
        if not f.metadata.get("internal") and f.name != "scores"
    ]
    sections += [(f"checks.{c.name}", defaults.check_settings(c.name)) for c in registered_checks()]
    out: dict[str, dict[str, tuple[Any, Any]]] = {}
    for name, section in sections:
        hints = typing.get_type_hints(type(section))
        out[name] = {g.name: (hints[g.name], getattr(section, g.name)) for g in dataclasses.fields(section)}
    return out


SCHEMA = schema()
SYMBOLS = sorted(known_symbols())

scalars = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(
        ["", "unix:/x", "inet:25@127.0.0.1", "0660", "redis://127.0.0.1:1/0", "10.0.0.0/8", "::1"]
    ),
    st.datetimes(),
    st.dates(),
    st.times(),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


def plausible(tp: Any, default: Any) -> st.SearchStrategy[Any]:
    """Values of the setting's own type: they pass the type check and reach the validators."""
    if typing.get_origin(tp) is Literal:
        return st.sampled_from(typing.get_args(tp))
    if isinstance(default, bool):
        return st.booleans()
    if isinstance(default, int):
        return st.integers(-(2**40), 2**40)
    if isinstance(default, float):
        return st.floats(allow_nan=False, allow_infinity=True)
    if isinstance(default, str):
        return st.text(max_size=30)
    if isinstance(default, tuple):
        return st.lists(
            st.text(max_size=20) | st.lists(st.floats(allow_nan=False, allow_infinity=True), max_size=3),
            max_size=4,
        )
    if isinstance(default, Mapping):
        return st.dictionaries(st.text(max_size=10), st.floats(), max_size=3)
    return values


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    """A parsed TOML document: some sections, some of their keys, plausible or any values."""
    doc: dict[str, Any] = {}
    for name in draw(st.lists(st.sampled_from(sorted(SCHEMA)), max_size=4, unique=True)):
        table: dict[str, Any] = {}
        keys = SCHEMA[name]
        for key in draw(st.lists(st.sampled_from(sorted(keys)), max_size=4, unique=True)):
            # mostly values of the right type, so that the validators and the checks' start are reached
            table[key] = draw(values if draw(st.integers(0, 4)) == 3 else plausible(*keys[key]))
        if draw(st.integers(0, 7)) == 5:
            table[draw(st.text(max_size=10))] = draw(values)  # an unknown key, sometimes
        target = doc
        *parents, leaf = name.split(".")
        for p in parents:
            target = target.setdefault(p, {})
        target[leaf] = table
    if draw(st.booleans()):
        symbol = st.text(max_size=10) if draw(st.integers(0, 4)) == 3 else st.sampled_from(SYMBOLS)
        doc["scores"] = draw(st.dictionaries(symbol, st.floats() | values, max_size=3))
    if draw(st.integers(0, 9)) == 7:
        doc[draw(st.sampled_from(["checks", "milter", "scores", "dns"]))] = draw(
            values
        )  # a section of the wrong shape
    return doc


def toml_atom() -> st.SearchStrategy[str]:
    names = sorted({k for keys in SCHEMA.values() for k in keys})  # every key of every section
    headers = [f"[{n}]" for n in SCHEMA] + ["[scores]", "[checks]", "[[milter]]", "[checks.nosuch]"]
    literals = [
        "1", "-1", "0", "1e999", "inf", "nan", "-inf", "true", "false", '""', '"x"', "'0660'", "[]",
        "[[0.0, -2.0], [0.5]]", "[1, 2]", '["a", 1]', "{}", "{a = 1}", "1979-05-27T07:32:00Z",
        "07:32:00", '"""\nmulti\n"""', "0x10", "1_000",
    ]  # fmt: skip
    line = st.builds(
        lambda k, v: f"{k} = {v}",
        st.sampled_from(names) | st.text(max_size=8),
        st.sampled_from(literals) | st.text(max_size=12),
    )
    return st.one_of(
        st.sampled_from(headers), line, st.text(max_size=20), st.sampled_from(["\n", "=", "[", "]", '"', "#"])
    )


toml_texts = st.lists(toml_atom(), max_size=20).map("\n".join)


def load_text(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "filterd.toml"
        path.write_bytes(data)
        try:
            load_config(path)
        except ConfigError as exc:
            assert str(exc).startswith(str(path)), f"the message names the file: {exc}"


def build_document(doc: dict[str, Any]) -> None:
    try:
        config = parse_config(doc)
    except ConfigError as exc:
        assert str(exc), "a ConfigError says what is wrong"
        return
    for check in ("dkim_sign", "antivirus"):  # they read key files / reach clamd at start: out of scope
        config = dataclasses.replace(
            config,
            checks=dataclasses.replace(
                config.checks, **{check: dataclasses.replace(config.check_settings(check), enabled=False)}
            ),
        )
    try:
        Pipeline.from_config(config).close()
    except ConfigError as exc:
        assert str(exc)


@settings(max_examples=examples(300))
@given(toml_texts)
def test_any_toml_text_gives_a_config_or_a_config_error(text: str) -> None:
    data = text.encode("utf-8", "surrogatepass")
    exercise("config_text", data, lambda: load_text(data))


@settings(max_examples=examples(60))
@given(st.binary(max_size=200))
def test_any_bytes_give_a_config_or_a_config_error(data: bytes) -> None:
    exercise("config_bytes", data, lambda: load_text(data))


@settings(max_examples=examples(250))
@given(documents())
def test_any_document_gives_a_config_or_a_config_error(doc: dict[str, Any]) -> None:
    exercise("config_document", repr(doc).encode(), lambda: build_document(doc))


def test_the_schema_strategy_reaches_every_section() -> None:
    assert {"milter", "actions", "checks.bayes", "checks.rules"} <= set(SCHEMA)
    assert math.isinf(SCHEMA["actions"]["quarantine"][1]) and isinstance(datetime.date.today(), datetime.date)

"""The shape of the house: no import cycle in filterd/, and the registry's order is sound.

The cycle test walks the AST of every module and counts every import -- at the top, inside
functions, anywhere -- except those under ``if TYPE_CHECKING:`` (they never run).  A late import
inside a function hides a cycle from Python but not from this test, so layering stays true.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from filterd.check import SCORE_SO_FAR, Check, Finisher, Stage
from filterd.config import parse_config
from filterd.pipeline import Pipeline
from filterd.registry import RegistryError, all_checks, known_symbols, run_order

PACKAGE = Path(__file__).resolve().parent.parent / "filterd"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The filterd modules `path` imports, anywhere but under TYPE_CHECKING."""
    tree = ast.parse(path.read_text())
    skipped = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for inner in ast.walk(node)
    }
    me = module_name(path)
    package = me.split(".") if path.name == "__init__.py" else me.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names = [module] + [f"{module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {n for n in names if n in modules and n != me and not me.startswith(n + ".")}
    return found


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(paths)
    return {name: imports_of(path, modules) for name, path in paths.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_filterd_has_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_late_import_cycle(tmp_path: Path) -> None:
    """The test above could pass by finding nothing at all: this is the same code on a cycle."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_bottom_layer_imports_nothing_of_filterd() -> None:
    graph = import_graph()
    assert graph["filterd.results"] == set()
    assert "filterd.config" not in graph["filterd.check"]
    checks = [m for m in graph if m.startswith("filterd.checks.")]
    for module in checks:  # a check sees its context, never the configuration or the pipeline
        assert not graph[module] & {
            "filterd.config",
            "filterd.pipeline",
            "filterd.driver",
            "filterd.registry",
        }, module
    assert not graph["filterd.config"] & set(checks)  # the registry hands config the schema


def test_every_check_is_found_and_every_declaration_is_sound() -> None:
    checks = all_checks()
    names = [c.name for c in checks]
    assert len(names) == len(set(names)) and {"spf", "dkim", "dmarc", "bayes", "auth_results"} <= set(names)
    for c in checks:
        assert c.symbols.keys() <= known_symbols().keys()
        assert all(name in names for name in c.after), c.name
        for fact in c.requires:
            if fact is SCORE_SO_FAR:
                continue
            providers = [p for p in checks if fact in p.provides]
            assert providers, f"{c.name} requires {fact.name}, which no check provides"
            assert all(p.stage <= c.stage for p in providers), c.name
    assert all(issubclass(c, Finisher) for c in checks if c.stage is Stage.FINISH)


def every_check_enabled() -> Pipeline:
    enabled = {c.name: {"enabled": True} for c in all_checks()}
    enabled["bayes"] = {"enabled": True, "storage": "file"}
    # recipient_exists reads [sql]; nothing listens on the default port here, so it starts on
    # the static values (the lookup's on_error), as filterd does when the database is down
    return Pipeline.from_config(parse_config({"checks": enabled, "sql": {"enabled": True, "timeout": 0.5}}))


def test_the_run_order_follows_the_declarations() -> None:
    p = every_check_enabled()
    try:
        eom = [c.name for c in p.by_stage[Stage.EOM]]
        assert eom.index("dkim") < eom.index("dmarc")  # DMARC requires DKIM's results
        assert eom.index("dkim") < eom.index("header_heuristics")
        assert eom.index("antivirus") < eom.index("dkim")  # dkim declares it runs after antivirus
        assert eom[-1] == "bayes"  # requires the score so far: after every other check
        assert eom.index("rules") > eom.index("mime_structure")  # content checks last (cost)
        rcpt = [c.name for c in p.by_stage[Stage.RCPT]]
        assert rcpt == ["recipient_lists", "recipient_exists", "ratelimit", "greylist"]
        assert [c.name for c in p.by_stage[Stage.FINISH]] == ["auth_results", "dkim_sign"]
    finally:
        p.close()


class _Loop(Check):
    name = "loop_a"
    stage = Stage.EOM
    symbols: dict[str, float] = {}
    after = ("loop_b",)


def test_contradicting_declarations_are_refused() -> None:
    from filterd.pipeline import context_for
    from filterd.services import Services

    config = parse_config({})
    services = Services(config)
    a = _Loop(context_for(config, "header_sanity", services))
    b = _Loop(context_for(config, "header_sanity", services))
    b.name = "loop_b"  # type: ignore[misc]
    b.after = ("loop_a",)  # type: ignore[misc]
    with pytest.raises(RegistryError, match="wait for each other"):
        run_order([a, b])
    a.after = ("no_such_check",)  # type: ignore[misc]
    with pytest.raises(RegistryError, match="no_such_check"):
        run_order([a])

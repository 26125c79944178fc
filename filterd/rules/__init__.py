"""Content rules: a small rule language, the shipped rule set, and the engine that runs them.

`load_rule_set()` reads the shipped directory and the admin's over it and compiles everything
(or raises `RuleError`, naming the file and the rule); `RuleSet.match()` says which rules hit a
message.  The language is described in docs/rules.md; each module owns one piece:

- `loader`  -- rule files to validated `Rule`s (overrides, metas' names and cycles)
- `engine`  -- RE2 pattern sets (why RE2: see its docstring)
- `targets` -- the texts cut from a message once (decoded headers, normalised URLs, links)
- `helpers` -- named tests a regex cannot express
- `meta`    -- the boolean expression parser
- `ruleset` -- the compiled set: match and explain
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from filterd.datafiles import shipped
from filterd.rules.loader import Rule, RuleError, load_rules
from filterd.rules.ruleset import Hit, RuleSet

__all__ = ["Hit", "Rule", "RuleError", "RuleSet", "load_rule_set", "shipped_dir"]


def shipped_dir() -> Path:
    """Where the shipped rule files are: ``rules/`` beside the package in a source checkout,
    else ``<prefix>/share/filterd/rules`` where the wheel installs them."""
    return shipped("rules")


def load_rule_set(
    default_dir: str | Path = "", local_dir: str | Path = "", reserved: Collection[str] = ()
) -> RuleSet:
    """Load and compile the rules; an empty `default_dir` means the shipped set, an empty
    `local_dir` means no local rules."""
    base = Path(default_dir) if default_dir else shipped_dir()
    local = Path(local_dir) if local_dir else None
    return RuleSet(load_rules(base, local, reserved))

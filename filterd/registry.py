"""The registry: which checks filterd has, and in which order they run.

Every module of the `filterd.checks` package is read once, and every `Check` subclass it
defines with a `name` is a check (a new check is one new module there, nothing else).  The
registry hands the configuration its schema -- each check's settings class and symbols -- so
`filterd.config` names no check, and it computes the run order of the enabled checks from what
each declares:

- a check runs after the checks of its stage that provide a fact it requires (DMARC after DKIM);
- a check that requires SCORE_SO_FAR runs after every check of its stage that does not (the
  classifier's autolearn and content greylisting read the score of the others);
- a check runs after the checks it names in `after`;
- otherwise the cheaper first (`Cost`: a deny list before a DNS lookup before the rules), then
  by name, so the order never depends on the order modules were found in.

A fact required from a later stage, a name in `after` that is no check, or a loop is a mistake
in the declarations and raises `RegistryError` when the checks are put in order (a test
orders every check, so such a mistake fails the suite, not the mail path).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import types
from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from typing import Any

from filterd import checks as checks_package
from filterd.check import PIPELINE_SYMBOLS, SCORE_SO_FAR, Check, Cost, Stage


class RegistryError(Exception):
    """The checks' declarations contradict each other (a bug in a check, not in a config)."""


@cache
def all_checks() -> tuple[type[Check], ...]:
    """Every check class, by stage and then name."""
    found: dict[str, type[Check]] = {}
    for module_info in pkgutil.iter_modules(checks_package.__path__):
        module = importlib.import_module(f"{checks_package.__name__}.{module_info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if not issubclass(cls, Check) or cls.__module__ != module.__name__ or "name" not in vars(cls):
                continue
            if cls.name in found and found[cls.name] is not cls:
                raise RegistryError(f"two checks are named {cls.name!r}: {found[cls.name]} and {cls}")
            found[cls.name] = cls
    return tuple(sorted(found.values(), key=lambda c: (c.stage, c.name)))


@cache
def known_symbols() -> Mapping[str, float]:
    """Every symbol any check can emit, with its default score (built once: read on the mail path)."""
    symbols: dict[str, float] = dict(PIPELINE_SYMBOLS)
    for c in all_checks():
        for name, score in c.symbols.items():
            symbols[name] = score
    return types.MappingProxyType(symbols)


def network_checks() -> tuple[str, ...]:
    """The checks that declare `Cost.NETWORK` (DNS, Redis, clamd): what an offline run turns off."""
    return tuple(c.name for c in all_checks() if c.cost is Cost.NETWORK)


def run_order(checks: Iterable[Check]) -> dict[Stage, list[Check]]:
    """The checks of each stage in the order they run (see the module docstring)."""
    checks = list(checks)
    by_stage: dict[Stage, list[Check]] = {stage: [] for stage in Stage}
    for check in checks:
        by_stage[check.stage].append(check)
    _check_requirements(checks)
    return {stage: _ordered(stage_checks) for stage, stage_checks in by_stage.items()}


def _check_requirements(checks: Sequence[Check]) -> None:
    """A fact must come from the same stage or an earlier one; `after` must name a check."""
    names = {c.name for c in all_checks()} | {c.name for c in checks}
    for check in checks:
        for name in check.after:
            if name not in names:
                raise RegistryError(f"{check.name} runs after {name!r}, which is no check")
        for fact in check.requires:
            late = [p.name for p in checks if fact in p.provides and p.stage > check.stage]
            if late:
                raise RegistryError(
                    f"{check.name} ({check.stage.label}) requires {fact.name}, provided later by {', '.join(late)}"
                )


def _ordered(checks: list[Check]) -> list[Check]:
    """Kahn's topological sort, taking the cheapest ready check (then by name) each time."""
    before: dict[int, set[int]] = {i: set() for i in range(len(checks))}  # i runs after these
    for i, check in enumerate(checks):
        for j, other in enumerate(checks):
            if i == j:
                continue
            if (
                any(fact in other.provides for fact in check.requires)
                or other.name in check.after
                or (SCORE_SO_FAR in check.requires and SCORE_SO_FAR not in other.requires)
            ):
                before[i].add(j)
    order: list[Check] = []
    done: set[int] = set()
    while len(order) < len(checks):
        ready = [i for i in before if i not in done and before[i] <= done]
        if not ready:
            loop = ", ".join(sorted(checks[i].name for i in before if i not in done))
            raise RegistryError(f"the checks {loop} wait for each other")
        pick = min(ready, key=lambda i: (checks[i].cost, checks[i].name))
        done.add(pick)
        order.append(checks[pick])
    return order


def settings_sections() -> list[tuple[str, Any, str]]:
    """(name, Settings class, description) of each check's ``[checks.<name>]`` section."""
    return [(c.name, c.Settings, f"{c.name}: {c.description}") for c in all_checks()]

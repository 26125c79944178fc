"""Hypothesis profiles for the fuzz tests, and the run's figures at the end of pytest's output.

- "ci" (default): derandomized, so every run tries the same inputs; sized so the fuzz tests
  take about a minute here.  Runs in the normal `pytest` run.
- "long": random, many more inputs, failures kept in hypothesis's database under
  $FILTERD_FUZZ_OUT so a rerun replays them first.  `scripts/fuzz` runs it.
- "dev": a few inputs, for working on the harness.

Pick one with FILTERD_FUZZ=long (or dev).  FILTERD_FUZZ_EXAMPLES overrides max_examples of a
test's own scale (see `examples()`).
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis.database import DirectoryBasedExampleDatabase

from tests.fuzz.harness import OUT, STATS, keep_going, profile_name

_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]

# The short run does not shrink: a time-bound failure shrinks slowly and the saved input (see
# tests/fuzz/harness.py) is enough to reproduce it; the long run shrinks to a minimal mutation list.
settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=_QUIET,
    print_blob=True,
)
settings.register_profile(
    "long",
    database=DirectoryBasedExampleDatabase(str(OUT / "hypothesis")),
    deadline=None,
    suppress_health_check=_QUIET,
    print_blob=True,
)
settings.register_profile("dev", database=None, deadline=None, suppress_health_check=_QUIET, max_examples=10)
settings.load_profile(profile_name())


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # inputs failed in keep-going mode, where the tests themselves pass
    if keep_going() and STATS.failures and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if STATS.entries or STATS.failures:
        terminalreporter.write_sep("-", "fuzz")
        for line in STATS.lines():
            terminalreporter.write_line(line)
        if os.environ.get("FILTERD_FUZZ_SUMMARY"):
            (OUT / "summary.txt").write_text("\n".join(STATS.lines()) + "\n")

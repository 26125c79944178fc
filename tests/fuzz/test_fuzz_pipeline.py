"""Fuzzing the whole offline pipeline (`filterd.driver.scan`, content checks, rules and bayes on).

Invariants for every input:
- no exception leaves `scan`, and no check fails on it (no CHECK_ERROR: a check that raises on
  message bytes is a bug, however the pipeline contains it);
- each message within the time bound, and within the checks' CPU budget (no TIME_BUDGET);
- a spam disguised by wrapping -- multipart with attachments, nested containers, base64 or
  quoted-printable -- never scores lower than the original by more than `WRAP_MARGIN` points.
  The margin and how it was measured: docs/fuzzing.md."""

from __future__ import annotations

from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from filterd.driver import scan
from filterd.pipeline import Pipeline
from filterd.results import Verdict
from tests.fuzz import mutations as m
from tests.fuzz.harness import examples, exercise
from tests.fuzz.offline import offline_pipeline
from tests.fuzz.strategies import BUILTIN_SEEDS, messages, sample, spam_files

WRAP_MARGIN = 1.0  # points; see docs/fuzzing.md

# the inputs are messages of up to a few hundred KB: hypothesis says so when it prints one
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")


@cache
def pipeline() -> Pipeline:
    return offline_pipeline()


def crlf(raw: bytes) -> bytes:
    """Line ends as the milter receives them (the corpus files have bare LF)."""
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


SPAM_SEEDS = [crlf(r) for r in [BUILTIN_SEEDS[2], *sample(spam_files(), 120)]]


def scanned(raw: bytes) -> Verdict:
    tx, verdict = scan(pipeline(), raw)
    names = {s.name for s in verdict.symbols}
    assert "CHECK_ERROR" not in names, [s.reason for s in verdict.symbols if s.name == "CHECK_ERROR"]
    assert "TIME_BUDGET" not in names, (tx.check_cpu, [s.reason for s in verdict.symbols])
    return verdict


@settings(max_examples=examples(220))
@given(messages())
def test_offline_pipeline_never_fails_a_check_and_is_bounded(raw: bytes) -> None:
    pipeline()  # built (rules compiled, model loaded) before the first input is timed
    exercise("pipeline", raw, lambda: scanned(raw))


_WRAPPERS = st.one_of(
    st.builds(lambda n: lambda r: m.wrap_in_multipart(r, n), st.integers(1, 40)),
    st.builds(lambda n: lambda r: m.wrap_in_multipart(r, n, b"alternative"), st.integers(1, 5)),
    st.builds(lambda n: lambda r: m.nest(r, n), st.integers(1, 40)),
    st.builds(lambda e: lambda r: m.reencode(r, e), st.sampled_from(["base64", "quoted-printable"])),
)


def describe(verdict: Verdict) -> str:
    return " ".join(f"{s.name}({s.score:g})" for s in verdict.symbols)


@settings(max_examples=examples(50))
@given(st.sampled_from(SPAM_SEEDS), st.lists(_WRAPPERS, min_size=1, max_size=3))
def test_wrapping_a_spam_never_lowers_its_score_by_more_than_the_margin(seed: bytes, wraps: list) -> None:
    before = scanned(seed)  # also builds the pipeline before the timed run
    raw = seed
    for wrap in wraps:
        raw = wrap(raw)
    after = exercise("pipeline_wrapped", raw, lambda: scanned(raw))
    if after is None:
        return  # keep-going mode: the failure is recorded
    assert after.score >= before.score - WRAP_MARGIN, (
        f"{before.score} -> {after.score}\nbefore: {describe(before)}\nafter:  {describe(after)}"
    )

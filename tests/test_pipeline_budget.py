"""The per-message CPU budget of the checks ([milter] cpu_budget), and what happens past it.

The mechanism is tested with deliberately slow test checks (they burn CPU, as an attacker's
message would make a real check do); the last test runs the real offline checks on the corpus
and shows no message comes near the default budget."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from filterd.check import Check, Finding, Output, Stage
from filterd.config import parse_config
from filterd.driver import scan
from filterd.pipeline import Pipeline, context_for
from filterd.services import Services
from filterd.transaction import Session, Transaction
from tests.fuzz.offline import offline_pipeline


def burn(seconds: float) -> None:
    """Use `seconds` of this thread's CPU time."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


class Burner(Check):
    """A test check that burns CPU, then yields one finding; counts its runs."""

    symbols = {"BURNED": 0.5}

    def __init__(self, name: str, seconds: float, optional: bool = False) -> None:
        config = parse_config({})
        super().__init__(context_for(config, "header_sanity", Services(config)))
        self.name = name  # type: ignore[misc]
        self.stage = Stage.EOM  # type: ignore[misc]
        self.optional_content = optional  # type: ignore[misc]
        self.seconds, self.runs = seconds, 0

    def run(self, tx: Transaction) -> Iterable[Output]:
        self.runs += 1
        burn(self.seconds)
        return [Finding("BURNED", f"{self.name} burned {self.seconds}s", 0.5)]


def pipeline(*checks: Check, budget: float) -> Pipeline:
    """The checks run in the order given (each declared to run after the one before)."""
    for before, check in itertools.pairwise(checks):
        check.after = (before.name,)  # type: ignore[misc]
    config = parse_config({"milter": {"cpu_budget": budget}})
    return Pipeline(config, checks, Services(config))


def eom(queue_id: str = "4QTEST") -> Transaction:
    tx = Transaction.start(Session(client_addr="192.0.2.1"))
    tx.queue_id = queue_id
    tx.raw_message = b"From: a@example.org\r\nSubject: hi\r\n\r\nhello\r\n"
    return tx


def symbols(tx: Transaction) -> list[str]:
    return [f.symbol for f in tx.findings]


def test_each_checks_cpu_time_is_recorded_and_within_budget_nothing_is_added() -> None:
    fast, other = Burner("fast", 0.002), Burner("other", 0.001, optional=True)
    p = pipeline(fast, other, budget=1.0)
    tx = eom()
    assert p.run_stage(Stage.EOM, tx) is None
    assert symbols(tx) == ["BURNED", "BURNED"]
    assert set(tx.check_cpu) == {"fast", "other"}
    assert 0.002 <= tx.check_cpu["fast"] < 0.5


def test_the_check_that_crosses_the_budget_is_named_and_the_optional_checks_left_are_skipped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    first = Burner("first", 0.03)
    slow = Burner("slow", 0.08)
    rules = Burner("rules_like", 0.0, optional=True)
    protective = Burner("antivirus_like", 0.0)  # not optional: always runs
    bayes = Burner("bayes_like", 0.0, optional=True)
    p = pipeline(first, slow, rules, protective, bayes, budget=0.1)
    tx = eom()
    with caplog.at_level(logging.WARNING, logger="filterd.pipeline"):
        assert p.run_stage(Stage.EOM, tx) is None
    budget = [f for f in tx.findings if f.symbol == "TIME_BUDGET"]
    assert len(budget) == 1 and budget[0].reason.startswith("slow used ")
    assert "over the 0.1 s budget" in budget[0].reason
    skipped = [f.reason for f in tx.findings if f.symbol == "TIME_BUDGET_SKIPPED"]
    assert skipped == [
        "rules_like not run: the message's CPU budget was spent",
        "bayes_like not run: the message's CPU budget was spent",
    ]
    assert (rules.runs, bayes.runs, protective.runs) == (0, 0, 1)
    assert "CHECK_ERROR" not in symbols(tx)
    # a score that matters, and a warning an admin can find by queue id
    verdict = p.verdict(tx)
    assert {s.name: s.score for s in verdict.symbols}["TIME_BUDGET"] == 3.0
    assert any("4QTEST: slow used" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_the_budget_is_reported_once_even_when_later_checks_are_slow_too() -> None:
    p = pipeline(Burner("a", 0.06), Burner("b", 0.06), Burner("c", 0.03), budget=0.05)
    tx = eom()
    p.run_stage(Stage.EOM, tx)
    assert symbols(tx).count("TIME_BUDGET") == 1
    assert next(f for f in tx.findings if f.symbol == "TIME_BUDGET").reason.startswith("a used")


def test_a_budget_of_zero_turns_it_off() -> None:
    optional = Burner("optional", 0.0, optional=True)
    p = pipeline(Burner("slow", 0.05), optional, budget=0)
    tx = eom()
    p.run_stage(Stage.EOM, tx)
    assert symbols(tx) == ["BURNED", "BURNED"] and optional.runs == 1


def test_the_budget_spans_the_stages_of_one_message_not_the_connection() -> None:
    early = Burner("early", 0.06)
    early.stage = Stage.HEADERS  # type: ignore[misc]
    late = Burner("late", 0.0, optional=True)
    p = pipeline(early, late, budget=0.05)
    tx = eom()
    p.run_stage(Stage.HEADERS, tx)
    p.run_stage(Stage.EOM, tx)
    assert late.runs == 0 and "TIME_BUDGET_SKIPPED" in symbols(tx)
    # the next message on the same connection starts with a whole budget
    fresh = Transaction.start(tx.session)
    fresh.raw_message = tx.raw_message
    p.run_stage(Stage.EOM, fresh)
    assert late.runs == 1 and fresh.check_cpu.keys() == {"late"}


def test_a_failing_slow_check_is_both_an_error_and_over_budget() -> None:
    class Exploding(Burner):
        def run(self, tx: Transaction) -> Iterable[Output]:
            burn(0.06)
            raise ValueError("boom")

    p = pipeline(Exploding("exploding", 0.0), budget=0.05)
    tx = eom()
    p.run_stage(Stage.EOM, tx)
    assert symbols(tx) == ["CHECK_ERROR", "TIME_BUDGET"]


def test_only_the_checking_threads_cpu_counts_as_in_libmilter_threads() -> None:
    """Checks run in libmilter's threads: another thread busy at the same time (another message)
    must not push this message over its budget."""
    optional = Burner("optional", 0.0, optional=True)
    p = pipeline(Burner("light", 0.01), optional, budget=0.05)
    tx = eom()
    stop = threading.Event()

    def busy() -> None:
        while not stop.is_set():
            sum(range(1000))

    other = threading.Thread(target=busy)
    other.start()
    try:
        checker = threading.Thread(target=p.run_stage, args=(Stage.EOM, tx))
        checker.start()
        checker.join()
    finally:
        stop.set()
        other.join()
    assert optional.runs == 1 and "TIME_BUDGET" not in symbols(tx)
    assert 0.01 <= tx.check_cpu["light"] < 0.05


def test_the_budget_is_declared_once_with_a_default_and_validated() -> None:
    assert parse_config({}).milter.cpu_budget == 1.0
    with pytest.raises(ValueError, match=r"milter\.cpu_budget"):
        parse_config({"milter": {"cpu_budget": -1}})


def corpus_sample(corpus: Path, step: int) -> list[Path]:
    folders = [corpus / d / label for d in ("spamassassin-public", "csdmc2010") for label in ("ham", "spam")]
    return sorted(f for folder in folders if folder.is_dir() for f in folder.iterdir())[::step]


def test_no_corpus_message_comes_near_the_default_budget_with_the_real_checks(corpus: Path) -> None:
    p = offline_pipeline()
    budget = p.config.milter.cpu_budget
    worst: tuple[float, Any] = (0.0, None)
    files = corpus_sample(corpus, 8)
    for path in files:
        tx, verdict = scan(p, path.read_bytes())
        used = sum(tx.check_cpu.values())
        worst = max(worst, (used, path.name))
        assert not {"TIME_BUDGET", "TIME_BUDGET_SKIPPED", "CHECK_ERROR"} & {s.name for s in verdict.symbols}
    assert len(files) > 500
    assert worst[0] < budget / 5, f"slowest corpus message {worst[1]}: {worst[0]:.3f}s of CPU"

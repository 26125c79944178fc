"""The two pipeline additions: checks that run after scoring, and the after-verdict hook."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import pytest

from filterd.check import SCORE_SO_FAR, Check, CheckSettings, Finding, Output, Stage
from filterd.config import Config, parse_config
from filterd.driver import SmtpContext, scan
from filterd.pipeline import Pipeline, context_for
from filterd.results import Action, Verdict
from filterd.services import Services
from filterd.transaction import Transaction


class Scorer(Check):
    name = "scorer"
    stage = Stage.EOM
    symbols = {"SCORED": 2.5}

    def run(self, tx: Transaction) -> Iterable[Output]:
        yield Finding("SCORED", "always", score=2.5)  # not a registered symbol: its own score


class AfterScoring(Check):
    name = "after"
    stage = Stage.EOM
    symbols = {"SEEN_SCORE": 0.0}
    requires = (SCORE_SO_FAR,)

    def run(self, tx: Transaction) -> Iterable[Output]:
        yield Finding("SEEN_SCORE", f"score so far {self.ctx.score_so_far(tx)}")


class Recorder(Check):
    name = "recorder"
    stage = Stage.CONNECT
    symbols: dict[str, float] = {}
    seen: list[tuple[str | None, Action]] = []

    def run(self, tx: Transaction) -> Iterable[Output]:
        return []

    def after_verdict(self, tx: Transaction, verdict: Verdict) -> None:
        self.seen.append((tx.mail_from, verdict.action))


class Broken(Recorder):
    name = "broken"

    def after_verdict(self, tx: Transaction, verdict: Verdict) -> None:
        raise RuntimeError("boom")


def make(config: Config, *checks: type[Check]) -> Pipeline:
    services = Services(config)
    return Pipeline(
        config, [c(context_for(config, c.name, services, CheckSettings())) for c in checks], services
    )


def test_after_scoring_check_runs_last_and_sees_the_score() -> None:
    config = parse_config({})
    p = make(config, AfterScoring, Scorer)  # registered first, still runs after Scorer
    _, verdict = scan(p, b"Subject: x\r\n\r\nbody\r\n")
    assert [s.name for s in verdict.symbols] == ["SCORED", "SEEN_SCORE"]
    assert verdict.symbols[1].reason == "score so far 2.5"


def test_after_verdict_is_called_and_its_failures_are_contained(caplog: pytest.LogCaptureFixture) -> None:
    config = parse_config({})
    Recorder.seen = []
    p = make(config, Broken, Recorder)
    tx, verdict = scan(p, b"Subject: x\r\n\r\nbody\r\n", SmtpContext(mail_from="a@b.test"))
    with caplog.at_level(logging.WARNING, "filterd.pipeline"):
        p.after_verdict(tx, verdict)
    assert Recorder.seen == [("a@b.test", Action.ACCEPT)]
    assert "after_verdict of broken failed: RuntimeError: boom" in caplog.text


def test_after_verdict_follows_the_checks_direction() -> None:
    config = parse_config({})
    Recorder.seen = []
    p = make(config, Recorder)  # inbound only, the default
    tx, verdict = scan(p, b"Subject: x\r\n\r\nbody\r\n", SmtpContext(mail_from="a@b.test", auth_user="a"))
    p.after_verdict(tx, verdict)
    assert Recorder.seen == []


class Failing(Check):
    """A fail-closed check that raises what it is told to."""

    name = "failing"
    stage = Stage.EOM
    symbols: dict[str, float] = {}
    error: Exception = RuntimeError("bug")

    def run(self, tx: Transaction) -> Iterable[Output]:
        raise self.error


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ConnectionRefusedError("redis down"), 451),  # a dependency: retry later
        (TimeoutError("clamd slow"), 451),
        (UnicodeEncodeError("utf-8", "\udce9", 0, 1, "surrogates"), 554),  # these bytes: a retry fails alike
        (ValueError("DNS lookup of exa\udce9mple.org failed: IDNA"), 554),
    ],
)
def test_fail_closed_tempfails_only_dependency_failures(error: Exception, code: int) -> None:
    config = parse_config({})
    services = Services(config)
    check = Failing(context_for(config, Failing.name, services, CheckSettings(on_error="closed")))
    check.error = error
    p = Pipeline(config, [check], services)
    _, verdict = scan(p, b"Subject: x\r\n\r\nbody\r\n")
    assert verdict.decision is not None
    assert verdict.decision.reply.code == code  # type: ignore[union-attr]

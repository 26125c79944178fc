"""The pipeline alone: stages, early decisions, failure policy, thresholds and the offline scan."""

from __future__ import annotations

import email.utils
from collections.abc import Iterable
from typing import Any

import pytest

from filterd.check import Check, Direction, Finding, Output, Stage
from filterd.config import parse_config
from filterd.driver import Driver, SmtpContext, scan
from filterd.pipeline import Pipeline, context_for
from filterd.replies import R550_SPAM, Quarantine, Reject
from filterd.results import Action
from filterd.services import Services
from filterd.transaction import Session, Transaction

CLEAN = (
    b"From: a@example.org\r\nTo: b@example.net\r\nSubject: hi\r\n"
    + f"Date: {email.utils.formatdate()}\r\n".encode()
    + b"Message-ID: <1@example.org>\r\n\r\nhello\r\n"
)


class Fixed(Check):
    """A test check that yields what it is told and counts its runs."""

    name = "fixed"
    stage = Stage.EOM
    symbols = {"FIXED": 1.0}

    def __init__(
        self,
        outputs: list[Output],
        stage: Stage = Stage.EOM,
        fail: bool = False,
        on_error: str = "open",
        directions: frozenset[Direction] | None = None,
    ) -> None:
        config = parse_config({})
        settings = config.check_settings("header_sanity").__class__(on_error=on_error)
        super().__init__(context_for(config, "header_sanity", Services(config), settings))
        self.outputs, self.fail, self.runs = outputs, fail, 0
        self.stage = stage  # type: ignore[misc]
        if directions is not None:
            self.directions = directions  # type: ignore[misc]

    def run(self, tx: Transaction) -> Iterable[Output]:
        self.runs += 1
        if self.fail:
            raise ConnectionError("backend unreachable")
        return list(self.outputs)


def pipeline(*checks: Check, **config: Any) -> Pipeline:
    cfg = parse_config(config)
    return Pipeline(cfg, checks, Services(cfg))


def eom_tx() -> Transaction:
    tx = Transaction.start(Session(client_addr="192.0.2.1"))
    tx.raw_message = CLEAN
    return tx


def test_scores_add_up_and_the_highest_reached_threshold_wins() -> None:
    p = pipeline(
        Fixed([Finding("A", "a", 3.0), Finding("B", "b", 4.0)]),
        actions={"add_header": 5.0, "rewrite_subject": 7.0, "reject": 15.0},
    )
    tx = eom_tx()
    assert p.run_stage(Stage.EOM, tx) is None
    v = p.verdict(tx)
    assert v.score == 7.0 and v.action is Action.REWRITE_SUBJECT and v.is_spam
    assert [s.name for s in v.symbols] == ["A", "B"]


def test_reject_threshold_gives_a_5xx_decision() -> None:
    p = pipeline(Fixed([Finding("A", "a", 20.0)]))
    tx = eom_tx()
    p.run_stage(Stage.EOM, tx)
    v = p.verdict(tx)
    assert v.action is Action.REJECT
    assert isinstance(v.decision, Reject) and v.decision.reply == R550_SPAM


def test_score_table_gives_the_score_when_the_finding_has_none() -> None:
    p = pipeline(Fixed([Finding("MISSING_DATE", "no date")]), scores={"MISSING_DATE": 2.5})
    tx = eom_tx()
    p.run_stage(Stage.EOM, tx)
    assert p.verdict(tx).score == 2.5


def test_an_early_decision_stops_later_checks_of_the_stage() -> None:
    deny = Fixed([Reject(R550_SPAM, "no")], stage=Stage.RCPT)
    later = Fixed([Finding("A", "a", 1.0)], stage=Stage.RCPT)
    p = pipeline(deny, later)
    tx = eom_tx()
    tx.rcpts.append("x@example.net")
    decision = p.run_stage(Stage.RCPT, tx)
    assert isinstance(decision, Reject)
    assert later.runs == 0


def test_fail_open_skips_the_check_and_says_so() -> None:
    p = pipeline(Fixed([], fail=True, on_error="open"))
    tx = eom_tx()
    assert p.run_stage(Stage.EOM, tx) is None
    (symbol,) = p.verdict(tx).symbols
    assert symbol.name == "CHECK_ERROR" and "fixed skipped (fail-open)" in symbol.reason
    assert "ConnectionError" in symbol.reason


def test_fail_closed_tempfails() -> None:
    p = pipeline(Fixed([], fail=True, on_error="closed"))
    tx = eom_tx()
    decision = p.run_stage(Stage.EOM, tx)
    v = p.verdict(tx, decision)
    assert v.action is Action.TEMPFAIL and v.decision is not None
    assert v.decision.reply.code == 451  # type: ignore[union-attr]


def test_outbound_mail_skips_inbound_checks_and_scoring() -> None:
    check = Fixed([Finding("A", "a", 50.0)])
    p = pipeline(check, network={"internal_networks": ["192.0.2.0/24"]})
    tx = eom_tx()
    tx.direction = p.direction_of(tx)
    assert tx.direction is Direction.OUTBOUND
    p.run_stage(Stage.EOM, tx)
    assert check.runs == 0 and p.verdict(tx).action is Action.ACCEPT


def test_authenticated_sender_is_outbound() -> None:
    p = pipeline()
    tx = eom_tx()
    tx.auth_user = "alice"
    assert p.direction_of(tx) is Direction.OUTBOUND


def test_quarantine_decided_early_is_held_until_end_of_message() -> None:
    early = Fixed([Quarantine("suspicious sender")], stage=Stage.MAIL_FROM)
    later = Fixed([Finding("A", "a", 1.0)], stage=Stage.RCPT)
    p = pipeline(early, later)
    driver = Driver(p, Session(client_addr="192.0.2.1"))
    assert driver.mail("a@example.org").proceeds  # held, not given: the message is not whole yet
    assert driver.rcpt("x@example.net").proceeds
    assert later.runs == 1
    driver.current().raw_message = CLEAN
    assert driver.end_of_message().action is Action.QUARANTINE


def test_body_checks_skipped_for_oversized_messages() -> None:
    body_check = Fixed([Finding("A", "a", 1.0)])
    body_check.needs_body = True  # type: ignore[misc]
    p = pipeline(body_check)
    tx = eom_tx()
    tx.oversized = True
    p.run_stage(Stage.EOM, tx)
    assert body_check.runs == 0


@pytest.mark.parametrize("missing", [b"Date", b"Message-ID", b"From"])
def test_offline_scan_runs_every_stage(missing: bytes) -> None:
    raw = b"\r\n".join(line for line in CLEAN.split(b"\r\n") if not line.startswith(missing + b":"))
    no_dns = {name: {"enabled": False} for name in ("spf", "dkim", "arc", "dmarc")}  # tested in test_auth_*
    p = Pipeline.from_config(parse_config({"checks": no_dns}))
    _, verdict = scan(
        p, raw, SmtpContext(client_addr="192.0.2.1", mail_from="a@example.org", rcpts=("b@example.net",))
    )
    names = {s.name for s in verdict.symbols}
    assert len(names) == 1
    expected = {b"Date": "MISSING_DATE", b"Message-ID": "MISSING_MESSAGE_ID", b"From": "MISSING_FROM"}[
        missing
    ]
    assert expected in names


def test_may_decide_knows_when_no_check_can_refuse(tmp_path: Any) -> None:
    quiet = Pipeline.from_config(parse_config({"checks": {"spf": {"enabled": False}}}))
    assert not quiet.may_decide(Stage.RCPT)
    assert not quiet.may_decide(Stage.CONNECT, Stage.HELO, Stage.MAIL_FROM)
    deny = tmp_path / "deny"
    deny.write_text("spam.example\n")
    listed = Pipeline.from_config(
        parse_config({"checks": {"spf": {"enabled": False}, "sender_lists": {"deny_file": str(deny)}}})
    )
    assert listed.may_decide(Stage.MAIL_FROM) and not listed.may_decide(Stage.RCPT)
    closed = Pipeline.from_config(
        parse_config({"checks": {"spf": {"enabled": False}, "recipient_lists": {"on_error": "closed"}}})
    )
    assert closed.may_decide(Stage.RCPT)
    assert Pipeline.from_config(parse_config({})).may_decide(Stage.MAIL_FROM)  # SPF fail rejects

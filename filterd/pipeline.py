"""The pipeline: runs the checks of each stage, adds up the scores and picks one action.

The pipeline knows nothing about any particular check.  For each stage it runs the enabled checks
registered for that stage and the transaction's direction, collects what they yield, and stops at
the first decision.  An exception inside a check never escapes: it is logged with the queue id and
the check's `on_error` policy decides between skipping the check (fail-open, shown in the report
as CHECK_ERROR) and tempfailing the message (fail-closed).

Every check's CPU time on a message is measured (`Transaction.check_cpu`) and the checks of one
message share a CPU budget, ``[milter] cpu_budget``.  On the mail path checks run in libmilter's
threads: no signal can interrupt them and a Python thread cannot be killed, so the budget cannot
stop a check halfway (the checks bound their own work: MAX_PARTS, MAX_TAGS, linear-time regexes).
What it does is stop the work that is left: the check whose run crosses the budget is named in a
TIME_BUDGET finding (it scores -- an attacker can make a message slow on purpose), a warning is
logged with the queue id, and the optional content checks still to come are skipped, each with
TIME_BUDGET_SKIPPED.  CPU time of the thread, not wall time: waiting on DNS, Redis or clamd has
its own timeouts, and other threads holding the GIL do not count against this message.
"""

from __future__ import annotations

import enum
import ipaddress
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from filterd.check import AddHeader, Check, Direction, Finding, Stage
from filterd.combination import BASE_SYMBOL, Combination
from filterd.config import Config, registered_checks
from filterd.failures import R554_CHECK_FAILED, is_dependency_failure
from filterd.replies import (
    R451_CHECK_FAILED,
    R451_GREYLISTED,
    R550_SPAM,
    Decision,
    Discard,
    Quarantine,
    Reject,
    TempFail,
)
from filterd.services import Services
from filterd.transaction import Session, Transaction

log = logging.getLogger("filterd.pipeline")


class Action(enum.Enum):
    ACCEPT = "accept"
    ADD_HEADER = "add_header"
    REWRITE_SUBJECT = "rewrite_subject"
    QUARANTINE = "quarantine"
    GREYLIST = "greylist"
    REJECT = "reject"
    TEMPFAIL = "tempfail"  # a check's decision (or a fail-closed error), not a score threshold
    DISCARD = "discard"


# When two thresholds are equal the more severe action wins.
_SEVERITY = [Action.ADD_HEADER, Action.GREYLIST, Action.REWRITE_SUBJECT, Action.QUARANTINE, Action.REJECT]


@dataclass(frozen=True)
class Symbol:
    """A finding with its score resolved."""

    name: str
    score: float
    reason: str


@dataclass
class Verdict:
    """The outcome for one message: what was found, the total, and the single action to take."""

    score: float
    required: float
    action: Action
    symbols: list[Symbol]
    decision: Decision | None = None  # set when a check decided (or a threshold means a reply)
    add_headers: list[AddHeader] = field(default_factory=list)

    @property
    def is_spam(self) -> bool:
        return self.score >= self.required


class Pipeline:
    def __init__(self, config: Config, checks: Iterable[Check], services: Services) -> None:
        self.config = config
        self.services = services
        self.checks = list(checks)
        self.by_stage: dict[Stage, list[Check]] = {s: [] for s in Stage}
        for check in self.checks:
            self.by_stage[check.stage].append(check)
        for stage_checks in self.by_stage.values():
            stage_checks.sort(key=lambda c: c.after_scoring)  # stable: registry order otherwise
        self.internal_networks = [
            ipaddress.ip_network(n, strict=False) for n in config.network.internal_networks
        ]
        # Built once, not per message: the checks that learn from verdicts (the others' hook does
        # nothing), and the score thresholds as (threshold, severity, action).
        self.learners = [c for c in self.checks if type(c).after_verdict is not Check.after_verdict]
        self.combination = Combination(config.scoring)  # table or learned scores (filterd.combination)
        self.thresholds = [
            (threshold, _SEVERITY.index(Action(name)), Action(name))
            for name, threshold in config.actions.thresholds().items()
        ]

    @classmethod
    def from_config(cls, config: Config, services: Services | None = None) -> Pipeline:
        """Build every enabled check; a check that cannot start raises here (so the daemon refuses to)."""
        services = services or Services(config)
        checks = []
        for check_cls in registered_checks():
            settings = config.check_settings(check_cls.name)
            if settings.enabled:
                checks.append(check_cls(settings, config, services))
        return cls(config, checks, services)

    def close(self) -> None:
        for check in self.checks:
            check.close()
        self.services.close()

    def may_decide(self, *stages: Stage) -> bool:
        """Could an enabled check at one of these stages refuse or hold the message?"""
        return any(check.can_decide() for stage in stages for check in self.by_stage[stage])

    def direction_of(self, tx: Transaction) -> Direction:
        """Outbound: an authenticated SMTP client, or one in the configured internal networks."""
        if tx.auth_user:
            return Direction.OUTBOUND
        ip = tx.session.client_ip
        if ip is not None and any(ip in net for net in self.internal_networks):
            return Direction.OUTBOUND
        return Direction.INBOUND

    def run_stage(self, stage: Stage, tx: Transaction) -> Decision | None:
        """Run the stage's checks on `tx`; return the first decision, if any."""
        started = time.perf_counter()
        try:
            for check in self.by_stage[stage]:
                if tx.direction not in check.directions:
                    continue
                if tx.oversized and check.needs_body:
                    continue  # the body passed max_scan_bytes and was not kept
                decision = self._run_check(check, tx)
                if decision is not None:
                    return decision
            return None
        finally:
            tx.timings[stage] = tx.timings.get(stage, 0.0) + time.perf_counter() - started

    def _run_check(self, check: Check, tx: Transaction) -> Decision | None:
        budget = self.config.milter.cpu_budget
        if budget and check.optional_content and sum(tx.check_cpu.values()) > budget:
            tx.findings.append(
                Finding("TIME_BUDGET_SKIPPED", f"{check.name} not run: the message's CPU budget was spent")
            )
            return None
        started = time.thread_time()
        try:
            outputs = list(check.run(tx))
        except Exception as exc:  # a check's bug or its backend's failure must not reach libmilter
            log.warning(
                "%s: check %s failed: %s: %s",
                tx.queue_id or "NOQUEUE",
                check.name,
                type(exc).__name__,
                exc,
                exc_info=log.isEnabledFor(logging.DEBUG),
            )
            if check.settings.on_error == "closed":
                if not is_dependency_failure(exc):  # a retry would fail alike: see filterd.failures
                    return Reject(
                        R554_CHECK_FAILED, f"check {check.name} failed (fail-closed, not retryable)"
                    )
                return TempFail(R451_CHECK_FAILED, f"check {check.name} failed (fail-closed)")
            tx.findings.append(
                Finding("CHECK_ERROR", f"{check.name} skipped (fail-open): {type(exc).__name__}: {exc}")
            )
            return None
        finally:
            self._charge(check, tx, time.thread_time() - started, budget)
        for out in outputs:
            if isinstance(out, Finding):
                tx.findings.append(out)
            elif isinstance(out, AddHeader):
                tx.add_headers.append(out)
            elif isinstance(out, Quarantine) and check.stage is not Stage.EOM:
                tx.held = out  # a message can only be held once it is whole: carried to the end
            else:
                return out
        return None

    def _charge(self, check: Check, tx: Transaction, spent: float, budget: float) -> None:
        """Add a check's CPU time to the message's; name the check whose run crossed the budget."""
        tx.check_cpu[check.name] = tx.check_cpu.get(check.name, 0.0) + spent
        total = sum(tx.check_cpu.values())
        if not budget or total <= budget or total - spent > budget:
            return  # within the budget, or crossed earlier by another check (already reported)
        reason = (
            f"{check.name} used {spent * 1000:.0f} ms of CPU; the checks used {total:.2f} s "
            f"on this message, over the {budget:g} s budget"
        )
        tx.findings.append(Finding("TIME_BUDGET", reason))
        log.warning("%s: %s; optional content checks left are skipped", tx.queue_id or "NOQUEUE", reason)

    def score(self, finding: Finding) -> float:
        return finding_score(self.config, finding)

    def after_verdict(self, tx: Transaction, verdict: Verdict) -> None:
        """Tell the checks the final verdict (called by the milter once the action is taken).

        Checks that learn from verdicts (reputation) update their state here.  A failure is
        logged and never reaches the caller: the message's fate is already decided."""
        for check in self.learners:
            if tx.direction not in check.directions:
                continue
            try:
                check.after_verdict(tx, verdict)
            except Exception as exc:
                log.warning(
                    "%s: after_verdict of %s failed: %s: %s",
                    tx.queue_id or "NOQUEUE",
                    check.name,
                    type(exc).__name__,
                    exc,
                    exc_info=log.isEnabledFor(logging.DEBUG),
                )

    def verdict(self, tx: Transaction, decision: Decision | None = None) -> Verdict:
        """Add up the findings and choose the action (or report the decision a check took)."""
        # [scoring]: each finding's contribution and the total, from the table or the learned model
        scored = self.combination.score(tx.findings, [self.score(f) for f in tx.findings])
        symbols = [
            Symbol(f.symbol, c, f.reason) for f, c in zip(tx.findings, scored.contributions, strict=True)
        ]
        if scored.base is not None:
            symbols.insert(0, Symbol(BASE_SYMBOL, scored.base, "where the learned combination starts"))
        total = scored.total
        actions = self.config.actions
        verdict = Verdict(
            score=total,
            required=actions.required,
            action=Action.ACCEPT,
            symbols=symbols,
            add_headers=list(tx.add_headers),
        )
        decision = decision or tx.held
        if decision is not None:
            verdict.decision = decision
            verdict.action = _action_of(decision)
            return verdict
        if tx.direction is Direction.OUTBOUND:
            return verdict
        reached = [t for t in self.thresholds if total >= t[0]]
        if reached:
            verdict.action = max(reached)[2]
        if verdict.action is Action.REJECT:
            verdict.decision = Reject(R550_SPAM, f"score {total} >= {actions.reject}")
        elif verdict.action is Action.GREYLIST:
            verdict.decision = TempFail(R451_GREYLISTED, f"score {total} >= {actions.greylist}")
        return verdict


def finding_score(config: Config, finding: Finding) -> float:
    """A finding's score: its own when the check computed one, else the score table's."""
    return finding.score if finding.score is not None else config.score_of(finding.symbol)


def score_so_far(config: Config, tx: Transaction) -> float:
    """The total of the findings made so far (what a check with `after_scoring` reads)."""
    return round(sum(finding_score(config, f) for f in tx.findings), 3)


def _action_of(decision: Decision) -> Action:
    if isinstance(decision, Reject):
        return Action.REJECT
    if isinstance(decision, TempFail):
        return Action.TEMPFAIL
    if isinstance(decision, Discard):
        return Action.DISCARD
    assert isinstance(decision, Quarantine)
    return Action.QUARANTINE


@dataclass(frozen=True)
class SmtpContext:
    """What an offline scan is told about the SMTP transaction the message would have come in."""

    client_addr: str | None = None
    client_name: str | None = None
    helo: str | None = None
    mail_from: str | None = None
    rcpts: tuple[str, ...] = ()
    auth_user: str | None = None


def scan(pipeline: Pipeline, raw: bytes, context: SmtpContext = SmtpContext()) -> tuple[Transaction, Verdict]:
    """Run every stage on a stored message, as the milter would have, and return the verdict."""
    session = Session(client_addr=context.client_addr, client_name=context.client_name, helo=context.helo)
    connection = Transaction(session=session)
    for stage in (Stage.CONNECT, Stage.HELO):
        decision = pipeline.run_stage(stage, connection)
        if decision is not None:
            return connection, pipeline.verdict(connection, decision)
    session.findings, session.timings = connection.findings, connection.timings
    tx = Transaction.start(session)
    tx.mail_from, tx.auth_user, tx.raw_message = context.mail_from, context.auth_user, raw
    tx.size = len(raw)
    tx.oversized = len(raw) > pipeline.config.milter.max_scan_bytes
    tx.direction = pipeline.direction_of(tx)
    decision = pipeline.run_stage(Stage.MAIL_FROM, tx)
    for rcpt in context.rcpts:
        if decision is not None:
            break
        tx.rcpts.append(rcpt)
        decision = pipeline.run_stage(Stage.RCPT, tx)
    for stage in (Stage.HEADERS, Stage.EOM):
        if decision is None:
            decision = pipeline.run_stage(stage, tx)
    return tx, pipeline.verdict(tx, decision)

"""The driver: walks one SMTP connection's messages through the pipeline, stage by stage.

This is the one path every message takes, whoever feeds it: the milter (`filterd.milter`
translates libmilter's callbacks into these calls, and the outcome back into milter actions) and
an offline scan (`scan` below, behind ``filterctl scan``) -- so the two cannot disagree.  One
method per SMTP stage, as aiosmtpd's handler hooks:

    connect()  helo()  mail()  rcpt() ...  end_of_message()  message_done()

What a stage decides is given where the SMTP client can hear it:

- at CONNECT and HELO a decision waits in `Session.decision` and is given at each MAIL FROM
  (Postfix would otherwise replace our reply with its own "not accepting connections");
- at MAIL FROM a refusal ends the message; at RCPT it refuses that recipient only, and the
  message goes on for the others;
- a quarantine (or a discard at RCPT) only makes sense for the whole message once it is
  whole: it waits in `Transaction.pending` and the checks go on; a later refusal replaces it;
- where the caller says the client awaits no reply (Postfix told not to wait, see
  filterd.milter), any decision waits in `Transaction.pending` for the end of the message.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from filterd import metrics, stats
from filterd.pipeline import Pipeline
from filterd.policy import POLICY, SITE, separate_delivery
from filterd.report import log_verdict, verdict_headers
from filterd.results import (
    Action,
    AddHeader,
    Decision,
    Direction,
    Discard,
    Finding,
    Quarantine,
    Reject,
    Stage,
    TempFail,
    Verdict,
    action_of,
)
from filterd.transaction import Session, Transaction

log = logging.getLogger("filterd")


@dataclass(frozen=True)
class Step:
    """The outcome of MAIL FROM or RCPT: go on (`decision` None), or the decision to give now
    (a refusal, or a discard at MAIL FROM) with the verdict that was logged for it."""

    decision: Decision | None = None
    verdict: Verdict | None = None

    @property
    def proceeds(self) -> bool:
        return self.decision is None


PROCEED = Step()


def _waits(decision: Decision, stage: Stage) -> bool:
    """A decision that applies to the whole message once it is whole (see the module docstring)."""
    return isinstance(decision, Quarantine) or (isinstance(decision, Discard) and stage is Stage.RCPT)


class Driver:
    """One SMTP connection: its session, and the message in progress (`tx`)."""

    def __init__(self, pipeline: Pipeline, session: Session | None = None, learns: bool = True) -> None:
        self.pipeline = pipeline
        self.session = session or Session()
        self.tx: Transaction | None = None
        # False for an offline scan: it looks at a message, and must not teach the checks that
        # learn from verdicts (reputation) what no client sent
        self.learns = learns

    # -- connection stages ------------------------------------------------------------------

    def connect(self) -> None:
        """The client connected (`session.client_addr` and `client_name` set by the caller)."""
        self._session_stage(Stage.CONNECT)

    def helo(self, helo: str | None) -> None:
        self.session.helo = helo
        self._session_stage(Stage.HELO)

    def _session_stage(self, stage: Stage) -> None:
        if self.session.decision is None:  # once decided, no more work on this connection
            self.session.decision = self.pipeline.run_stage(stage, Transaction.of_connection(self.session))

    # -- message stages ---------------------------------------------------------------------

    def mail(
        self,
        sender: str | None,
        auth_user: str | None = None,
        queue_id: str | None = None,
        awaits_reply: bool = True,
    ) -> Step:
        """MAIL FROM: a new message (any message in progress is dropped, as RSET does).

        `sender` is "" for the null sender <>, None when unknown (an offline scan without one).
        After a refusal the message is over: the caller drops it with `abort`."""
        tx = self.tx = Transaction.start(self.session)
        tx.mail_from, tx.auth_user, tx.queue_id = sender, auth_user, queue_id
        tx.direction = self.pipeline.direction_of(tx)
        decision = self.session.decision or self.pipeline.run_stage(Stage.MAIL_FROM, tx)
        return self._stage_outcome(tx, Stage.MAIL_FROM, decision, awaits_reply)

    def rcpt(self, rcpt: str, awaits_reply: bool = True) -> Step:
        """RCPT TO: a refusal here refuses this recipient only."""
        tx = self.current()
        tx.rcpts.append(rcpt)
        chosen = tx.facts.get(POLICY)  # the message's policy: its first accepted recipient's
        # outbound mail is not scored: a recipient's policy has nothing to change, nor to split
        inbound = tx.direction is Direction.INBOUND
        policy = self.pipeline.policy_for(rcpt) if inbound else SITE
        if chosen is not None and policy != chosen and awaits_reply:
            # one message, one policy: this recipient comes again in a transaction of its own
            return self._refuse_rcpt(
                tx,
                rcpt,
                self._stage_outcome(tx, Stage.RCPT, separate_delivery(rcpt, policy, chosen), awaits_reply),
            )
        if self._decided(tx):
            return PROCEED  # decided already (given at the end): no more checks
        if chosen is None:
            tx.facts.set(POLICY, policy)  # its checks and lists apply from this recipient on
        senders = (chosen or policy).sender_outcome(tx.mail_from)  # the policy's sender lists
        if isinstance(senders, Reject):
            decision: Decision | None = senders  # a denied sender: this recipient is refused
        else:
            decision = self.pipeline.run_stage(Stage.RCPT, tx)
        step = self._stage_outcome(tx, Stage.RCPT, decision, awaits_reply)
        if step.decision is not None and chosen is None:
            tx.facts.set(POLICY, None)  # refused: the next recipient's policy becomes the message's
        elif isinstance(senders, Finding) and senders not in tx.findings:
            tx.findings.append(senders)  # an allowed sender: scored once per message
        return self._refuse_rcpt(tx, rcpt, step)

    @staticmethod
    def _refuse_rcpt(tx: Transaction, rcpt: str, step: Step) -> Step:
        if step.decision is not None:
            # a refusal (a quarantine or discard at RCPT waits for the end instead: `_waits`)
            assert isinstance(step.decision, Reject | TempFail)
            tx.rcpts.pop()
            tx.refused.append((rcpt, step.decision))
        return step

    def _stage_outcome(
        self, tx: Transaction, stage: Stage, decision: Decision | None, awaits_reply: bool
    ) -> Step:
        if decision is None:
            return PROCEED
        if _waits(decision, stage) or not awaits_reply:
            if not self._decided(tx):
                tx.pending = decision
            return PROCEED
        verdict = self.pipeline.verdict(tx, decision)
        log_verdict(tx, verdict)
        metrics.refused(stage, tx, verdict)
        if self.learns:  # counted for mail a client sent, not an offline scan
            stats.record(self.pipeline, tx, verdict)
        return Step(decision, verdict)

    @staticmethod
    def _decided(tx: Transaction) -> bool:
        """Is a decision waiting that no check can change (anything but a quarantine)?"""
        return tx.pending is not None and not isinstance(tx.pending, Quarantine)

    def end_of_message(self, refusal: Decision | None = None) -> Verdict:
        """The message is whole: run the header and body checks, then the verdict and the
        finishers.  `refusal` is the caller's own (a limit of the milter), given before any check.

        The verdict's `add_headers` are every header to add: the checks', the finishers', and
        for inbound mail the verdict headers (X-Spam-*)."""
        tx = self.current()
        decision = tx.pending if self._decided(tx) else refusal
        for stage in (Stage.HEADERS, Stage.EOM):
            if decision is None:
                decision = self.pipeline.run_stage(stage, tx)
                if isinstance(decision, Quarantine) and stage is Stage.HEADERS:
                    tx.pending, decision = decision, None  # the body's checks still run
        verdict = self.pipeline.verdict(tx, decision or tx.pending)
        if verdict.action in (Action.REJECT, Action.TEMPFAIL, Action.DISCARD):
            return verdict  # nothing is delivered: nothing to finish
        failed = self.pipeline.finish(tx, verdict)
        if failed is not None:  # a fail-closed finisher (signing, say) failed: tempfail instead
            verdict.decision, verdict.action = failed, action_of(failed)
            return verdict
        if tx.direction is Direction.INBOUND:
            verdict.add_headers += [AddHeader(name, value) for name, value in verdict_headers(verdict)]
        return verdict

    def message_done(self, verdict: Verdict) -> None:
        """The verdict was carried out: log its line, let the checks learn from it, end the message."""
        tx = self.current()
        try:  # the message stays current meanwhile: what is logged names its queue id
            log_verdict(tx, verdict)
            metrics.message_done(tx, verdict)
            if self.learns:
                stats.record(self.pipeline, tx, verdict)
                self.pipeline.after_verdict(tx, verdict)
        finally:
            self.tx = None

    def abort(self) -> None:
        """The message was abandoned (RSET, a lost connection): forget it."""
        self.tx = None

    def current(self) -> Transaction:
        """The message in progress."""
        if self.tx is None:  # a stage out of order: never from Postfix, but never a crash either
            raise RuntimeError("no message in progress")
        return self.tx


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
    """Run a stored message through the driver as if it came by SMTP, and return its verdict.

    Recipients refused at RCPT are in ``tx.refused`` (the others in ``tx.rcpts``); when every
    one was refused, the message never reaches DATA and the verdict is the last refusal's."""
    session = Session(client_addr=context.client_addr, client_name=context.client_name)
    driver = Driver(pipeline, session, learns=False)
    driver.connect()
    driver.helo(context.helo)
    step = driver.mail(context.mail_from, context.auth_user)
    tx = driver.current()
    refusal = step.verdict  # set while the message cannot reach DATA
    if step.proceeds:
        for rcpt in context.rcpts:
            refusal = driver.rcpt(rcpt).verdict or refusal
        if tx.rcpts or not context.rcpts:
            refusal = None
    if refusal is not None:  # refused at MAIL FROM, or every recipient at RCPT
        driver.abort()
        return tx, refusal
    tx.raw_message, tx.size = raw, len(raw)
    tx.oversized = len(raw) > pipeline.config.milter.max_scan_bytes
    verdict = driver.end_of_message()
    driver.message_done(verdict)
    return tx, verdict

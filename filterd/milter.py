"""The pymilter adapter: one method per milter callback, each handing its stage to the pipeline.

libmilter calls these methods from its own threads, one connection per thread, holding the GIL
(so one worker process uses about one core; the daemon forks several on one socket).  Nothing
here may raise into libmilter: every callback ends in a milter return code.

An unexpected exception on the milter path never tempfails.  The same bytes would fail the same
way on every retry, so a 4xx there is a retry loop that ends in a bounce days later -- mail lost
in slow motion.  Instead the message goes on and is delivered with the symbol INTERNAL_ERROR in
its report (and the traceback in the log), unless the verdict was already known: then that
verdict's 5xx or discard still stands, and a quarantine falls back to Postfix's hold queue.
Delivering a message whose verdict is unknown risks a spam in an inbox; refusing it would bounce
a ham, and a sender cannot fix our bug -- the first is the smaller harm.  4xx stays for what goes
away by itself: a dependency down (each check's `on_error`, the quarantine disk), a worker out of
memory, or a worker's in-flight byte budget spent ([milter] max_inflight_bytes).

Bounded work per message: at most [milter] max_headers header fields are kept for the checks
(more scores TOO_MANY_HEADERS), forged headers are counted per name as they arrive (not by
rescanning), and a message with more than [milter] max_forged_headers forged headers to remove
is refused with 552 5.3.4: Postfix's cleanup fails past ~10,000 removals with a 451 that would
come back on every retry.

Postfix quirks handled here:
- Macros beyond Postfix's default set ({client_addr} at connect, {auth_authen} at MAIL) must be
  asked for; pymilter's `setsymlist()` is broken on Python 3, so `negotiate()` calls the
  context's `setsymlist` directly.  contrib/postfix/main.cf asks for them too.
- P_HDR_LEADSPC is negotiated so that header values arrive with their leading white space and
  folding intact: DKIM verification needs the exact bytes.  The same option means the values we
  add must carry their own leading space.
- The queue id macro `i` first exists at DATA, so it is read again at end of message.
- No end-of-headers callback (SMFIP_NOEOH): the header checks run at the start of end of message.
  Postfix would await no reply at end of headers anyway (a decision there could only be held until
  the end), so the verdict is the same, and each message costs one packet and one call into
  Python less.  A header check still never sees the body's findings: it runs before them.
- A reject at CONNECT reaches the client as Postfix's own "554 ... not accepting connections",
  whatever text the milter set.  So a decision at CONNECT or HELO is held and given at MAIL FROM
  (as Postfix's smtpd_delay_reject does): the client then sees filterd's reason.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import Milter
import milter

from filterd import maillog, worker
from filterd.auth.results import our_ids
from filterd.driver import Driver, Step
from filterd.pipeline import Pipeline
from filterd.policy import policy_of
from filterd.quarantine.store import QuarantineError, QuarantineStore, meta_from
from filterd.replies import (
    R451_CHECK_FAILED,
    R552_MESSAGE_TOO_BIG,
    Decision,
    Reject,
    Reply,
    TempFail,
)
from filterd.report import (
    CLAIM_HEADERS,
    FORGEABLE_PREFIXES,
    REPORT_HEADER,
    drop_fields,
    is_forgeable,
    verdict_headers,
)
from filterd.results import Action, Direction, Finding, Stage, Verdict
from filterd.transaction import Transaction
from filterd.worker import busy

log = logging.getLogger("filterd")

MACROS = {
    Milter.M_CONNECT: "j {daemon_name} {client_addr} {client_port} {client_name} {client_ptr}",
    Milter.M_ENVFROM: "i {auth_type} {auth_authen} {mail_addr}",
    Milter.M_ENVRCPT: "i {rcpt_addr}",
    Milter.M_EOH: "i",
    Milter.M_EOM: "i",
}


R552_TOO_MANY_HEADERS = R552_MESSAGE_TOO_BIG.with_text("Too many header fields")
R452_WORKER_BUSY = Reply(452, "4.3.1", "Too much mail in progress here, please try again later")


class InflightBudget:
    """The bytes the messages in flight hold in this worker, against [milter] max_inflight_bytes.

    A message that would pass the limit stops being kept and ends in 452 4.3.1 (a resource
    limit: the client retries later, by when the others are done).  One per worker process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.held = 0

    def take(self, amount: int, limit: int) -> bool:
        with self._lock:
            if self.held + amount > limit:
                return False
            self.held += amount
            return True

    def give_back(self, amount: int) -> None:
        if amount:
            with self._lock:
                self.held -= amount


budget = InflightBudget()

# libmilter passes header values and reply texts as C strings from UTF-8 (pymilter's "s"
# format): a lone surrogate (a raw 8-bit byte that is not UTF-8, kept by surrogateescape) or a
# NUL makes pymilter raise.  Such a byte is most likely Latin-1 / Windows-1252: read it so.
_TO_MILTER = {0xDC80 + b: chr(0x80 + b) for b in range(128)} | {0: None}


def milter_text(text: str) -> str:
    """`text` as libmilter can carry it (see `_TO_MILTER`); unchanged when it already can."""
    if text.isascii() and "\0" not in text:
        return text
    return text.translate(_TO_MILTER)


# The first letters of every header name `is_forgeable` can be true for, in both cases: the other
# headers -- nearly all of them -- cost one slice and one set lookup on the hot path.
_FORGEABLE_INITIALS = frozenset(
    c for prefix in (*FORGEABLE_PREFIXES, *CLAIM_HEADERS) for c in (prefix[0].lower(), prefix[0].upper())
)

# The callbacks whose reply Postfix may be told not to wait for, and the option bit that says so.
_NO_REPLY_BITS = {
    "connect": Milter.P_NR_CONN,
    "hello": Milter.P_NR_HELO,
    "envfrom": Milter.P_NR_MAIL,
    "envrcpt": Milter.P_NR_RCPT,
}
_SESSION_CALLBACKS = ("connect", "hello")  # their decisions are held until MAIL FROM


def _fail_safe(method: Callable[..., int]) -> Callable[..., int]:
    """No exception reaches libmilter, and none ends in a retry loop (see the module docstring)."""

    def wrapper(self: FilterdMilter, *args: Any) -> int:
        key = id(self)
        busy[key] = time.monotonic()  # for the heartbeat: a callback that never ends is a hang
        with maillog.handling(self):  # every line logged meanwhile starts with the queue id
            try:
                return method(self, *args)
            except MemoryError:  # a resource limit of this worker: retrying later is right
                log.error("%s: out of memory in %s, tempfailing", self.queue_id, method.__name__)
                return self._tempfail_now(method.__name__, TempFail(R452_WORKER_BUSY, "out of memory"))
            except Exception:
                log.exception(
                    "%s: internal error in %s, going on with INTERNAL_ERROR", self.queue_id, method.__name__
                )
                return self._recover(method.__name__)
            finally:
                busy.pop(key, None)

    wrapper.__name__ = method.__name__
    wrapper.__doc__ = method.__doc__
    return wrapper


@dataclass(frozen=True)
class MilterAction:
    """What the milter tells libmilter for one outcome of the driver.

    Plain data made by the pure functions below (`step_action`, `verdict_action`), so a test
    checks the translation without libmilter; `FilterdMilter` only carries it out."""

    rc: Literal["continue", "accept", "reject", "tempfail", "discard"]
    reply: Reply | None = None  # for reject and tempfail
    store: bool = False  # keep the message in filterd's quarantine store, then discard it
    hold: str | None = None  # put it in Postfix's hold queue, with this reason
    add_headers: tuple[tuple[str, str], ...] = ()
    remove_forged: bool = False  # the forged headers the milter counted go
    subject_tag: str | None = None  # put before the Subject


def step_action(step: Step) -> MilterAction:
    """MAIL FROM or RCPT: go on, or give the decision now."""
    decision = step.decision
    if decision is None:
        return MilterAction("continue")
    if isinstance(decision, Reject):
        return MilterAction("reject", decision.reply)
    if isinstance(decision, TempFail):
        return MilterAction("tempfail", decision.reply)
    return MilterAction("discard")  # a Discard (the driver keeps a quarantine for the end)


def verdict_action(
    verdict: Verdict, quarantine_mode: str, kept_whole: bool, subject_tag: str
) -> MilterAction:
    """End of message: carry out the verdict.

    A quarantine is stored by filterd (mode "store") only when the message was kept whole; a body
    too large to keep goes to Postfix's hold queue, which keeps all of it."""
    decision = verdict.decision
    if isinstance(decision, Reject):
        return MilterAction("reject", decision.reply)
    if isinstance(decision, TempFail):
        return MilterAction("tempfail", decision.reply)
    if verdict.action is Action.DISCARD:
        return MilterAction("discard")
    headers = tuple((h.name, h.value) for h in verdict.add_headers)
    if verdict.action is Action.QUARANTINE:
        if quarantine_mode == "store" and kept_whole:
            return MilterAction("discard", store=True, add_headers=headers)
        reason = decision.reason if decision is not None else f"score {verdict.score}"
        return MilterAction("accept", hold=reason, add_headers=headers, remove_forged=True)
    tag = subject_tag if verdict.action is Action.REWRITE_SUBJECT else None
    return MilterAction("accept", add_headers=headers, remove_forged=True, subject_tag=tag)


_RC = {
    "continue": Milter.CONTINUE,
    "accept": Milter.ACCEPT,
    "reject": Milter.REJECT,
    "tempfail": Milter.TEMPFAIL,
    "discard": Milter.DISCARD,
}


class FilterdMilter(Milter.Base):
    """One connection from Postfix: each callback hands its stage to a `Driver`."""

    def __init__(self) -> None:
        holder = worker.holder
        assert holder is not None, "the worker sets filterd.worker.holder before serving"
        self.holder = holder
        self.pipeline = holder.current()
        self.driver = Driver(self.pipeline)
        self.session = self.driver.session
        self.in_message = False  # between MAIL FROM and the message's end (counted by the holder)
        self._reset_message_state()
        self._authserv_ids: tuple[str, ...] = ()  # A-R headers claiming these are forged
        self._authserv_ids_of: Pipeline | None = None  # the pipeline they were read from
        self._header_rc = self._body_rc = Milter.CONTINUE

    @property
    def tx(self) -> Transaction | None:
        """The message in progress (the driver's)."""
        return self.driver.tx

    def _reset_message_state(self) -> None:
        """Per message, besides the transaction: header counts, forged headers, budget, what was applied."""
        self.forged: list[tuple[str, int]] = []  # (header name, index among that name) to remove
        self.forged_positions: set[int] = set()  # their places in tx.raw_headers, when kept
        self.name_counts: dict[str, int] = {}  # forgeable-looking names (lower case) seen so far
        self.headers_seen = 0
        self.charged = 0  # bytes taken from the worker's budget for this message
        self.over_budget = False
        self.verdict: Verdict | None = None  # once computed at end of message
        self.applied: set[str] = set()  # steps of the verdict carried out ("forged", header names)
        config = self.pipeline.config.milter
        self.max_headers = config.max_headers
        self.max_forged = config.max_forged_headers
        self.max_inflight = config.max_inflight_bytes

    # -- negotiation ----------------------------------------------------------------------------

    def negotiate(self, opts: list[int]) -> int:
        offered = opts[1]
        rc: int = super().negotiate(opts)
        # Postfix need not wait for our answer to MAIL FROM or RCPT TO when no enabled check could
        # refuse there (no deny list, no greylisting, no SPF...): two round trips less per message.
        # Nor ever at CONNECT and HELO: a decision there is held until MAIL FROM anyway (see the
        # module docstring), so the answer is always "continue" -- two round trips less per
        # connection, which on an MX is about one message.
        quiet = Milter.P_NR_CONN | Milter.P_NR_HELO
        if not self.pipeline.may_decide(Stage.CONNECT, Stage.HELO, Stage.MAIL_FROM):
            quiet |= Milter.P_NR_MAIL
        if not self.pipeline.may_decide(Stage.RCPT):
            quiet |= Milter.P_NR_RCPT
        quiet &= offered
        opts[1] |= quiet
        self._protocol |= quiet
        # With the no-reply options negotiated, header and body callbacks answer NOREPLY.
        self._header_rc = Milter.NOREPLY if self._protocol & Milter.P_NR_HDR else Milter.CONTINUE
        self._body_rc = Milter.NOREPLY if self._protocol & Milter.P_NR_BODY else Milter.CONTINUE
        for stage, macros in MACROS.items():
            try:
                self._ctx.setsymlist(stage, macros)
            except Exception:  # an MTA without SETSYMLIST: contrib/postfix/main.cf asks for them too
                log.debug("setsymlist not supported by the MTA")
                break
        return rc

    def _quiet(self, callback: str) -> bool:
        """Was it negotiated that Postfix awaits no reply to this callback?"""
        return bool(self._protocol & _NO_REPLY_BITS.get(callback, 0))

    @property
    def queue_id(self) -> str:
        return (self.tx.queue_id if self.tx else None) or "NOQUEUE"

    # -- connection stages ----------------------------------------------------------------------

    @_fail_safe
    def connect(self, hostname: str, family: int, hostaddr: Any) -> int:
        s = self.session
        if family in (socket.AF_INET, socket.AF_INET6) and hostaddr:
            s.client_addr, s.client_port = str(hostaddr[0]), int(hostaddr[1])
        s.macros["j"] = self.getsymval("j") or ""
        name = self.getsymval("{client_name}") or hostname
        # Postfix says "unknown" (or gives "[addr]") when the client has no verified reverse DNS
        s.client_name = None if not name or name == "unknown" or name.startswith("[") else name
        self.driver.connect()
        return Milter.NOREPLY if self._quiet("connect") else Milter.CONTINUE

    @_fail_safe
    def hello(self, helo: str) -> int:
        self.driver.helo(helo)
        return Milter.NOREPLY if self._quiet("hello") else Milter.CONTINUE

    # -- message stages -------------------------------------------------------------------------

    @_fail_safe
    def envfrom(self, mail_from: str, *params: str) -> int:
        self._end_message()  # a new MAIL FROM without an end (RSET): start over
        self.pipeline = self.driver.pipeline = self.holder.current()  # a reload applies from here
        self._reset_message_state()
        self.holder.message_started()
        self.in_message = True
        quiet = self._quiet("envfrom")
        step = self.driver.mail(
            mail_from.strip().removeprefix("<").removesuffix(">"),
            auth_user=self.getsymval("{auth_authen}") or None,
            queue_id=self.getsymval("i") or None,
            awaits_reply=not quiet,  # else a decision is held (e.g. after a reload mid-connection)
        )
        if self._authserv_ids_of is not self.pipeline:  # once per connection and configuration
            self._authserv_ids = our_ids(self.pipeline.config, self.session.macros.get("j"))
            self._authserv_ids_of = self.pipeline
        if quiet:
            return Milter.NOREPLY
        if step.proceeds:
            return Milter.CONTINUE
        rc = self._carry_out(step_action(step))
        self._end_message()
        return rc

    @_fail_safe
    def envrcpt(self, rcpt: str, *params: str) -> int:
        quiet = self._quiet("envrcpt")
        step = self.driver.rcpt(rcpt.strip().removeprefix("<").removesuffix(">"), awaits_reply=not quiet)
        if quiet:
            return Milter.NOREPLY
        if step.proceeds:
            return Milter.CONTINUE
        return self._carry_out(step_action(step))  # a refusal refuses this recipient only

    @Milter.noreply
    def header(self, name: str, value: str) -> int:
        """Declared for protocol negotiation only (no reply wanted); `on_header` does the work."""
        return Milter.CONTINUE

    @Milter.noreply
    def body(self, chunk: bytes) -> int:
        """Declared for protocol negotiation only (no reply wanted); `on_body` does the work."""
        return Milter.CONTINUE

    @_fail_safe
    def eom(self) -> int:
        """End of message.  The header checks run here too, first (see the module docstring)."""
        tx = self._tx()
        tx.queue_id = self.getsymval("i") or tx.queue_id
        if not tx.oversized:
            self._charge(tx)  # a message without a body: its headers
        if self.headers_seen > self.max_headers:
            tx.findings.append(
                Finding(
                    "TOO_MANY_HEADERS",
                    f"{self.headers_seen} header fields; the checks saw the first {self.max_headers}",
                )
            )
        verdict = self.verdict = self.driver.end_of_message(self._limit_decision())
        config = self.pipeline.config
        tag = policy_of(tx).actions_over(config.actions).subject_tag  # the recipients' policy's tag
        action = verdict_action(verdict, config.quarantine.mode, not tx.oversized, tag)
        rc = self._carry_out(action)  # from here on the verdict is carried out: it stands
        with _logged("logging the verdict"):
            self.driver.message_done(verdict)  # its log line; reputation learns the final verdict
        self._end_message()  # (after an exception, `_recover` ends it, still knowing the message)
        return rc

    def _limit_decision(self) -> Decision | None:
        """A refusal for a message past a per-message or per-worker limit, before any check runs."""
        if self.over_budget:
            return TempFail(
                R452_WORKER_BUSY, f"worker holds over {self.max_inflight} bytes of mail in flight"
            )
        if len(self.forged) > self.max_forged:
            return Reject(R552_TOO_MANY_HEADERS, f"over {self.max_forged} forged headers to remove")
        return None

    def _charge(self, tx: Transaction) -> bool:
        """Take what this message holds now from the worker's budget; False once it is over.

        While the message is kept whole, what it holds is `tx.size`; only the rest is taken."""
        if self.over_budget:
            return False
        amount = tx.size - self.charged
        if amount <= 0:
            return True
        if budget.take(amount, self.max_inflight):
            self.charged += amount
            return True
        self.over_budget = True  # drop what it holds: the message ends in 452 at end of message
        tx.body_chunks.clear()
        tx.raw_headers.clear()
        tx.oversized = True
        return False

    def _recover(self, callback: str) -> int:
        """After an unexpected exception in `callback`: go on, marked INTERNAL_ERROR."""
        finding = Finding("INTERNAL_ERROR", f"filterd internal error in {callback} (see its log)")
        if callback == "eom":
            try:
                return self._deliver_despite_error(finding)
            finally:
                self._end_message()
        if callback in _SESSION_CALLBACKS:
            self.session.findings.append(finding)
        elif self.tx is not None:
            self.tx.findings.append(finding)
        return Milter.NOREPLY if self._quiet(callback) else Milter.CONTINUE

    def _tempfail_now(self, callback: str, decision: TempFail) -> int:
        if self._quiet(callback):  # no reply awaited now: the tempfail is held
            if callback in _SESSION_CALLBACKS:  # given at MAIL FROM, like any decision there
                self.session.decision = decision
            elif self.tx is not None:  # given at the end of the message
                self.tx.pending = decision
            return Milter.NOREPLY
        self._setreply(decision.reply)
        self._end_message()
        return Milter.TEMPFAIL

    def _deliver_despite_error(self, finding: Finding) -> int:
        """End of message after an internal error: a decision already known stands, else deliver.

        Every step is guarded on its own: this is the last chance to answer anything but 4xx."""
        verdict, tx = self.verdict, self.tx
        if verdict is not None:
            if isinstance(verdict.decision, Reject | TempFail):
                self._setreply(verdict.decision.reply)
                return Milter.REJECT if isinstance(verdict.decision, Reject) else Milter.TEMPFAIL
            if verdict.action is Action.DISCARD:
                return Milter.DISCARD
            if verdict.action is Action.QUARANTINE:
                with _logged("holding the message"):
                    self.quarantine(milter_text(f"internal error; {verdict.decision or verdict.score}"))
        if "forged" not in self.applied:
            for name, index in reversed(self.forged[: self.max_forged]):
                with _logged(f"removing {name}"):
                    self.chgheader(milter_text(name), index, None)
        if tx is not None and tx.direction is Direction.INBOUND and REPORT_HEADER not in self.applied:
            report = f"action=accept (internal error)\n\t*   0.0 {finding.symbol} {finding.reason}"
            with _logged("adding the report"):
                tx.findings.append(finding)
                report = dict(verdict_headers(self.pipeline.verdict(tx)))[REPORT_HEADER]
            with _logged("adding the report"):
                self.addheader(REPORT_HEADER, " " + milter_text(report))
        if tx is not None:
            with _logged("logging"):
                log.warning("%s: delivered despite an internal error", self.queue_id)
        return Milter.ACCEPT

    def abort(self) -> int:
        self._end_message()
        return Milter.CONTINUE

    def close(self) -> int:
        self._end_message()
        return Milter.CONTINUE

    # -- helpers --------------------------------------------------------------------------------

    def _tx(self) -> Transaction:
        return self.driver.current()

    def _end_message(self) -> None:
        if self.in_message:
            self.in_message = False
            self.driver.abort()
            self.holder.message_ended()
            budget.give_back(self.charged)
            self.charged = 0

    def _carry_out(self, action: MilterAction) -> int:
        """Do what `action` says through libmilter, and return its return code."""
        if action.reply is not None:
            self._setreply(action.reply)
        if action.store:
            return self._store_quarantined(list(action.add_headers))
        if action.remove_forged:
            for name, index in reversed(self.forged):
                self.chgheader(milter_text(name), index, None)
            self.applied.add("forged")
        if action.hold is not None:
            self.quarantine(milter_text(action.hold))
        for name, value in action.add_headers:
            self.addheader(name, " " + milter_text(value))  # P_HDR_LEADSPC: we supply the leading space
            self.applied.add(name)
        if action.subject_tag is not None:
            self._rewrite_subject(action.subject_tag)
        return int(_RC[action.rc])

    def _setreply(self, reply: Reply) -> None:
        try:
            self.setreply(str(reply.code), reply.dsn, milter_text(reply.text).replace("%", "%%"))
        except Exception:  # the default reply of the return code still goes out
            log.warning("could not set the SMTP reply %s", reply)

    def _store_quarantined(self, headers: list[tuple[str, str]]) -> int:
        """Keep the message in filterd's quarantine, and only once it is on disk discard it.

        If it cannot be stored (disk full, read-only, permissions) the message is tempfailed:
        the client keeps it and retries, so nothing is lost."""
        tx, verdict = self._tx(), self.verdict
        assert verdict is not None
        store = QuarantineStore(self.pipeline.config.quarantine)
        try:
            qid = store.put(self._without_forged(tx), headers, meta_from(tx, verdict))
        except QuarantineError as exc:
            log.error("%s: quarantine failed, tempfailing: %s", self.queue_id, exc)
            self._setreply(R451_CHECK_FAILED)
            return Milter.TEMPFAIL
        log.info("%s: quarantined as %s in %s", self.queue_id, qid, store.dir)
        return Milter.DISCARD

    def _without_forged(self, tx: Transaction) -> bytes:
        """The message as stored in quarantine: without the forged headers the delivered copy
        loses (a released message must not carry a sender's X-Spam-* or our authserv-id)."""
        raw = tx.message.raw
        if not self.forged_positions:
            return raw
        return drop_fields(raw, self.forged_positions)

    def _rewrite_subject(self, tag: str) -> None:
        subjects = [v for n, v in self._tx().raw_headers if n.lower() == "subject"]
        if subjects:
            self.chgheader("Subject", 1, milter_text(f" {tag} {subjects[0].lstrip()}"))
        else:
            self.addheader("Subject", f" {tag}")


# -- what libmilter calls -----------------------------------------------------------------------
# Module functions rather than pymilter's generic wrappers: about 27 calls a message come from C
# (one per header), and each frame less counts.  pymilter hands envelope and header values over
# as bytes; they are decoded as pymilter's own wrappers would (UTF-8, surrogateescape).


def on_mail(ctx: Any, sender: bytes, *params: bytes) -> int:
    return ctx.getpriv().envfrom(sender.decode("utf-8", "surrogateescape"))


def on_rcpt(ctx: Any, rcpt: bytes, *params: bytes) -> int:
    return ctx.getpriv().envrcpt(rcpt.decode("utf-8", "surrogateescape"))


def on_header(ctx: Any, name: str, value: bytes) -> int:
    """Each header: the hot path, kept to a few lines.

    Only a name that starts like a forgeable one (X-..., Authentication-Results) is counted,
    per name as it arrives (its index among namesakes is what chgheader needs); only the first
    `max_headers` fields are kept for the checks."""
    m: FilterdMilter = ctx.getpriv()
    tx = m.driver.tx  # (not the property: this runs once per header)
    if tx is not None:
        try:
            text = value.decode("utf-8", "surrogateescape")
            headers = tx.raw_headers
            tx.size += len(name) + len(value) + 3
            m.headers_seen += 1
            kept = m.headers_seen <= m.max_headers and not m.over_budget
            if kept:
                headers.append((name, text))
            if name[:1] in _FORGEABLE_INITIALS:
                key = name.lower()
                index = m.name_counts[key] = m.name_counts.get(key, 0) + 1
                if len(m.forged) <= m.max_forged and is_forgeable(
                    name, text, m._authserv_ids, tx.add_headers
                ):
                    m.forged.append((name, index))  # one past the cap is enough to refuse
                    if kept:
                        m.forged_positions.add(len(headers) - 1)
        except Exception:
            log.exception("%s: internal error in header", m.queue_id)
            m._recover("header")
    return m._header_rc


def on_body(ctx: Any, chunk: bytes) -> int:
    m: FilterdMilter = ctx.getpriv()
    tx = m.driver.tx  # (not the property: this runs once per header)
    if tx is not None:
        try:
            tx.size += len(chunk)
            if not tx.oversized:
                if tx.size > m.pipeline.config.milter.max_scan_bytes:
                    tx.oversized = True  # stop keeping the body: memory stays bounded per message
                    tx.body_chunks.clear()
                    budget.give_back(m.charged)  # (the headers kept are small and bounded)
                    m.charged = 0
                elif m._charge(tx):
                    tx.body_chunks.append(chunk)
        except Exception:
            log.exception("%s: internal error in body", m.queue_id)
            m._recover("body")
    return m._body_rc


def on_eom(ctx: Any) -> int:
    return ctx.getpriv().eom()


def on_abort(ctx: Any) -> int:
    return ctx.getpriv().abort()


@contextlib.contextmanager
def _logged(step: str) -> Iterator[None]:
    """Run a step whose failure must not change the message's fate: log it and go on."""
    try:
        yield
    except Exception:
        log.exception("%s failed", step)


def install_callbacks(timeout: int) -> None:
    """Register the callbacks with libmilter (what pymilter's runmilter does, minus running)."""
    Milter.factory = FilterdMilter
    milter.set_connect_callback(Milter.connect_callback)
    milter.set_helo_callback(lambda ctx, host: ctx.getpriv().hello(host))
    milter.set_envfrom_callback(on_mail)
    milter.set_envrcpt_callback(on_rcpt)
    milter.set_header_callback(on_header)
    milter.set_body_callback(on_body)
    milter.set_eom_callback(on_eom)
    milter.set_abort_callback(on_abort)
    milter.set_close_callback(Milter.close_callback)
    milter.settimeout(timeout)
    milter.register(
        "filterd",
        data=lambda ctx: ctx.getpriv().data(),
        unknown=lambda ctx, cmd: ctx.getpriv().unknown(cmd),
        negotiate=Milter.negotiate_callback,
    )


Milter.enable_protocols(FilterdMilter, Milter.P_HDR_LEADSPC)  # sets the class's protocol mask

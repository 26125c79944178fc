"""SPF (RFC 7208): may the client send mail for the MAIL FROM domain, and for its HELO name?

Runs at MAIL FROM, so a `fail` is refused before any data is sent.  The MAIL FROM identity gives
the SPF_* symbols; the HELO identity gives SPF_HELO_* symbols and is scored on its own.  The HELO
identity is checked when the sender is null ``<>`` (RFC 7208 2.4: it then stands in for MAIL FROM)
and, with ``helo_identity = "always"``, for every message.

Each result maps to an action: "score" (the symbol's score counts), "reject" (5xx now) or
"tempfail" (4xx now).  By default only `fail` rejects, with ``550 5.7.23`` and the SPF explanation;
`temperror` (a DNS failure) is scored, never rejected, so a broken resolver cannot lose mail.
Mail from trusted forwarders (their networks listed) and outbound mail are not checked: a
forwarder's address is never in the original sender's SPF record.

pyspf does the evaluation.  Its DNS goes through dnspython's default resolver, which
`Services.resolver` points at our resolver (same servers, same TTL cache), and ``max_time`` bounds
the whole evaluation (pyspf's querytime): past it the result is temperror.  Every lookup pyspf
makes is also counted against the message's DNS budget (`_BudgetedQuery`), and the evaluation may
take no longer than the budget's seconds left: past either, the result is temperror.  pyspf's own
limits (RFC 7208 4.6.4: 10 lookups that count, 2 void lookups) still apply within it.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import spf

from filterd.auth.results import SPF, SPF_HELO, SpfResult, our_hostname
from filterd.check import AddHeader, Check, CheckContext, CheckSettings, Cost, Finding, Output, Stage
from filterd.dns import DnsBudget, DnsTempError
from filterd.replies import (
    R451_SPF_DEFERRED,
    R451_SPF_TEMPERROR,
    R550_SPF_FAIL,
    R550_SPF_PERMERROR,
    Reject,
    TempFail,
)
from filterd.settings import ip_networks, positive, setting
from filterd.transaction import Transaction

log = logging.getLogger("filterd.checks.spf")

Action = Literal["score", "reject", "tempfail"]
RESULTS = ("pass", "fail", "softfail", "neutral", "none", "temperror", "permerror")

# A host name as HELO should give it: letters, digits, hyphens, at least two labels.
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)(?:[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z0-9-]{1,63}\.?$"
)


@dataclass(frozen=True)
class SpfSettings(CheckSettings):
    on_fail: Action = setting(
        "reject", 'MAIL FROM result "fail": "reject" (550 5.7.23), "score" or "tempfail"'
    )
    on_softfail: Action = setting("score", 'MAIL FROM result "softfail"')
    on_neutral: Action = setting("score", 'MAIL FROM result "neutral"')
    on_none: Action = setting("score", 'MAIL FROM result "none" (no SPF record)')
    on_permerror: Action = setting(
        "score", 'MAIL FROM result "permerror" (a broken record): reject is 550 5.7.24'
    )
    on_temperror: Literal["score", "tempfail"] = setting(
        "score", 'MAIL FROM result "temperror" (DNS failure): "score", or "tempfail" (451 4.7.24)'
    )
    helo_identity: Literal["null_sender", "always", "never"] = setting(
        "null_sender", 'check the HELO name: "null_sender" (only when MAIL FROM is <>), "always" or "never"'
    )
    helo_on_fail: Action = setting("score", 'HELO result "fail"')
    trusted_forwarders: tuple[str, ...] = setting(
        (),
        "networks of forwarders (secondary MX, list servers) whose mail is not SPF-checked",
        ip_networks,
    )
    max_time: float = setting(
        10.0, "seconds one SPF evaluation may take in all; past it the result is temperror", positive
    )
    received_spf: bool = setting(True, "add a Received-SPF header (RFC 7208 9.1) for each identity checked")


class Spf(Check):
    name = "spf"
    stage = Stage.MAIL_FROM
    description = "SPF of the MAIL FROM and HELO identities (RFC 7208)"
    symbols = {
        "SPF_PASS": -0.5,
        "SPF_FAIL": 3.0,
        "SPF_SOFTFAIL": 1.5,
        "SPF_NEUTRAL": 0.0,
        "SPF_NONE": 0.0,  # no record says nothing (as rspamd R_SPF_NA)
        "SPF_TEMPERROR": 0.5,
        "SPF_PERMERROR": 1.0,
        "SPF_HELO_PASS": -0.1,
        "SPF_HELO_FAIL": 2.0,
        "SPF_HELO_SOFTFAIL": 1.0,
        "SPF_HELO_NEUTRAL": 0.0,
        "SPF_HELO_NONE": 0.0,
        "SPF_HELO_TEMPERROR": 0.0,
        "SPF_HELO_PERMERROR": 0.5,
        "SPF_TRUSTED_FORWARDER": 0.0,
    }
    Settings = SpfSettings
    provides = (SPF, SPF_HELO)
    cost = Cost.NETWORK

    def __init__(self, ctx: CheckContext[SpfSettings]) -> None:
        super().__init__(ctx)
        settings = ctx.settings
        self.spf_settings = settings
        self.forwarders = [ipaddress.ip_network(n, strict=False) for n in settings.trusted_forwarders]
        ctx.services.resolver  # noqa: B018 -- made now, it points dnspython's default resolver (pyspf's) at ours
        self.per_lookup = min(settings.max_time, ctx.dns.timeout * ctx.dns.attempts)

    def run(self, tx: Transaction) -> Iterable[Output]:
        ip = tx.session.client_ip
        if ip is None:
            return  # a local submission or an offline scan without --client-ip: nothing to check
        for net in self.forwarders:
            if ip.version == net.version and ip in net:
                yield Finding(
                    "SPF_TRUSTED_FORWARDER", f"client {ip} is a trusted forwarder ({net}): SPF not checked"
                )
                return
        s = self.spf_settings
        helo = (tx.session.helo or "").strip()
        sender = (tx.mail_from or "").strip().strip("<>")
        if s.helo_identity == "always" or (not sender and s.helo_identity == "null_sender"):
            yield from self._helo(tx, str(ip), helo)
        if sender:
            yield from self._mail_from(tx, str(ip), sender, helo)

    def _helo(self, tx: Transaction, ip: str, helo: str) -> Iterable[Output]:
        if not _HOSTNAME.match(helo):
            shown = helo[:60] or "(none)"
            yield Finding("SPF_HELO_NONE", f"HELO {shown!r} is not a host name: no HELO identity to check")
            return
        result, header = self._evaluate(tx, ip, "", helo, "helo")
        tx.facts.set(SPF_HELO, result)
        action = self.spf_settings.helo_on_fail if result.result == "fail" else "score"
        yield from self._outputs(result, header, ip, "SPF_HELO", action)

    def _mail_from(self, tx: Transaction, ip: str, sender: str, helo: str) -> Iterable[Output]:
        result, header = self._evaluate(tx, ip, sender, helo or "unknown", "mailfrom")
        tx.facts.set(SPF, result)
        action: str = getattr(self.spf_settings, f"on_{result.result}", "score")
        yield from self._outputs(result, header, ip, "SPF", action)

    def _evaluate(
        self, tx: Transaction, ip: str, sender: str, helo: str, identity: Literal["mailfrom", "helo"]
    ) -> tuple[SpfResult, str]:
        """The SPF result of one identity, and the Received-SPF value pyspf writes for it."""
        budget = tx.dns_budget_for(self.ctx.dns)
        left = budget.remaining_seconds()
        receiver = our_hostname(self.site.hostname, tx.session.macros.get("j"))
        q = _BudgetedQuery(
            budget,
            i=ip,
            s=sender,
            h=helo,
            receiver=receiver,
            # pyspf reads querytime 0 as "no bound": a spent budget is a tiny positive one
            querytime=max(0.001, min(self.spf_settings.max_time, left)),
        )
        # pyspf sets the per-lookup timeout to querytime; put ours back, so one silent server
        # costs one lookup's time ([dns] timeout x attempts), while querytime still bounds the whole.
        q.timeout = min(self.per_lookup, q.querytime)
        started = time.monotonic()
        try:
            result, _code, explanation = q.check()
        except Exception as exc:  # pyspf on a name DNS cannot hold (8-bit bytes: IDNAException...)
            log.debug("pyspf failed on %r / %r: %s: %s", sender, helo, type(exc).__name__, exc)
            result, explanation = "permerror", f"cannot be evaluated: {type(exc).__name__}"
        finally:
            budget.charge(time.monotonic() - started)
        domain = helo.lower().rstrip(".") if identity == "helo" else sender.rpartition("@")[2].lower()
        checked = q.s if identity == "helo" else sender
        try:
            header = q.get_header(result, receiver)
        except (AttributeError, KeyError, ValueError):  # pyspf's header needs state a failed query lacks
            header = f"{result.capitalize()} ({receiver}: {explanation}) identity={identity}"
        return SpfResult(result, identity, domain, checked, str(explanation or "")), header

    def _outputs(self, r: SpfResult, header: str, ip: str, prefix: str, action: str) -> Iterable[Output]:
        ident = "HELO " + r.domain if r.identity == "helo" else f"<{r.sender}>"
        reason = f"{ident} from [{ip}]: {r.result}"
        if r.explanation and r.result != "pass":
            reason += f" ({r.explanation})"
        if self.spf_settings.received_spf:
            yield AddHeader("Received-SPF", header)
        yield Finding(f"{prefix}_{r.result.upper()}", reason)
        if action == "reject":
            reply = R550_SPF_PERMERROR if r.result == "permerror" else R550_SPF_FAIL
            yield Reject(reply.with_text(_reply_text(r, ip)), f"SPF {r.result} for {ident}")
        elif action == "tempfail":
            reply = R451_SPF_TEMPERROR if r.result == "temperror" else R451_SPF_DEFERRED
            yield TempFail(reply.with_text(_reply_text(r, ip)), f"SPF {r.result} for {ident}")


class _BudgetedQuery(spf.query):
    """pyspf's query, with each lookup it makes counted against the message's DNS budget.

    `dns` is pyspf's one way to DNS (CNAMEs are followed through it too); an answer pyspf already
    holds costs nothing.  Time is charged for the whole evaluation by the caller."""

    def __init__(self, budget: DnsBudget, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.budget = budget

    def dns(self, name: Any, qtype: Any, cnames: Any = None, ignore_void: bool = False) -> Any:
        key = (str(name or "").lower().rstrip("."), qtype)
        if not self.cache.get(key):
            try:
                self.budget.spend(f"{key[0]} {qtype}")
            except DnsTempError as exc:
                raise spf.TempError(str(exc)) from exc
        return super().dns(name, qtype, cnames=cnames, ignore_void=ignore_void)


def _reply_text(r: SpfResult, ip: str) -> str:
    """The reply text: the SPF result and the explanation (the domain's exp= text when it has one).

    The explanation is text from the sender's DNS: only printable ASCII is kept.  (libmilter
    ignores a reply text holding a single '%'; doubling it is the milter's job, where it calls
    setreply, so it is left alone here.)"""
    who = f"HELO {r.domain}" if r.identity == "helo" else f"<{r.sender}>"
    text = f"SPF {r.result} for {who} from [{ip}]"
    if r.explanation:
        text += f": {r.explanation}"
    return "".join(c if " " <= c <= "~" else " " for c in text)[:300]

"""DMARC (RFC 7489): does an SPF or DKIM pass align with the From domain, and what does the
domain ask for when neither does?

Reads the SPF and DKIM results the earlier checks left on ``tx.auth_results``.  SPF counts when
the MAIL FROM result is pass and its domain aligns (for the null sender, the HELO identity, as
RFC 7489 4.1 says); DKIM counts when any signature passed with an aligned d=.  Relaxed alignment
compares organisational domains (Public Suffix List), strict the domains themselves.

A failing message gets the policy's disposition: p= (or sp= when the record was found at the
organisational domain of a subdomain), made one step milder when pct= leaves it out of the
sample.  ``reject`` rejects with ``550 5.7.26`` by default (or quarantines, or only scores);
``quarantine`` quarantines by default (or only scores).  A DNS failure gives dmarc=temperror and
no action.  If the DKIM check did not run (the message was over max_scan_bytes, or the check
failed) and SPF did not align, DMARC cannot be judged: temperror, no action -- never a reject on
half the evidence.

A message with no From address is out of DMARC's scope (dmarc=none, DMARC_NO_FROM).  From
addresses of several domains cannot be judged either (dmarc=permerror, DMARC_MULTI_FROM); the
``multiple_from`` setting scores or rejects them (RFC 7489 6.6.1 allows rejecting).
"""

from __future__ import annotations

import email.utils
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from filterd.auth.dmarc import RecordError, aligned, disposition, find_policy
from filterd.auth.results import DKIM, DMARC, SPF, SPF_HELO, DkimResult, DmarcResult, SpfResult
from filterd.check import Check, CheckSettings, Finding, Output, Stage
from filterd.checks.auth_results import header_for
from filterd.config import Config
from filterd.dns import DnsTempError
from filterd.replies import R550_DMARC_REJECT, R550_FROM_AMBIGUOUS, Quarantine, Reject
from filterd.services import Services
from filterd.settings import setting
from filterd.transaction import Transaction


@dataclass(frozen=True)
class DmarcSettings(CheckSettings):
    on_reject: Literal["reject", "quarantine", "score"] = setting(
        "reject",
        'a failing message whose domain says p=reject: "reject" (550 5.7.26), "quarantine" or "score"',
    )
    on_quarantine: Literal["quarantine", "score"] = setting(
        "quarantine", 'a failing message whose domain says p=quarantine: "quarantine" or "score"'
    )
    multiple_from: Literal["score", "reject"] = setting(
        "score", 'From addresses of several domains: "score" (DMARC_MULTI_FROM) or "reject" (550 5.7.1)'
    )


class Dmarc(Check):
    name = "dmarc"
    stage = Stage.EOM
    description = "DMARC policy of the From domain, with SPF and DKIM alignment (RFC 7489)"
    symbols = {
        "DMARC_PASS": -0.5,
        "DMARC_FAIL_NONE": 1.0,
        "DMARC_FAIL_QUARANTINE": 4.0,
        "DMARC_FAIL_REJECT": 6.0,
        "DMARC_NONE": 0.0,
        "DMARC_TEMPERROR": 0.0,
        "DMARC_PERMERROR": 0.5,
        "DMARC_NO_FROM": 1.0,
        "DMARC_MULTI_FROM": 3.0,
    }
    Settings = DmarcSettings
    sample: Callable[[], float] = staticmethod(random.random)  # pct= sampling; a test sets it

    def __init__(self, settings: DmarcSettings, config: Config, services: Services) -> None:
        super().__init__(settings, config, services)
        self.dmarc_settings = settings

    def run(self, tx: Transaction) -> Iterable[Output]:
        addresses = [a for _, a in email.utils.getaddresses(tx.header_values("From")) if "@" in a]
        domains = sorted({a.rpartition("@")[2].lower().rstrip(".") for a in addresses})
        if not domains:
            tx.auth_results[DMARC] = DmarcResult("none", "", reason="no From address")
            yield Finding("DMARC_NO_FROM", "no From address: DMARC does not apply")
            return
        if len(domains) > 1:
            tx.auth_results[DMARC] = DmarcResult("permerror", "", reason=f"From domains {', '.join(domains)}")
            yield Finding("DMARC_MULTI_FROM", f"From addresses of several domains: {', '.join(domains)}")
            if self.dmarc_settings.multiple_from == "reject":
                yield Reject(R550_FROM_AMBIGUOUS, f"From domains {', '.join(domains)}")
            return
        yield from self._evaluate(tx, domains[0])

    def _evaluate(self, tx: Transaction, from_domain: str) -> Iterable[Output]:
        def record(result: str, reason: str, policy: str = "", dis: str = "none") -> None:
            tx.auth_results[DMARC] = DmarcResult(result, from_domain, policy, dis, reason)

        try:
            policy = find_policy(self.services.resolver, from_domain)
        except DnsTempError as exc:
            record("temperror", "policy lookup failed")
            yield Finding("DMARC_TEMPERROR", f"{from_domain}: {exc}")
            return
        except RecordError as exc:
            record("permerror", str(exc))
            yield Finding("DMARC_PERMERROR", f"{from_domain}: bad DMARC record: {exc}")
            return
        if policy is None:
            record("none", "no DMARC record")
            yield Finding("DMARC_NONE", f"{from_domain} publishes no DMARC record")
            return
        rec = policy.record
        passed = self._aligned_pass(tx, from_domain, rec.aspf, rec.adkim)
        if passed:
            record("pass", "", policy.requested)
            yield Finding("DMARC_PASS", f"{from_domain}: {passed}")
            return
        if DKIM not in tx.auth_results:
            record("temperror", "DKIM was not evaluated", policy.requested)
            yield Finding("DMARC_TEMPERROR", f"{from_domain}: SPF not aligned and DKIM was not evaluated")
            return
        dis = disposition(policy.requested, rec.pct, self.sample)
        record("fail", "", policy.requested, dis)
        where = f"p={policy.requested}" + (f" pct={rec.pct}" if rec.pct < 100 else "")
        where += f" from _dmarc.{policy.found_at}"
        reason = f"{from_domain}: no aligned SPF or DKIM pass ({where}); disposition {dis}"
        yield Finding(f"DMARC_FAIL_{dis.upper()}", reason)
        action = {
            "reject": self.dmarc_settings.on_reject,
            "quarantine": self.dmarc_settings.on_quarantine,
        }.get(dis, "score")
        if action == "reject":
            text = f"Rejected by the DMARC policy of {from_domain} (no aligned SPF or DKIM pass)"
            yield Reject(R550_DMARC_REJECT.with_text(text), f"DMARC {dis} for {from_domain}")
        elif action == "quarantine":
            header = header_for(tx, self.config)  # the auth_results check will not run after a decision
            if header is not None:
                yield header
            yield Quarantine(f"DMARC {dis} for {from_domain}")

    def _aligned_pass(self, tx: Transaction, from_domain: str, aspf: str, adkim: str) -> str:
        """Why the message passes DMARC ("" when it does not)."""
        dkims: list[DkimResult] = tx.auth_results.get(DKIM) or []
        for d in dkims:
            if d.result == "pass" and d.domain and aligned(d.domain, from_domain, adkim):
                return f"DKIM pass aligned (d={d.domain}, adkim={adkim})"
        spf: SpfResult | None = tx.auth_results.get(SPF)
        if spf is None and not (tx.mail_from or "").strip("<> "):
            spf = tx.auth_results.get(SPF_HELO)  # the null sender: the HELO identity stands in
        if spf is not None and spf.result == "pass" and aligned(spf.domain, from_domain, aspf):
            return f"SPF pass aligned ({spf.identity} {spf.domain}, aspf={aspf})"
        return ""

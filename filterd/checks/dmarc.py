"""DMARC (RFC 7489): does an SPF or DKIM pass align with the From domain, and what does the
domain ask for when neither does?

Reads the SPF and DKIM results the earlier checks left on ``tx.facts``.  SPF counts when
the MAIL FROM result is pass and its domain aligns (for the null sender, the HELO identity, as
RFC 7489 4.1 says); DKIM counts when any signature passed with an aligned d=.  Relaxed alignment
compares organisational domains (Public Suffix List), strict the domains themselves.

A failing message gets the policy's disposition: p= (or sp= when the record was found at the
organisational domain of a subdomain), made one step milder when pct= leaves it out of the
sample.  ``reject`` rejects with ``550 5.7.26`` by default (or quarantines, or only scores);
``quarantine`` quarantines by default (or only scores).  A DNS failure gives dmarc=temperror and
no action.  If the DKIM check did not run (the message was over max_scan_bytes, or the check
failed), that is no DKIM pass: the message fails DMARC, and a reject disposition is held in
quarantine instead (a signature might have passed), so an error never lets a forged From through
and never loses mail.  The DKIM check itself turns every unreadable signature into a permerror.

A message with no From address is out of DMARC's scope (dmarc=none, DMARC_NO_FROM).  From
addresses of several domains give DMARC_MULTI_FROM; the ``multiple_from`` setting rejects them
(RFC 7489 6.6.1 allows it) or scores them and judges every domain, the strictest outcome applying
(so adding a second domain never weakens a p=reject).  A From naming more than `MAX_FROM_DOMAINS`
domains is held in quarantine.  The From header is read by `filterd.auth.fromheader`: linear
and bounded, whatever the header holds.

Policy lookups draw from the message's DNS budget, with a share kept for them so that other
lookups (DKIM keys, ARC sets) cannot leave DMARC without.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from filterd.auth.dmarc import RecordError, aligned, disposition, find_policy
from filterd.auth.fromheader import from_domains
from filterd.auth.results import DKIM, DMARC, SPF, SPF_HELO, DmarcResult
from filterd.check import Check, CheckContext, CheckSettings, Cost, Finding, Output, Stage
from filterd.dns import DnsTempError
from filterd.replies import R550_DMARC_REJECT, R550_FROM_AMBIGUOUS, Quarantine, Reject
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


# From domains judged one by one; a From naming more is held (see Dmarc.run).  Each costs up to
# two policy lookups, from the share of the DNS budget kept for DMARC (filterd.dns.RESERVED_LOOKUPS).
MAX_FROM_DOMAINS = 4

# How strict an outcome is, to pick the one that applies when From names several domains.
_SEVERITY = {"pass": 0, "none": 1, "temperror": 2, "permerror": 3}
_FAIL_SEVERITY = {"none": 4, "quarantine": 5, "reject": 6}


@dataclass
class _Outcome:
    result: DmarcResult
    findings: list[Finding]
    disposition: str = "none"

    @property
    def severity(self) -> int:
        if self.result.result == "fail":
            return _FAIL_SEVERITY[self.disposition]
        return _SEVERITY[self.result.result]


class Dmarc(Check):
    name = "dmarc"
    stage = Stage.EOM
    provides = (DMARC,)
    requires = (SPF, SPF_HELO, DKIM)
    cost = Cost.NETWORK
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

    def __init__(self, ctx: CheckContext[DmarcSettings]) -> None:
        super().__init__(ctx)
        settings = ctx.settings
        self.dmarc_settings = settings

    def run(self, tx: Transaction) -> Iterable[Output]:
        found = from_domains(tx.header_values("From"))
        domains = found.domains
        if not domains:
            tx.facts.set(DMARC, DmarcResult("none", "", reason="no From address"))
            yield Finding("DMARC_NO_FROM", "no From address: DMARC does not apply")
            return
        if len(domains) > 1 or found.truncated:
            listed = ", ".join(domains[:MAX_FROM_DOMAINS]) + (
                ", ..." if len(domains) > MAX_FROM_DOMAINS else ""
            )
            yield Finding("DMARC_MULTI_FROM", f"From addresses of several domains: {listed}")
            if self.dmarc_settings.multiple_from == "reject":
                tx.facts.set(DMARC, DmarcResult("permerror", "", reason=f"From domains {listed}"))
                yield Reject(R550_FROM_AMBIGUOUS, f"From domains {listed}")
                return
            if len(domains) > MAX_FROM_DOMAINS or found.truncated:
                # Too many to look up within the DNS budget, and one of them may be a p=reject
                # domain put last on purpose: hold the message rather than judge part of it.
                tx.facts.set(DMARC, DmarcResult("permerror", "", reason=f"From domains {listed}"))
                yield from self._hold(tx, f"From names more than {MAX_FROM_DOMAINS} domains")
                return
        # Several From domains: each is judged and the strictest outcome applies, so naming a
        # second domain never weakens the policy of the first (RFC 7489 6.6.1).
        outcomes = [self._evaluate(tx, d) for d in domains]
        worst = max(outcomes, key=lambda o: o.severity)
        tx.facts.set(DMARC, worst.result)
        for o in outcomes:
            yield from o.findings
        yield from self._act(tx, worst)

    def _evaluate(self, tx: Transaction, from_domain: str) -> _Outcome:
        """The DMARC outcome of one From domain: its result, findings and the disposition."""

        def outcome(
            result: str, reason: str, finding: Finding, policy: str = "", dis: str = "none"
        ) -> _Outcome:
            return _Outcome(DmarcResult(result, from_domain, policy, dis, reason), [finding])

        budget = tx.dns_budget_for(self.ctx.dns)
        try:
            policy = find_policy(self.services.resolver, from_domain, budget)
        except DnsTempError as exc:
            return outcome(
                "temperror", "policy lookup failed", Finding("DMARC_TEMPERROR", f"{from_domain}: {exc}")
            )
        except RecordError as exc:
            return outcome(
                "permerror", str(exc), Finding("DMARC_PERMERROR", f"{from_domain}: bad DMARC record: {exc}")
            )
        except ValueError as exc:  # not a DNS name: 8-bit bytes, an empty or over-long label
            return outcome(
                "permerror", "From domain is not a DNS name", Finding("DMARC_PERMERROR", f"{exc}"[:200])
            )
        if policy is None:
            return outcome(
                "none", "no DMARC record", Finding("DMARC_NONE", f"{from_domain} publishes no DMARC record")
            )
        rec = policy.record
        passed = self._aligned_pass(tx, from_domain, rec.aspf, rec.adkim)
        if passed:
            return outcome("pass", "", Finding("DMARC_PASS", f"{from_domain}: {passed}"), policy.requested)
        dis = disposition(policy.requested, rec.pct, self.sample)
        where = f"p={policy.requested}" + (f" pct={rec.pct}" if rec.pct < 100 else "")
        where += f" from _dmarc.{policy.found_at}"
        reason = f"{from_domain}: no aligned SPF or DKIM pass ({where}); disposition {dis}"
        unverified = ""
        if DKIM not in tx.facts:
            # DKIM did not run (the body was over max_scan_bytes, the check is off or failed):
            # that is no DKIM pass, never a reason to let the message through.  Since a signature
            # might have passed, a reject is held in quarantine instead, where nothing is lost.
            unverified = "DKIM was not evaluated"
            reason += f"; {unverified}"
            if dis == "reject":
                dis = "quarantine"
                reason += ": held instead of rejected"
        return _Outcome(
            DmarcResult("fail", from_domain, policy.requested, dis, unverified),
            [Finding(f"DMARC_FAIL_{dis.upper()}", reason)],
            dis,
        )

    def _act(self, tx: Transaction, o: _Outcome) -> Iterable[Output]:
        """The action the chosen outcome's disposition asks for under our settings."""
        action = {
            "reject": self.dmarc_settings.on_reject,
            "quarantine": self.dmarc_settings.on_quarantine,
        }.get(o.disposition, "score")
        domain = o.result.from_domain
        if action == "reject":
            text = f"Rejected by the DMARC policy of {domain} (no aligned SPF or DKIM pass)"
            yield Reject(R550_DMARC_REJECT.with_text(text), f"DMARC {o.disposition} for {domain}")
        elif action == "quarantine":
            yield from self._hold(tx, f"DMARC {o.disposition} for {domain}")

    def _hold(self, tx: Transaction, why: str) -> Iterable[Output]:
        yield Quarantine(why)  # the auth_results finisher still writes the header: it runs after

    def _aligned_pass(self, tx: Transaction, from_domain: str, aspf: str, adkim: str) -> str:
        """Why the message passes DMARC ("" when it does not)."""
        dkims = tx.facts.get(DKIM) or ()
        for d in dkims:
            if d.result == "pass" and d.domain and aligned(d.domain, from_domain, adkim):
                return f"DKIM pass aligned (d={d.domain}, adkim={adkim})"
        spf = tx.facts.get(SPF)
        if spf is None and not (tx.mail_from or "").strip("<> "):
            spf = tx.facts.get(SPF_HELO)  # the null sender: the HELO identity stands in
        if spf is not None and spf.result == "pass" and aligned(spf.domain, from_domain, aspf):
            return f"SPF pass aligned ({spf.identity} {spf.domain}, aspf={aspf})"
        return ""

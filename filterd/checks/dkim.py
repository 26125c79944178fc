"""DKIM verification (RFC 6376, RSA and Ed25519 per RFC 8463): every signature, each result kept.

The verification itself is filterd's own (filterd.auth.dkim_verify): whole-body byte passes for
canonicalisation, parsed keys kept, `cryptography` for RSA and Ed25519; it gives the results
dkimpy gave (dkimpy still signs, in dkim_sign, and verifies ARC, in arc).

Verification runs over ``tx.message.raw``: the bytes Postfix passed.  The milter rebuilds them
from its header callbacks with leading whitespace and folding kept (SMFIP_HDR_LEADSPC, "\\n"
turned back into "\\r\\n") plus the body chunks as sent, so `simple` canonicalisation verifies too.

Each signature gets its own result (pass, fail, neutral, policy, temperror, permerror) on
``tx.facts`` (`filterd.auth.results.DKIM`) for DMARC and the Authentication-Results header.  The findings are one
symbol per kind of result, with the signatures named in the reason, so a message signed twice by
its domain (RSA and Ed25519) is not scored twice.

Key lookups draw from the message's DNS budget (``[dns] max_lookups_per_message``); a lookup that
times out is temperror, a name with no key permerror.

A signature is hostile input: whatever is wrong with it makes that signature fail or permerror
and verification goes on with the next; the check itself never fails on message bytes, so DMARC
always sees a DKIM result.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from filterd.auth.dkim_verify import MAX_SIGNATURE_BYTES, verify_all
from filterd.auth.results import DKIM
from filterd.check import Check, CheckContext, CheckSettings, Cost, Finding, Output, Stage
from filterd.settings import setting
from filterd.transaction import Transaction

log = logging.getLogger("filterd.checks.dkim")

_SYMBOL = {
    "pass": "DKIM_PASS",
    "fail": "DKIM_FAIL",
    "neutral": "DKIM_NEUTRAL",
    "policy": "DKIM_POLICY",
    "temperror": "DKIM_TEMPERROR",
    "permerror": "DKIM_PERMERROR",
}


def _min_bits(value: int) -> str | None:
    return None if value >= 1024 else "RFC 8301: keys under 1024 bits must not be accepted"


def _positive(value: int) -> str | None:
    return None if value > 0 else "expected a whole number greater than zero"


@dataclass(frozen=True)
class DkimSettings(CheckSettings):
    min_rsa_bits: int = setting(1024, "RSA keys shorter than this give dkim=policy", _min_bits)
    max_signatures: int = setting(
        10, "signatures verified per message; more are recorded as dkim=policy, not verified", _positive
    )
    accept_rsa_sha1: bool = setting(
        False, "count a valid rsa-sha1 signature as pass (RFC 8301 says not to: it gives dkim=policy)"
    )


__all__ = ["MAX_SIGNATURE_BYTES", "Dkim", "DkimSettings", "LibraryLog", "verify_all"]


class LibraryLog:
    """A logger for dkimpy (its ARC verification, filterd.checks.arc): keeps its last error (the only account of *why* a key failed) and
    sends everything to our debug log, since dkimpy logs a missing key as an error."""

    def __init__(self) -> None:
        self.last_error = ""

    def debug(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        log.debug("dkimpy: %s", msg)

    info = warning = debug

    def error(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        self.last_error = str(msg)
        log.debug("dkimpy error: %s", msg)


class Dkim(Check):
    name = "dkim"
    stage = Stage.EOM
    provides = (DKIM,)
    after = ("antivirus",)  # a virus is refused before DNS is spent on its signatures
    cost = Cost.NETWORK
    description = "verify every DKIM signature, RSA and Ed25519 (RFC 6376, RFC 8463)"
    needs_body = True
    symbols = {
        "DKIM_PASS": -0.5,
        "DKIM_FAIL": 1.0,
        "DKIM_NEUTRAL": 0.0,
        "DKIM_POLICY": 0.5,
        "DKIM_TEMPERROR": 0.1,
        "DKIM_PERMERROR": 0.5,
        "DKIM_NONE": 0.0,
    }
    Settings = DkimSettings

    def __init__(self, ctx: CheckContext[DkimSettings]) -> None:
        super().__init__(ctx)
        settings = ctx.settings
        self.dkim_settings = settings

    def run(self, tx: Transaction) -> Iterable[Output]:
        results = verify_all(
            tx.message.raw,
            self.services.resolver,
            budget=tx.dns_budget_for(self.ctx.dns),
            min_rsa_bits=self.dkim_settings.min_rsa_bits,
            max_signatures=self.dkim_settings.max_signatures,
            accept_rsa_sha1=self.dkim_settings.accept_rsa_sha1,
        )
        tx.facts.set(DKIM, tuple(results))
        if not results:
            yield Finding("DKIM_NONE", "no DKIM signature")
            return
        by_result: dict[str, list[str]] = {}
        for r in results:
            what = f"d={r.domain or '?'} s={r.selector or '?'} a={r.algorithm or '?'}"
            by_result.setdefault(r.result, []).append(what + (f": {r.reason}" if r.reason else ""))
        for result, lines in by_result.items():
            yield Finding(_SYMBOL[result], "; ".join(lines))

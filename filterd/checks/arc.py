"""ARC (RFC 8617): verify the chain of custody intermediaries added, and record the result.

The result (pass, fail, none, temperror) goes on ``tx.facts`` (`filterd.auth.results.ARC`) for the
Authentication-Results header; the symbols let an admin score it.  Signing an ARC set of our own
(when filterd forwards) is not done yet.

dkimpy's `arc_verify` ignores its timeout argument, and reports a DNS failure as a failed
chain; the `KeyLookup` it is given goes through our time-bounded resolver and the message's DNS
budget, and remembers a temporary failure, which is reported as temperror instead.

dkimpy verifies every set, with two key lookups each (its AMS and its AS), and looks at every ARC
header for each set.  A chain of more than `MAX_ARC_SETS` sets (RFC 8617 4.2.1: i= is at most
50) is a fail without any lookup; a shorter one still cannot make more lookups than the DNS
budget allows (past it: temperror).  Any exception dkimpy raises on a malformed set is a fail.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import dkim

from filterd.auth.dkimdns import KeyLookup
from filterd.auth.results import ARC, ArcResult
from filterd.check import Check, CheckSettings, Cost, Finding, Output, Stage
from filterd.checks.dkim import LibraryLog
from filterd.dns import DnsBudget
from filterd.transaction import Transaction

MAX_ARC_SETS = 50  # RFC 8617 4.2.1: the instance tag i= is 1 to 50

# The ARC headers of a header block, by name, each at the start of a line.
_ARC_HEADER = re.compile(rb"(?im)^(arc-seal|arc-message-signature|arc-authentication-results)[ \t]*:")


class Arc(Check):
    name = "arc"
    stage = Stage.EOM
    provides = (ARC,)
    cost = Cost.NETWORK
    description = "verify the ARC chain (RFC 8617) and record the result"
    needs_body = True
    symbols = {"ARC_PASS": -0.1, "ARC_FAIL": 0.5, "ARC_NONE": 0.0, "ARC_TEMPERROR": 0.0}
    Settings = CheckSettings

    def run(self, tx: Transaction) -> Iterable[Output]:
        raw = tx.message.raw
        if b"arc-seal" not in _header_block(raw).lower():
            tx.facts.set(ARC, ArcResult("none"))
            yield Finding("ARC_NONE", "no ARC set")
            return
        result = verify_chain(raw, self.services.resolver, tx.dns_budget_for(self.ctx.dns))
        tx.facts.set(ARC, result)
        reason = f"{result.instances} ARC set(s)" + (f": {result.reason}" if result.reason else "")
        yield Finding(f"ARC_{result.result.upper()}", reason)


def verify_chain(raw: bytes, resolver: object, budget: DnsBudget | None = None) -> ArcResult:
    counts: dict[bytes, int] = {}
    for m in _ARC_HEADER.finditer(_header_block(raw)):
        name = m.group(1).lower()
        counts[name] = counts.get(name, 0) + 1
    most = max(counts.values(), default=0)
    if most > MAX_ARC_SETS:
        return ArcResult("fail", most, f"more than {MAX_ARC_SETS} ARC sets (RFC 8617 4.2.1)")
    lookup = KeyLookup(resolver, budget)  # type: ignore[arg-type]
    journal = LibraryLog()
    try:
        cv, results, reason = dkim.arc_verify(raw, logger=journal, dnsfunc=lookup)
    except Exception as exc:  # dkimpy on a malformed set: DKIMException, binascii.Error, KeyError...
        if lookup.temp_error:
            return ArcResult("temperror", 0, "key lookup failed")
        return ArcResult("fail", 0, f"{type(exc).__name__}: {exc}"[:120])
    instances = len(results or [])
    state = cv.decode("ascii", "replace").lower() if isinstance(cv, bytes) else str(cv).lower()
    if state != "pass" and lookup.temp_error:
        return ArcResult("temperror", instances, "key lookup failed")
    if state not in ("pass", "fail", "none"):
        state = "fail"
    why = reason.decode("utf-8", "replace") if isinstance(reason, bytes) else str(reason or "")
    return ArcResult(state, instances, "" if state == "pass" else why[:120])


def _header_block(raw: bytes) -> bytes:
    ends = [i for i in (raw.find(b"\r\n\r\n"), raw.find(b"\n\n")) if i >= 0]
    return raw[: min(ends)] if ends else raw

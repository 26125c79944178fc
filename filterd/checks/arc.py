"""ARC (RFC 8617): verify the chain of custody intermediaries added, and record the result.

The result (pass, fail, none, temperror) goes on ``tx.auth_results["arc"]`` for the
Authentication-Results header; the symbols let an admin score it.  Signing an ARC set of our own
(when filterd forwards) is not done yet.

dkimpy's `arc_verify` ignores its timeout argument, and reports a DNS failure as a failed
chain; the `KeyLookup` it is given goes through our time-bounded resolver and remembers a
temporary failure, which is reported as temperror instead.
"""

from __future__ import annotations

from collections.abc import Iterable

import dkim

from filterd.auth.dkimdns import KeyLookup
from filterd.auth.results import ARC, ArcResult
from filterd.check import Check, CheckSettings, Finding, Output, Stage
from filterd.checks.dkim import LibraryLog
from filterd.transaction import Transaction


class Arc(Check):
    name = "arc"
    stage = Stage.EOM
    description = "verify the ARC chain (RFC 8617) and record the result"
    needs_body = True
    symbols = {"ARC_PASS": -0.1, "ARC_FAIL": 0.5, "ARC_NONE": 0.0, "ARC_TEMPERROR": 0.0}
    Settings = CheckSettings

    def run(self, tx: Transaction) -> Iterable[Output]:
        raw = tx.message.raw
        if b"arc-seal" not in _header_block(raw).lower():
            tx.auth_results[ARC] = ArcResult("none")
            yield Finding("ARC_NONE", "no ARC set")
            return
        result = verify_chain(raw, self.services.resolver)
        tx.auth_results[ARC] = result
        reason = f"{result.instances} ARC set(s)" + (f": {result.reason}" if result.reason else "")
        yield Finding(f"ARC_{result.result.upper()}", reason)


def verify_chain(raw: bytes, resolver: object) -> ArcResult:
    lookup = KeyLookup(resolver)  # type: ignore[arg-type]
    journal = LibraryLog()
    try:
        cv, results, reason = dkim.arc_verify(raw, logger=journal, dnsfunc=lookup)
    except dkim.DKIMException as exc:
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

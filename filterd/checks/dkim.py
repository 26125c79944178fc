"""DKIM verification (RFC 6376, RSA and Ed25519 per RFC 8463): every signature, each result kept.

Verification runs over ``tx.message.raw``: the bytes Postfix passed.  The milter rebuilds them
from its header callbacks with leading whitespace and folding kept (SMFIP_HDR_LEADSPC, "\\n"
turned back into "\\r\\n") plus the body chunks as sent, so `simple` canonicalisation verifies too.

Each signature gets its own result (pass, fail, neutral, policy, temperror, permerror) on
``tx.facts`` (`filterd.auth.results.DKIM`) for DMARC and the Authentication-Results header.  The findings are one
symbol per kind of result, with the signatures named in the reason, so a message signed twice by
its domain (RSA and Ed25519) is not scored twice.

dkimpy's own `verify()` cannot tell a DNS timeout from a bad signature; each signature is
verified with a `KeyLookup` that remembers what the key lookup met (see filterd.auth.dkimdns).
Key lookups draw from the message's DNS budget (``[dns] max_lookups_per_message``).

A signature is hostile input, and dkimpy raises many kinds of exception on one it cannot read
(binascii.Error for ``b=A===``, KeyError, IndexError, ValueError...).  Any exception while
verifying one signature makes that signature ``permerror`` and verification goes on with the
next: the check itself never fails on message bytes, so DMARC always sees a DKIM result.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import dkim
from dkim.util import parse_tag_value

from filterd.auth.dkimdns import KeyLookup
from filterd.auth.results import DKIM, DkimResult
from filterd.check import Check, CheckContext, CheckSettings, Cost, Finding, Output, Stage
from filterd.dns import DnsBudget
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


class LibraryLog:
    """A logger for dkimpy: keeps its last error (the only account of *why* a key failed) and
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


def verify_all(
    raw: bytes,
    resolver: Any,
    *,
    budget: DnsBudget | None = None,
    min_rsa_bits: int = 1024,
    max_signatures: int = 10,
    accept_rsa_sha1: bool = False,
) -> list[DkimResult]:
    """One result per DKIM-Signature header of `raw`, in header order (top first)."""
    journal = LibraryLog()
    try:
        d = dkim.DKIM(raw, logger=journal, minkey=min_rsa_bits)
    except Exception as exc:  # no header/body split dkimpy can read, whatever it raises
        return [DkimResult("permerror", "", "", "", "", f"message cannot be parsed: {exc}"[:120])]
    signatures = [value for name, value in d.headers if name.lower() == b"dkim-signature"]
    results = []
    for idx, value in enumerate(signatures):
        tags = _tags(value)
        domain, selector, b, algorithm = (
            tags.get(b"d", b"").decode("ascii", "replace").lower(),
            tags.get(b"s", b"").decode("ascii", "replace"),
            re.sub(rb"\s+", b"", tags.get(b"b", b"")).decode("ascii", "replace"),
            tags.get(b"a", b"").decode("ascii", "replace").lower(),
        )

        def result(res: str, reason: str = "") -> DkimResult:
            return DkimResult(res, domain, selector, b, algorithm, reason)  # noqa: B023 -- used at once

        if idx >= max_signatures:
            results.append(result("policy", f"not verified: more than {max_signatures} signatures"))
            continue
        if not tags:
            results.append(result("permerror", "signature header cannot be parsed"))
            continue
        if len(value) > MAX_SIGNATURE_BYTES:
            results.append(result("permerror", f"signature header over {MAX_SIGNATURE_BYTES} bytes"))
            continue
        lookup = KeyLookup(resolver, budget)
        journal.last_error = ""
        try:
            ok = d.verify(idx=idx, dnsfunc=lookup)
        except dkim.ValidationError as exc:
            text = str(exc)
            if text.startswith("body hash mismatch"):
                results.append(result("fail", "body hash mismatch"))
            else:
                results.append(result("permerror", text[:120]))
            continue
        except dkim.KeyFormatError as exc:  # raised for a key under minkey
            results.append(result("policy", str(exc)[:120]))
            continue
        except Exception as exc:  # dkimpy on a hostile signature: binascii.Error, KeyError...
            # DKIMException and everything else alike: this signature cannot be verified.
            results.append(result("permerror", f"{type(exc).__name__}: {exc}"[:120]))
            continue
        if ok and algorithm == "rsa-sha1" and not accept_rsa_sha1:
            results.append(result("policy", "valid, but rsa-sha1 is not accepted (RFC 8301)"))
        elif ok:
            results.append(result("pass"))
        elif lookup.temp_error:
            results.append(result("temperror", f"key lookup failed: {lookup.temp_error}"[:120]))
        elif lookup.missing:
            results.append(result("permerror", f"no key at {lookup.missing}"))
        elif journal.last_error:
            results.append(result("permerror", journal.last_error[:120]))
        else:
            results.append(result("fail", "signature did not verify"))
    return results


# A signature longer than this is not verified (dkim=permerror): real ones are under 2 KB even
# with a long h= list, and dkimpy's work grows with h= times the number of headers.
MAX_SIGNATURE_BYTES = 8192


def _tags(value: bytes) -> dict[bytes, bytes]:
    try:
        return dict(parse_tag_value(value))
    except Exception:  # any tag list dkimpy cannot split is unreadable
        return {}

"""The DKIM verification filterd used before its own verifier: dkimpy, through our wrapper.

Kept as the reference the fast verifier (filterd.auth.dkim_verify) is compared with, in
tests/test_dkim_verify.py and bench/dkim_verify.py: the same results, per signature, on the same
messages.  It is the code filterd.checks.dkim ran until the fast verifier replaced it.
"""

from __future__ import annotations

import re
from typing import Any

import dkim
from dkim.util import parse_tag_value

from filterd.auth.dkimdns import KeyLookup
from filterd.auth.results import DkimResult
from filterd.checks.dkim import LibraryLog
from filterd.dns import DnsBudget


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

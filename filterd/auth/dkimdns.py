"""The DNS function dkimpy is given: our resolver, and a memory of what went wrong.

dkimpy's `verify` returns False alike for a bad signature, a missing key and a DNS timeout (it
catches its own `DnsTimeoutError` inside `verify_sig`).  To report temperror and "no key" apart
from fail, each verification gets a fresh `KeyLookup`; after the call, `temp_error` and
`missing` say what the key lookup met.

Our own verifier (filterd.auth.dkim_verify) asks through `fetch_key` instead, which returns what
it found rather than raising dkimpy's exceptions; `KeyLookup` stays for dkimpy's ARC verification.
"""

from __future__ import annotations

import threading
import time
import weakref
from dataclasses import dataclass

import dkim

from filterd.dns import DnsBudget, DnsTempError, Resolver


class KeyLookup:
    """``dnsfunc(name: bytes, timeout=5) -> bytes | None`` for dkimpy, over `Resolver.txt`."""

    def __init__(self, resolver: Resolver, budget: DnsBudget | None = None) -> None:
        self.resolver = resolver
        self.budget = budget  # the message's DNS budget: past it, a lookup is a temporary failure
        self.temp_error = ""  # set when a lookup failed in a way that may go away
        self.missing = ""  # set to the name when a key record does not exist
        self.looked_up: list[str] = []

    def __call__(self, name: bytes, timeout: float = 5) -> bytes | None:
        qname = name.decode("utf-8", "replace").rstrip(".")
        self.looked_up.append(qname)
        try:
            records = self.resolver.txt(qname, self.budget)
        except DnsTempError as exc:
            self.temp_error = str(exc)
            raise dkim.DnsTimeoutError(str(exc)) from exc
        except ValueError:  # a malformed name (8-bit bytes in d= or s=) or answer: no usable key
            records = []
        if not records:
            self.missing = qname
            return None
        # Several TXT records at one key name are a publishing mistake; take the one that holds a key.
        for record in records:
            if "p=" in record:
                return record.encode("utf-8", "replace")
        return records[0].encode("utf-8", "replace")


@dataclass(frozen=True)
class KeyAnswer:
    """What the lookup of one key record found: its text, or why there is none."""

    record: bytes | None = None
    temp_error: str = ""  # the lookup failed in a way that may go away (temperror)
    missing: str = ""  # the name has no TXT record, or is not a DNS name (permerror)


# Key records found, per resolver (a new configuration's resolver starts empty, as its DNS
# cache does): name -> (answer, time.time() until which the record's TTL allows its use).
_FOUND: weakref.WeakKeyDictionary[Resolver, dict[bytes, tuple[KeyAnswer, float]]] = (
    weakref.WeakKeyDictionary()
)
_FOUND_LOCK = threading.Lock()
KEYS_KEPT = 4096  # key names per resolver; a busy server sees a few thousand signing keys


def fetch_key(resolver: Resolver, name: bytes, budget: DnsBudget | None = None) -> KeyAnswer:
    """The key record at `name` (``selector._domainkey.domain``), as `KeyLookup` finds it for
    dkimpy: the TXT strings joined, the record that holds ``p=`` when several are published.

    A record found is kept for its TTL and given again without asking the resolver (or spending
    the message's DNS budget: a kept record costs no lookup); a missing key or a failed lookup is
    asked again every time (the resolver caches what DNS lets it)."""
    with _FOUND_LOCK:  # libmilter calls the checks from one thread per connection
        found = _FOUND.get(resolver)
        if found is None:
            found = _FOUND[resolver] = {}
    kept = found.get(name)
    if kept is not None and time.time() < kept[1]:
        return kept[0]
    qname = name.decode("utf-8", "replace").rstrip(".")
    try:
        records, until = resolver.query_until(qname, "TXT", budget)
    except DnsTempError as exc:
        return KeyAnswer(temp_error=str(exc))
    except ValueError:  # a malformed name (8-bit bytes in d= or s=) or answer: no usable key
        records, until = [], 0.0
    if not records:
        return KeyAnswer(missing=qname)
    chosen = next((r for r in records if "p=" in r), records[0])
    answer = KeyAnswer(record=chosen.encode("utf-8", "replace"))
    with _FOUND_LOCK:
        if len(found) >= KEYS_KEPT:
            del found[next(iter(found))]  # the oldest name
        found[name] = (answer, until)
    return answer

"""DMARC (RFC 7489): the policy record, the organisational domain, and identifier alignment.

Pure functions and small data: the check (filterd.checks.dmarc) and `filterctl dns check` both
use them.  The organisational domain comes from the Public Suffix List as shipped inside
`tldextract` (maintained and released several times a year; `publicsuffix2` has not had a release
since 2019).  It is read from the package's bundled snapshot, never fetched: filterd makes no
HTTP requests.  The list's private section is included, as OpenDMARC reads the whole list, so
``a.github.io`` and ``b.github.io`` are different organisations.  A domain under a suffix the list
does not know (``example.test``) falls back to the list's implicit ``*`` rule: its last label is
the suffix.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache

from filterd.dns import DnsBudget, Resolver

POLICIES = ("none", "quarantine", "reject")
_TAG = re.compile(r"^\s*([A-Za-z][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$", re.S)


@cache
def _extractor() -> object:
    import tldextract

    return tldextract.TLDExtract(
        cache_dir=None, suffix_list_urls=(), fallback_to_snapshot=True, include_psl_private_domains=True
    )


def org_domain(domain: str) -> str:
    """The organisational domain (RFC 7489 3.2): the public suffix plus one label."""
    domain = domain.lower().rstrip(".")
    parts = _extractor()(domain)  # type: ignore[operator]
    if not parts.suffix:  # a suffix the list does not know: the "*" rule makes the last label one
        labels = domain.split(".")
        return ".".join(labels[-2:])
    if not parts.domain:  # the domain is itself a public suffix
        return domain
    return f"{parts.domain}.{parts.suffix}"


def aligned(identifier: str, from_domain: str, mode: str) -> bool:
    """Strict: the same domain.  Relaxed: the same organisational domain."""
    a, b = identifier.lower().rstrip("."), from_domain.lower().rstrip(".")
    if a == b:
        return True
    return mode == "r" and org_domain(a) == org_domain(b)


@dataclass(frozen=True)
class DmarcRecord:
    p: str
    sp: str
    pct: int
    adkim: str
    aspf: str
    rua: tuple[str, ...] = ()
    ruf: tuple[str, ...] = ()
    problems: tuple[str, ...] = field(default=())  # tags that were wrong and fell back to defaults


class RecordError(ValueError):
    """A _dmarc TXT record that starts with v=DMARC1 but has no usable policy."""


def is_dmarc(text: str) -> bool:
    return re.match(r"^\s*v\s*=\s*DMARC1\s*(;|$)", text) is not None


def parse_record(text: str) -> DmarcRecord:
    """Parse a record that `is_dmarc`; RecordError when p= is missing or wrong (RFC 7489 6.6.3)."""
    tags: dict[str, str] = {}
    for chunk in text.split(";"):
        if not chunk.strip():
            continue
        m = _TAG.match(chunk)
        if not m:
            raise RecordError(f"{chunk.strip()!r} is not tag=value")
        tags.setdefault(m.group(1).lower(), m.group(2))
    problems: list[str] = []
    rua = _uris(tags.get("rua", ""), "rua", problems)
    ruf = _uris(tags.get("ruf", ""), "ruf", problems)
    p = tags.get("p", "").lower()
    if p not in POLICIES:
        why = "no p= tag" if "p" not in tags else f"p={tags['p']!r} is not none, quarantine or reject"
        if not rua:
            raise RecordError(why)
        problems.append(f"{why}: taken as p=none because rua= is valid (RFC 7489 6.6.3)")
        p = "none"
    sp = tags.get("sp", p).lower()
    if sp not in POLICIES:
        problems.append(f"sp={tags['sp']!r} is not none, quarantine or reject: p= applies")
        sp = p
    pct = 100
    if "pct" in tags:
        if tags["pct"].isdigit() and 0 <= int(tags["pct"]) <= 100:
            pct = int(tags["pct"])
        else:
            problems.append(f"pct={tags['pct']!r} is not 0..100: 100 applies")
    modes = {}
    for tag in ("adkim", "aspf"):
        value = tags.get(tag, "r").lower()
        if value not in ("r", "s"):
            problems.append(f"{tag}={tags[tag]!r} is not r or s: r applies")
            value = "r"
        modes[tag] = value
    return DmarcRecord(p, sp, pct, modes["adkim"], modes["aspf"], rua, ruf, tuple(problems))


def _uris(value: str, tag: str, problems: list[str]) -> tuple[str, ...]:
    uris = tuple(u.strip() for u in value.split(",") if u.strip())
    good = tuple(u for u in uris if re.match(r"^mailto:[^@\s]+@[^@\s]+$", u.split("!")[0], re.I))
    if len(good) != len(uris):
        problems.append(f"{tag}= has URIs that are not mailto:address: {', '.join(set(uris) - set(good))}")
    return good


@dataclass(frozen=True)
class Policy:
    """The record that governs a From domain, and where it was found."""

    record: DmarcRecord
    found_at: str  # the domain whose _dmarc record it is
    subdomain_policy: bool  # found at the organisational domain for a subdomain: sp= applies

    @property
    def requested(self) -> str:
        return self.record.sp if self.subdomain_policy else self.record.p


def find_policy(resolver: Resolver, from_domain: str, budget: DnsBudget | None = None) -> Policy | None:
    """The DMARC record for `from_domain` (RFC 7489 6.6.3), or None when there is none.

    Raises `DnsTempError` on a DNS failure (or when the message's DNS `budget` is spent, past the
    share kept for DMARC), `RecordError` for a record with no usable policy, and `ValueError`
    when `from_domain` is not a DNS name."""
    domain = from_domain.lower().rstrip(".")
    record = _record_at(resolver, domain, budget)
    if record is not None:
        return Policy(record, domain, False)
    org = org_domain(domain)
    if org != domain:
        record = _record_at(resolver, org, budget)
        if record is not None:
            return Policy(record, org, True)
    return None


def _record_at(resolver: Resolver, domain: str, budget: DnsBudget | None) -> DmarcRecord | None:
    records = [t for t in resolver.txt(f"_dmarc.{domain}", budget, reserved=True) if is_dmarc(t)]
    if not records:
        return None
    if len(records) > 1:  # RFC 7489 6.6.3: discovery ends, no policy applies (and no fallback)
        raise RecordError(f"_dmarc.{domain} has {len(records)} DMARC records")
    return parse_record(records[0])


def disposition(requested: str, pct: int, sample: Callable[[], float] = random.random) -> str:
    """The policy applied to one failing message: `requested`, or one step milder when pct= leaves
    the message out of the sample (RFC 7489 6.6.4: reject becomes quarantine, quarantine none)."""
    if requested == "none" or pct >= 100 or sample() * 100 < pct:
        return requested
    return "quarantine" if requested == "reject" else "none"

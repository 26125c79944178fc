"""What `filterctl dns check DOMAIN` looks at: the records a mail domain must publish.

It replaces the admin's dig and nslookup session: MX (present, pointing at host names that have
addresses), SPF (present, one record, valid, within RFC 7208's 10 DNS-lookup limit), DKIM (each
selector published and matching the local private key) and DMARC (present, valid).  Each finding
is pass, warn or fail with a reason; any fail makes the command exit non-zero.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from filterd.auth import dmarc
from filterd.auth.keys import SigningKey
from filterd.dns import DnsTempError, Resolver

Status = Literal["pass", "warn", "fail"]
MAX_LOOKUPS = 10  # RFC 7208 4.6.4
MAX_VOID = 2


@dataclass(frozen=True)
class Item:
    status: Status
    check: str  # "MX", "SPF", "DKIM sel", "DMARC"
    detail: str


def check_domain(
    resolver: Resolver,
    domain: str,
    local_keys: Mapping[str, SigningKey | str] | None = None,
    selectors: Iterable[str] = (),
) -> list[Item]:
    """Every finding for `domain`.  `local_keys` maps a selector to its loaded key (or to the error
    that stopped it loading); `selectors` are more selectors to look at without a local key."""
    domain = domain.lower().rstrip(".")
    items: list[Item] = []
    for part in (_mx, _spf, _dmarc):
        try:
            items.extend(part(resolver, domain))
        except (DnsTempError, ValueError) as exc:
            items.append(Item("fail", part.__name__.strip("_").upper(), f"DNS lookup failed: {exc}"))
    items.extend(_dkim(resolver, domain, local_keys or {}, selectors))
    return items


# --- MX --------------------------------------------------------------------------------------


def _addresses(resolver: Resolver, host: str) -> list[str]:
    return resolver.query(host, "A") + resolver.query(host, "AAAA")


def _mx(resolver: Resolver, domain: str) -> list[Item]:
    records = []
    for text in resolver.query(domain, "MX"):
        pref, _, host = text.partition(" ")
        records.append((int(pref) if pref.isdigit() else 0, host.rstrip(".").lower()))
    if not records:
        if _addresses(resolver, domain):
            return [
                Item("warn", "MX", f"no MX record: mail for {domain} goes to its A/AAAA record (implicit MX)")
            ]
        return [Item("fail", "MX", f"no MX record and no address: {domain} cannot receive mail")]
    if records == [(0, "")]:
        return [Item("warn", "MX", f"null MX (RFC 7505): {domain} receives no mail")]
    items = []
    for preference, host in sorted(records):
        try:
            ipaddress.ip_address(host)
            items.append(
                Item("fail", "MX", f"{preference} {host}: an MX must name a host, not an IP address")
            )
            continue
        except ValueError:
            pass
        if resolver.query(host, "CNAME"):
            items.append(
                Item("warn", "MX", f"{pref} {host}: is an alias (CNAME); RFC 2181 says an MX must not be")
            )
        addresses = _addresses(resolver, host)
        if addresses:
            items.append(Item("pass", "MX", f"{preference} {host} -> {', '.join(sorted(addresses)[:4])}"))
        else:
            items.append(Item("fail", "MX", f"{preference} {host}: the host has no A or AAAA record"))
    return items


# --- SPF -------------------------------------------------------------------------------------

_DOMAIN_SPEC = r"(?:[^\s/]+)"
_MECHANISMS = {
    "all": re.compile(r"^$"),
    "include": re.compile(rf"^:{_DOMAIN_SPEC}$"),
    "a": re.compile(rf"^(?::{_DOMAIN_SPEC})?(?:/\d{{1,2}})?(?://\d{{1,3}})?$"),
    "mx": re.compile(rf"^(?::{_DOMAIN_SPEC})?(?:/\d{{1,2}})?(?://\d{{1,3}})?$"),
    "ptr": re.compile(rf"^(?::{_DOMAIN_SPEC})?$"),
    "ip4": re.compile(r"^:[0-9.]+(?:/\d{1,2})?$"),
    "ip6": re.compile(r"^:[0-9A-Fa-f:.]+(?:/\d{1,3})?$"),
    "exists": re.compile(rf"^:{_DOMAIN_SPEC}$"),
}
_LOOKUP_TERMS = {"include", "a", "mx", "ptr", "exists", "redirect"}


def spf_records(resolver: Resolver, domain: str) -> list[str]:
    return [t for t in resolver.txt(domain) if re.match(r"(?i)^v=spf1(\s|$)", t)]


@dataclass
class _SpfWalk:
    """What walking one domain's SPF records found.  The walk stops following include and
    redirect once past RFC 7208's limit of `MAX_LOOKUPS` lookups (a receiver stops there too, with
    permerror), so a long chain or a wide tree of includes costs at most that many TXT lookups."""

    lookups: int = 0
    void: int = 0
    problems: list[str] | None = None
    warnings: list[str] | None = None
    stopped: bool = False  # past the lookup limit: the rest was not followed


def _spf(resolver: Resolver, domain: str) -> list[Item]:
    records = spf_records(resolver, domain)
    if not records:
        return [Item("fail", "SPF", f'no SPF record (TXT "v=spf1 ...") at {domain}')]
    if len(records) > 1:
        return [Item("fail", "SPF", f"{len(records)} SPF records at {domain}: receivers give permerror")]
    walk = _SpfWalk(problems=[], warnings=[])
    _walk_spf(resolver, domain, records[0], walk, seen={domain}, top=True)
    assert walk.problems is not None and walk.warnings is not None
    items = [Item("fail", "SPF", p) for p in walk.problems]
    if walk.lookups > MAX_LOOKUPS:
        count = f"at least {walk.lookups}" if walk.stopped else str(walk.lookups)
        items.append(Item("fail", "SPF", f"{count} DNS lookups: over the limit of {MAX_LOOKUPS} (permerror)"))
    if walk.void > MAX_VOID:
        items.append(Item("warn", "SPF", f"{walk.void} lookups find nothing: over {MAX_VOID} is a permerror"))
    items.extend(Item("warn", "SPF", w) for w in walk.warnings)
    if not any(i.status == "fail" for i in items):
        items.insert(0, Item("pass", "SPF", f"{records[0]!r} ({walk.lookups}/{MAX_LOOKUPS} DNS lookups)"))
    return items


def _walk_spf(
    resolver: Resolver, domain: str, record: str, walk: _SpfWalk, seen: set[str], top: bool
) -> None:
    """Check one record's syntax and count its DNS lookups, following include and redirect."""
    assert walk.problems is not None and walk.warnings is not None
    where = "" if top else f" (in the record of {domain})"
    terms = record.split()[1:]
    redirect = None
    has_all = False
    for term in terms:
        m = re.match(r"^([A-Za-z][A-Za-z0-9_.-]*)=(.*)$", term)
        if m:  # a modifier
            name, value = m.group(1).lower(), m.group(2)
            if name == "redirect":
                if redirect is not None:
                    walk.problems.append(f"two redirect= modifiers{where}")
                redirect = value
            elif name == "exp" and not value:
                walk.problems.append(f"empty exp= modifier{where}")
            continue
        qualifier, body = (term[0], term[1:]) if term[0] in "+-~?" else ("+", term)
        name = re.split(r"[:/]", body, maxsplit=1)[0].lower()
        rest = body[len(name) :]
        pattern = _MECHANISMS.get(name)
        if pattern is None or not pattern.match(rest):
            walk.problems.append(f"{term!r} is not a valid SPF term{where}")
            continue
        if name in ("ip4", "ip6"):
            try:
                ipaddress.ip_network(rest[1:], strict=False)
            except ValueError:
                walk.problems.append(f"{term!r}: not an IP address or network{where}")
        if name in _LOOKUP_TERMS:
            walk.lookups += 1
        if name == "ptr":
            walk.warnings.append(f"'ptr' is slow and RFC 7208 says not to use it{where}")
        if name == "all":
            has_all = True
            if top and qualifier == "+":
                walk.problems.append(f"'{term}' lets any host on the internet send as {domain}")
            elif top and qualifier == "?":
                walk.warnings.append(f"'{term}' asserts nothing about other hosts; '~all' or '-all' is usual")
        if name == "include":
            target = rest[1:].lower().rstrip(".")
            _follow(resolver, target, walk, seen, f"include:{target}{where}")
    if redirect is not None:
        walk.lookups += 1
        if has_all:
            walk.warnings.append(f"redirect={redirect} is ignored because the record has 'all'{where}")
        else:
            _follow(resolver, redirect.lower().rstrip("."), walk, seen, f"redirect={redirect}{where}")
    elif top and not has_all:
        walk.warnings.append("no 'all' at the end: hosts not listed get 'neutral'; '~all' or '-all' is usual")


def _follow(resolver: Resolver, target: str, walk: _SpfWalk, seen: set[str], what: str) -> None:
    """Walk the record an include or redirect names; `seen` holds the domains on the way here."""
    assert walk.problems is not None
    if "%" in target:
        return  # a macro: expanded per message, cannot be followed here
    if target in seen:
        walk.problems.append(f"{what}: loops back to a record already included")
        return
    if walk.lookups > MAX_LOOKUPS:  # a receiver has given up by now: so do we
        walk.stopped = True
        return
    records = spf_records(resolver, target)
    if not records:
        walk.void += 1
        walk.problems.append(f"{what}: {target} has no SPF record (permerror)")
        return
    if len(records) > 1:
        walk.problems.append(f"{what}: {target} has {len(records)} SPF records (permerror)")
        return
    _walk_spf(resolver, target, records[0], walk, seen | {target}, top=False)


# --- DKIM ------------------------------------------------------------------------------------


def _key_tags(text: str) -> dict[str, str]:
    tags = {}
    for chunk in text.split(";"):
        name, eq, value = chunk.partition("=")
        if eq:
            tags[name.strip().lower()] = re.sub(r"\s+", "", value)
    return tags


def _dkim(
    resolver: Resolver, domain: str, local_keys: Mapping[str, SigningKey | str], selectors: Iterable[str]
) -> list[Item]:
    wanted: dict[str, SigningKey | str | None] = dict(local_keys)
    for s in selectors:
        wanted.setdefault(s, None)
    if not wanted:
        return [
            Item(
                "warn",
                "DKIM",
                f"no selector for {domain} in [checks.dkim_sign.keys]; give --selector to check a published one",
            )
        ]
    items = []
    for selector, local in sorted(wanted.items()):
        label = f"DKIM {selector}"
        name = f"{selector}._domainkey.{domain}"
        if isinstance(local, str):
            items.append(Item("fail", label, f"local key unusable: {local}"))
            continue
        try:
            records = resolver.txt(name)
        except DnsTempError as exc:
            items.append(Item("fail", label, f"DNS lookup of {name} failed: {exc}"))
            continue
        if not records:
            items.append(Item("fail", label, f"no key published at {name}"))
            continue
        if len(records) > 1:
            items.append(
                Item("warn", label, f"{len(records)} TXT records at {name}; receivers may take either")
            )
        tags = _key_tags(records[0])
        if tags.get("v", "DKIM1") != "DKIM1":
            items.append(Item("fail", label, f"v={tags['v']}: a key record says v=DKIM1"))
            continue
        if not tags.get("p"):
            items.append(Item("fail", label, f"{name} has an empty p=: the key is revoked"))
            continue
        published_type = tags.get("k", "rsa")
        if local is None:
            items.append(Item("pass", label, f"published ({published_type}); no local key to compare"))
        elif published_type != local.key_type or tags["p"] != local.public:
            items.append(
                Item(
                    "fail",
                    label,
                    f"the key at {name} does not match the local key {local.path} ({local.key_type})",
                )
            )
        else:
            items.append(
                Item(
                    "pass", label, f"published and matches {local.path} ({local.key_type}, {local.bits} bits)"
                )
            )
        if "y" in tags.get("t", "").split(":"):
            items.append(Item("warn", label, "t=y: testing mode, receivers may ignore failures"))
    return items


# --- DMARC -----------------------------------------------------------------------------------


def _dmarc(resolver: Resolver, domain: str) -> list[Item]:
    name = f"_dmarc.{domain}"
    records = [t for t in resolver.txt(name) if dmarc.is_dmarc(t)]
    if not records:
        org = dmarc.org_domain(domain)
        if org != domain and [t for t in resolver.txt(f"_dmarc.{org}") if dmarc.is_dmarc(t)]:
            return [Item("pass", "DMARC", f"no record at {name}; the one of {org} applies (its sp=)")]
        return [Item("fail", "DMARC", f'no DMARC record (TXT "v=DMARC1; p=...") at {name}')]
    if len(records) > 1:
        return [Item("fail", "DMARC", f"{len(records)} DMARC records at {name}: receivers apply none")]
    try:
        record = dmarc.parse_record(records[0])
    except dmarc.RecordError as exc:
        return [Item("fail", "DMARC", f"{records[0]!r}: {exc}")]
    items = [Item("fail", "DMARC", problem) for problem in record.problems]
    if not items:
        items.append(Item("pass", "DMARC", repr(records[0])))
    if record.p == "none":
        items.append(Item("warn", "DMARC", "p=none: monitoring only, failing mail is still delivered"))
    if record.pct < 100:
        items.append(
            Item("warn", "DMARC", f"pct={record.pct}: the policy applies to part of the failing mail only")
        )
    if not record.rua:
        items.append(Item("warn", "DMARC", "no rua=: you get no aggregate reports"))
    return items

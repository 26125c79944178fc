"""DNS blocklists of client addresses (DNSBL, RFC 5782), as Postfix's reject_rbl_client asks them.

The client address, its octets reversed (IPv6: its nibbles), is looked up under each configured
zone: ``192.0.2.99`` under ``zen.example`` is ``99.2.0.192.zen.example``.  An A record in
127.0.0.0/8 means listed, and the address it returns says on which of the zone's lists (for
Spamhaus ZEN, 127.0.0.2 is the SBL, 127.0.0.4 the XBL...).  A zone may name the return codes that
count (``"zen.example=127.0.0.2,127.0.0.3"``) or a bit mask over the last octet, as combined lists
like SURBL's encode their sublists (``"multi.example&6"``: bits 2 and 4).  An answer outside
127.0.0.0/8, or in 127.255.255.0/24 (where the big lists answer "you may not query me"), is not
a listing: a wrong answer must not score mail.

This is the signal that catches fresh spam no corpus has seen: the blocklists see the sending
host in many places before it reaches us.  Off by default: it needs the network and, for most
lists, a licence for commercial use.  Every query counts against the message's DNS budget
(``[dns]``), and a list that does not answer in time costs DNSBL_TEMPERROR, never the message.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from filterd.check import Check, CheckSettings, Cost, Finding, Output, Stage
from filterd.dns import DnsTempError
from filterd.settings import setting
from filterd.transaction import Transaction

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Addresses no public list knows (RFC 1918, loopback, link-local): never asked about.
_NEVER_LISTED = [
    ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
]
_LISTED_RANGE = ipaddress.ip_network("127.0.0.0/8")
_REFUSED_RANGE = ipaddress.ip_network("127.255.255.0/24")


@dataclass(frozen=True)
class Zone:
    """One configured list: its DNS zone and which answers count as listed."""

    name: str
    codes: frozenset[str] = frozenset()  # listed only with one of these answers (empty: any)
    mask: int = 0  # listed only when the answer's last octet has one of these bits (0: any)

    def listing(self, answers: Iterable[str]) -> list[str]:
        """The answers that say "listed" (see the module docstring)."""
        found = []
        for answer in answers:
            try:
                address = ipaddress.ip_address(answer)
            except ValueError:
                continue
            if address not in _LISTED_RANGE or address in _REFUSED_RANGE:
                continue
            if self.codes and answer not in self.codes:
                continue
            if self.mask and not int(answer.rsplit(".", 1)[1]) & self.mask:
                continue
            found.append(answer)
        return found


def parse_zone(entry: str) -> Zone:
    """``"zone"``, ``"zone=127.0.0.2,127.0.0.3"`` or ``"zone&MASK"``; ValueError naming the mistake."""
    name, codes, mask = entry.strip(), frozenset[str](), 0
    if "=" in name:
        name, _, listed = name.partition("=")
        codes = frozenset(c.strip() for c in listed.split(",") if c.strip())
        for code in codes:
            try:
                if ipaddress.ip_address(code) not in _LISTED_RANGE:
                    raise ValueError
            except ValueError:
                raise ValueError(
                    f"{entry!r}: return code {code!r} is not an address in 127.0.0.0/8"
                ) from None
    elif "&" in name:
        name, _, bits = name.partition("&")
        try:
            mask = int(bits, 0)
        except ValueError:
            raise ValueError(f"{entry!r}: mask {bits!r} is not a number (e.g. 6 or 0x06)") from None
        if not 0 < mask < 256:
            raise ValueError(f"{entry!r}: mask must be 1-255 (bits of the answer's last octet)")
    name = name.strip().rstrip(".").lower()
    labels = name.split(".")
    if len(labels) < 2 or not all(label and len(label) < 64 for label in labels):
        raise ValueError(f"{entry!r}: {name!r} is not a DNS zone such as zen.spamhaus.org")
    return Zone(name, codes, mask)


def _check_zones(entries: tuple[str, ...]) -> str | None:
    for entry in entries:
        try:
            parse_zone(entry)
        except ValueError as exc:
            return str(exc)
    return None


@dataclass(frozen=True)
class DnsblSettings(CheckSettings):
    enabled: bool = setting(False, "run this check (it asks the listed zones about every client)")
    zones: tuple[str, ...] = setting(
        (),
        'blocklist zones: "zone" (any 127.0.0.x answer), "zone=127.0.0.2,127.0.0.3" (these answers) '
        'or "zone&MASK" (answers with these bits in the last octet)',
        _check_zones,
    )


def query_name(ip: IPAddress, zone: str) -> str:
    """``192.0.2.99`` under ``zen.example``: ``99.2.0.192.zen.example`` (IPv6: reversed nibbles)."""
    reversed_ip = ip.reverse_pointer.removesuffix(".in-addr.arpa").removesuffix(".ip6.arpa")
    return f"{reversed_ip}.{zone}"


class Dnsbl(Check):
    name = "dnsbl"
    stage = Stage.CONNECT
    cost = Cost.NETWORK
    description = "client address on a DNS blocklist (DNSBL zones such as zen.spamhaus.org)"
    symbols = {"DNSBL_LISTED": 3.0, "DNSBL_TEMPERROR": 0.0}
    Settings = DnsblSettings

    def decides(self) -> bool:
        return False  # findings only: the score (and the admin's thresholds) decide

    def run(self, tx: Transaction) -> Iterable[Output]:
        ip = tx.session.client_ip
        if ip is None or ip.is_loopback or ip.is_link_local or any(ip in n for n in _NEVER_LISTED):
            return
        if any(ip.version == n.version and ip in n for n in self.site.internal_networks):
            return
        budget = tx.dns_budget_for(self.ctx.dns)
        for zone in map(parse_zone, self.settings.zones):
            try:
                answers = self.services.resolver.query(query_name(ip, zone.name), "A", budget)
            except DnsTempError as exc:
                yield Finding("DNSBL_TEMPERROR", f"{zone.name}: {exc}")
                continue
            listed = zone.listing(answers)
            if listed:
                yield Finding("DNSBL_LISTED", f"{ip} listed in {zone.name} ({', '.join(sorted(listed))})")

"""DNS blocklists of client addresses (DNSBL, RFC 5782), as Postfix's reject_rbl_client asks them.

The client address, its octets reversed (IPv6: its nibbles), is looked up under each configured
zone: ``192.0.2.99`` under ``zen.example`` is ``99.2.0.192.zen.example``.  How a zone is written
and its answers read (return codes, masks, refusals): `filterd.blocklists`.

This is the signal that catches fresh spam no corpus has seen: the blocklists see the sending
host in many places before it reaches us.  Off by default: it needs the network and, for most
lists, a licence for commercial use.  Every query counts against the message's DNS budget
(``[dns]``), and a list that does not answer in time costs DNSBL_TEMPERROR, never the message.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from filterd.blocklists import check_zones, parse_zone
from filterd.check import Check, CheckSettings, Cost, Finding, Output, Stage
from filterd.dns import DnsTempError
from filterd.settings import setting
from filterd.transaction import Transaction

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Addresses no public list knows (RFC 1918, loopback, link-local): never asked about.
_NEVER_LISTED = [
    ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
]


@dataclass(frozen=True)
class DnsblSettings(CheckSettings):
    enabled: bool = setting(False, "run this check (it asks the listed zones about every client)")
    zones: tuple[str, ...] = setting(
        (),
        'blocklist zones: "zone" (any 127.0.0.x answer), "zone=127.0.0.2,127.0.0.3" (these answers) '
        'or "zone&MASK" (answers with these bits in the last octet)',
        check_zones,
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

"""The client's DNS (CONNECT): no reverse DNS; reverse DNS not confirmed by a forward lookup; a
name that looks like a dynamic pool (the address's octets in it, dsl/dyn/pool/dhcp words).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from filterd.check import Check, Cost, Finding, Output, Stage
from filterd.checks.smtp_common import DnsCheckSettings, IPAddress, TimeBudget, is_internal
from filterd.dns import DnsTempError
from filterd.settings import positive, setting
from filterd.transaction import Transaction

# Words ISPs put in the names of dynamically assigned or residential addresses.
_DYNAMIC_WORDS = re.compile(
    r"(?i)(?:^|[.\-_\d])(dsl|adsl|xdsl|vdsl|dyn|dynamic|dynip|pool|dhcp|dial|dialup|dialin|ppp|pppoe|"
    r"cable|cpe|broadband|bb|cust|customer|client|home|res|resnet|residential|user|nat|wifi|"
    r"fibre|fiber|ftth|mobile|3g|4g|lte)(?:[.\-_\d]|$)"
)


@dataclass(frozen=True)
class ClientDnsSettings(DnsCheckSettings):
    max_names: int = setting(3, "PTR names checked for a forward-confirming A/AAAA record", positive)


class ClientDns(Check):
    name = "client_dns"
    stage = Stage.CONNECT
    cost = Cost.NETWORK  # after the client lists: a denied client costs no lookup
    description = "client without reverse DNS, not forward-confirmed, or named like a dynamic pool"
    symbols = {
        "RDNS_NONE": 1.5,
        "RDNS_NOT_CONFIRMED": 1.0,
        "RDNS_DYNAMIC": 1.5,
        "RDNS_TEMPERROR": 0.0,
    }
    Settings = ClientDnsSettings

    def decides(self) -> bool:
        return False  # findings only

    def run(self, tx: Transaction) -> Iterable[Output]:
        assert isinstance(self.settings, ClientDnsSettings)
        ip = tx.session.client_ip
        if ip is None or is_internal(self, ip) or ip.is_loopback:
            return
        resolver = self.services.resolver
        budget = TimeBudget(self.settings.dns_budget)
        shared = tx.dns_budget_for(self.ctx.dns)  # the message's (here the connection stage's) budget
        try:
            names = [n.lower().rstrip(".") for n in resolver.ptr(str(ip), shared)]
        except DnsTempError as exc:
            yield Finding("RDNS_TEMPERROR", f"PTR of {ip}: {exc}")
            return
        if not names:
            yield Finding("RDNS_NONE", f"client {ip} has no reverse DNS (PTR)")
            return
        confirmed: str | None = None
        for name in names[: self.settings.max_names]:
            if budget.spent:
                yield Finding("RDNS_TEMPERROR", f"DNS budget of {self.settings.dns_budget:g}s spent")
                return
            try:
                addresses = resolver.query(name, "A" if ip.version == 4 else "AAAA", shared)
            except DnsTempError as exc:
                yield Finding("RDNS_TEMPERROR", f"forward lookup of {name}: {exc}")
                return
            except ValueError:
                continue  # a PTR that is not a valid name cannot confirm anything
            if any(_same_address(a, ip) for a in addresses):
                confirmed = name
                break
        if confirmed is None:
            yield Finding(
                "RDNS_NOT_CONFIRMED", f"{ip} -> {names[0]}, whose A/AAAA does not lead back to {ip}"
            )
        name = confirmed or names[0]
        why = dynamic_reason(name, ip)
        if why:
            yield Finding("RDNS_DYNAMIC", f"{ip} -> {name} looks dynamic: {why}")


def _same_address(text: str, ip: IPAddress) -> bool:
    try:
        return ipaddress.ip_address(text) == ip
    except ValueError:
        return False


def dynamic_reason(name: str, ip: IPAddress) -> str | None:
    """Why a reverse-DNS name looks like a dynamic or residential address, or None.

    ISPs name such addresses after the address itself (``1-2-3-4.dsl.isp.example``,
    ``c0a80001.pool.example``) or mark them with words (dsl, dyn, pool, dhcp...).  Only the labels
    below the registered domain are looked at, so ``mail.pool-party.example`` is not flagged for
    its owner's name."""
    host_part = name.lower()
    labels = host_part.split(".")
    local = ".".join(labels[:-2]) if len(labels) > 2 else ""
    if isinstance(ip, ipaddress.IPv4Address):
        octets = str(ip).split(".")
        digits = re.findall(r"\d+", local)
        # three or more of the address's octets, in order or reversed, among the name's numbers
        for seq in (octets, list(reversed(octets))):
            if _contains_run(digits, seq, 3):
                return "address octets in the name"
        if format(int(ip), "08x") in local.replace("-", "").replace(".", ""):
            return "address in hex in the name"
    m = _DYNAMIC_WORDS.search(local)
    if m:
        return f"{m.group(1)!r} in the name"
    return None


def _contains_run(numbers: list[str], octets: list[str], n: int) -> bool:
    """True when `n` consecutive octets appear consecutively among `numbers` (leading zeros allowed)."""
    values = [str(int(x)) for x in numbers if len(x) <= 3]
    for i in range(len(octets) - n + 1):
        want = octets[i : i + n]
        for j in range(len(values) - n + 1):
            if values[j : j + n] == want:
                return True
    return False

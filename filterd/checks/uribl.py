"""URI blocklists (URIBL, SURBL style): the domains the message's links point to, asked of DNS zones.

Fresh spam reuses fresh hosts but advertises the same few sites; the lists see those sites across
many receivers before any corpus does.  Each link's host is reduced to its registered domain (the
Public Suffix List, as DMARC does: ``click.news.example.co.uk`` is ``example.co.uk``), and
``<domain>.<zone>`` is looked up; how zones are written and answers read: `filterd.blocklists`.

Bounded: at most ``max_domains`` distinct domains per message, in the order the links come, our
own domains (``[network] local_domains``) and address literals left out; every query counts
against the message's DNS budget (``[dns]``), and a list that does not answer costs
URIBL_TEMPERROR, never the message.  Off by default: it needs the network and, for most lists, a
licence for commercial use.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from filterd.blocklists import check_zones, parse_zone
from filterd.check import Check, CheckSettings, Cost, Finding, Output, Stage
from filterd.dns import DnsTempError
from filterd.reputation import registered_domain
from filterd.rules.targets import normalise_url
from filterd.settings import positive, setting
from filterd.transaction import Transaction


@dataclass(frozen=True)
class UriblSettings(CheckSettings):
    enabled: bool = setting(False, "run this check (it asks the listed zones about the message's links)")
    zones: tuple[str, ...] = setting(
        (),
        'URI blocklist zones: "zone" (any 127.0.0.x answer), "zone=127.0.0.2,..." (these answers) or '
        '"zone&MASK" (answers with these bits in the last octet, as multi.surbl.org encodes its lists)',
        check_zones,
    )
    max_domains: int = setting(10, "distinct link domains looked up per message (the first ones)", positive)


def link_domains(urls: Iterable[str], ours: Iterable[str], limit: int) -> list[str]:
    """The registered domains of the links, in order, without duplicates, address literals or ours."""
    skip = {d.lower().rstrip(".") for d in ours}
    found: dict[str, None] = {}
    for raw in urls:
        url = normalise_url(raw)
        if url is None or _is_address(url.host):
            continue
        domain = registered_domain(url.host)
        if domain and "." in domain and domain not in skip:
            found.setdefault(domain, None)
            if len(found) >= limit:
                break
    return list(found)


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class Uribl(Check):
    name = "uribl"
    stage = Stage.EOM
    cost = Cost.NETWORK
    needs_body = True
    description = "domains of the message's links on URI blocklists (URIBL/SURBL zones)"
    symbols = {"URIBL_LISTED": 3.5, "URIBL_TEMPERROR": 0.0}
    Settings = UriblSettings

    def decides(self) -> bool:
        return False  # findings only

    def run(self, tx: Transaction) -> Iterable[Output]:
        zones = [parse_zone(z) for z in self.settings.zones]
        if not zones:
            return
        domains = link_domains(tx.message.urls, self.site.local_domains, self.settings.max_domains)
        budget = tx.dns_budget_for(self.ctx.dns)
        for zone in zones:
            listed: list[str] = []
            for domain in domains:
                try:
                    answers = self.services.resolver.query(f"{domain}.{zone.name}", "A", budget)
                except DnsTempError as exc:
                    yield Finding("URIBL_TEMPERROR", f"{zone.name}: {exc}")
                    break
                except ValueError:
                    continue  # not a DNS name once joined (over-long): nothing to ask
                codes = zone.listing(answers)
                if codes:
                    listed.append(f"{domain} ({', '.join(sorted(codes))})")
            if listed:
                yield Finding("URIBL_LISTED", f"links to {', '.join(listed)} listed in {zone.name}")

"""The envelope sender's domain (MAIL FROM): neither MX nor A/AAAA (nobody could answer a
bounce), or a null MX (RFC 7505: it sends no mail).
"""

from __future__ import annotations

from collections.abc import Iterable

from filterd.check import Check, Cost, Finding, Output, Stage
from filterd.checks.smtp_common import DnsCheckSettings, TimeBudget
from filterd.dns import DnsTempError
from filterd.keys import domain_of
from filterd.transaction import Transaction


class SenderDns(Check):
    name = "sender_dns"
    stage = Stage.MAIL_FROM
    cost = Cost.NETWORK
    description = "envelope sender domain with neither MX nor A/AAAA, or a null MX"
    symbols = {
        "SENDER_DOMAIN_NO_MX_A": 2.5,
        "SENDER_NULL_MX": 3.0,
        "SENDER_DNS_TEMPERROR": 0.0,
    }
    Settings = DnsCheckSettings

    def decides(self) -> bool:
        return False  # findings only

    def run(self, tx: Transaction) -> Iterable[Output]:
        assert isinstance(self.settings, DnsCheckSettings)
        domain = domain_of(tx.mail_from)
        if domain is None or domain.startswith("["):
            return  # the null sender, or an address-literal domain
        resolver = self.services.resolver
        budget = TimeBudget(self.settings.dns_budget)
        shared = tx.dns_budget_for(self.ctx.dns)  # the message's budget, with SPF's lookups
        try:
            mx = resolver.query(domain, "MX", shared)
            if any(_is_null_mx(r) for r in mx):
                yield Finding("SENDER_NULL_MX", f"{domain} publishes a null MX (RFC 7505): it sends no mail")
                return
            if mx:
                return
            for rdtype in ("A", "AAAA"):
                if budget.spent:
                    yield Finding(
                        "SENDER_DNS_TEMPERROR", f"DNS budget of {self.settings.dns_budget:g}s spent"
                    )
                    return
                if resolver.query(domain, rdtype, shared):
                    return
        except DnsTempError as exc:
            yield Finding("SENDER_DNS_TEMPERROR", f"sender domain {domain}: {exc}")
            return
        except ValueError as exc:  # not a valid domain name at all
            yield Finding("SENDER_DOMAIN_NO_MX_A", f"sender domain {domain[:80]!r}: {exc}")
            return
        yield Finding("SENDER_DOMAIN_NO_MX_A", f"sender domain {domain} has no MX, A or AAAA record")


def _is_null_mx(record: str) -> bool:
    parts = record.split()
    return len(parts) == 2 and parts[1] == "."

"""How the client introduced itself (HELO): not a fully qualified name; a bare IP; an address
literal that is not the client's address; our own host name or one of our domains (nobody
outside is us).  See `filterd.checks.smtp_common` for what the SMTP-behaviour checks share.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from filterd.check import Check, Finding, Output, Stage
from filterd.checks.smtp_common import HOSTNAME, in_domains, is_internal, our_names
from filterd.transaction import Transaction


class HeloHeuristics(Check):
    name = "helo"
    stage = Stage.HELO
    description = "HELO not a FQDN, a foreign address literal, or claiming to be us"
    symbols = {
        "HELO_NOT_FQDN": 1.0,
        "HELO_BARE_IP": 1.5,
        "HELO_LITERAL_MISMATCH": 1.5,
        "HELO_IS_OURS": 3.0,
    }

    @property  # read per message: with [sql] the local domains change while filterd runs
    def ours(self) -> tuple[str, frozenset[str]]:
        return our_names(self)

    def decides(self) -> bool:
        return False  # findings only

    def run(self, tx: Transaction) -> Iterable[Output]:
        helo = (tx.session.helo or "").strip()
        ip = tx.session.client_ip
        if not helo or is_internal(self, ip):
            return
        if helo.startswith("[") and helo.endswith("]"):
            literal = helo[1:-1]
            try:
                claimed = ipaddress.ip_address(literal.removeprefix("IPv6:").removeprefix("ipv6:"))
            except ValueError:
                yield Finding("HELO_NOT_FQDN", f"HELO {helo[:80]!r} is not a valid address literal")
                return
            if ip is not None and claimed != ip:
                yield Finding("HELO_LITERAL_MISMATCH", f"HELO {helo} is not the client's address {ip}")
            return
        try:
            ipaddress.ip_address(helo)
            yield Finding("HELO_BARE_IP", f"HELO {helo} is an IP address without [brackets]")
            return
        except ValueError:
            pass
        name = helo.lower().rstrip(".")
        if not HOSTNAME.match(name):
            yield Finding("HELO_NOT_FQDN", f"HELO {helo[:80]!r} is not a fully qualified host name")
            return
        host, domains = self.ours
        if name == host:
            yield Finding("HELO_IS_OURS", f"HELO {helo} is this host's own name")
        elif (d := in_domains(name, domains)) is not None:
            yield Finding("HELO_IS_OURS", f"HELO {helo} claims our domain {d}")

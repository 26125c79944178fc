"""What the SMTP-behaviour checks share (`helo`, `client_dns`, `sender_dns`, `header_heuristics`):
the host-name pattern, the settings of a check that makes DNS lookups, its time budget, and
who "we" are (our host name and domains, our internal networks).

These heuristics are what Spam Locker did: each finding is its own symbol with a small default
score; none of them alone says "spam", but together they separate a home router running a spam
bot from a mail server.  DNS goes through the project's resolver, and each check stops looking
up after ``dns_budget`` seconds; a lookup that fails in a way that may go away is a
``*_TEMPERROR`` symbol, never an exception.  Clients in ``[network] internal_networks`` are not
looked at.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass

from filterd.check import Check, CheckSettings
from filterd.settings import positive, setting

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

HOSTNAME = re.compile(
    r"(?i)^(?=.{1,253}$)(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{0,61}[a-z0-9]$"
)


@dataclass(frozen=True)
class DnsCheckSettings(CheckSettings):
    # Off until turned on: no check talks to a service (here DNS) the admin has not chosen.
    enabled: bool = setting(False, "run this check (it makes DNS lookups for every message)")
    dns_budget: float = setting(4.0, "seconds of DNS lookups this check may spend per message", positive)


class TimeBudget:
    """Counts the time a check spends on DNS; past the budget, further lookups are not made."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    @property
    def spent(self) -> bool:
        return time.monotonic() >= self.deadline


def is_internal(check: Check, ip: IPAddress | None) -> bool:
    nets = check.site.internal_networks
    return ip is not None and any(ip.version == n.version and ip in n for n in nets)


def our_names(check: Check) -> tuple[str, frozenset[str]]:
    """This host's name, and our mail domains (``[network] local_domains``), lower-cased."""
    # gethostname(), not getfqdn(): no DNS lookup on the mail path
    host = (check.site.hostname or socket.gethostname()).lower().rstrip(".")
    return host, _normalized(check.site.local_domains)


# The last list normalized, and its set.  Read per message (with [sql] the list changes while
# filterd runs), but the same tuple object comes back until it changes: normalize it once then.
_last_domains: tuple[tuple[str, ...], frozenset[str]] = ((), frozenset())


def _normalized(domains: tuple[str, ...]) -> frozenset[str]:
    global _last_domains
    seen, normalized = _last_domains
    if seen is not domains:
        normalized = frozenset(d.lower().strip().rstrip(".") for d in domains)
        _last_domains = (domains, normalized)
    return normalized


def in_domains(name: str, domains: Iterable[str]) -> str | None:
    """The local domain `name` is or lies under, or None."""
    for d in domains:
        if name == d or name.endswith("." + d):
            return d
    return None

"""The one DNS resolver every check uses: configurable, time-bounded, with a TTL-honouring cache.

Answers come back as plain data; "no such name" and "no record of that type" are an empty list,
and every failure that may go away (timeout, SERVFAIL, no server answering) is `DnsTempError`, so
a check can turn it into a temperror result instead of an exception.  `install_as_default()` makes
pyspf and dkimpy, which call dnspython's default resolver, use this one too.
"""

from __future__ import annotations

from dataclasses import dataclass

import dns.exception
import dns.name
import dns.rdata
import dns.rdatatype
import dns.resolver
import dns.reversename

from filterd.settings import positive, setting


@dataclass(frozen=True)
class DnsSettings:
    nameservers: tuple[str, ...] = setting((), "resolver addresses; empty: the ones in /etc/resolv.conf")
    port: int = setting(53, "resolver port", lambda v: None if 0 < v < 65536 else "expected a port number")
    timeout: float = setting(2.0, "seconds for one attempt of one lookup", positive)
    attempts: int = setting(2, "attempts per lookup before it is a temporary error", positive)
    cache_size: int = setting(10000, "answers cached (each for its TTL)", positive)


class DnsTempError(Exception):
    """A lookup failed in a way that may go away: timeout, SERVFAIL, no server reachable."""


class Resolver:
    def __init__(self, settings: DnsSettings) -> None:
        self.settings = settings
        if settings.nameservers:
            res = dns.resolver.Resolver(configure=False)
            res.nameservers = list(settings.nameservers)
        else:
            res = dns.resolver.Resolver(configure=True)
        res.port = settings.port
        res.timeout = settings.timeout
        res.lifetime = settings.timeout
        res.cache = dns.resolver.LRUCache(settings.cache_size)
        self.dnspython = res

    def install_as_default(self) -> None:
        """Make libraries that use dnspython's default resolver (pyspf, dkimpy) use this one."""
        dns.resolver.default_resolver = self.dnspython

    def query(self, name: str, rdtype: str) -> list[str]:
        """The records of `rdtype` at `name` as text; [] when the name or the type does not exist."""
        last: Exception | None = None
        for _ in range(self.settings.attempts):
            try:
                answer = self.dnspython.resolve(name, rdtype, search=False)
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                return []
            except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
                last = exc
                continue
            except dns.exception.DNSException as exc:  # a malformed name or answer: permanent
                raise ValueError(f"DNS lookup of {name} {rdtype} failed: {exc}") from exc
            return [_text(rdata) for rdata in answer]
        raise DnsTempError(f"DNS lookup of {name} {rdtype} failed: {type(last).__name__}: {last}")

    def txt(self, name: str) -> list[str]:
        """TXT records, each with its strings joined (as SPF, DKIM and DMARC read them)."""
        return self.query(name, "TXT")

    def ptr(self, address: str) -> list[str]:
        return self.query(dns.reversename.from_address(address).to_text(), "PTR")


def _text(rdata: dns.rdata.Rdata) -> str:
    strings = getattr(rdata, "strings", None)
    if strings is not None:  # TXT: the strings are joined without a separator (RFC 7208 3.3)
        return b"".join(strings).decode("utf-8", "replace")
    if rdata.rdtype in (dns.rdatatype.PTR, dns.rdatatype.CNAME):
        return rdata.to_text().rstrip(".")
    return rdata.to_text()

"""The one DNS resolver every check uses: configurable, time-bounded, with a TTL-honouring cache.

Answers come back as plain data; "no such name" and "no record of that type" are an empty list,
and every failure that may go away (timeout, SERVFAIL, no server answering) is `DnsTempError`, so
a check can turn it into a temperror result instead of an exception.  `install_as_default()` makes
pyspf and dkimpy, which call dnspython's default resolver, use this one too.

A circuit breaker (filterd/breaker.py, ``[breaker]``) guards the resolver as a whole, inside
dnspython's `resolve()`, so it covers pyspf and dkimpy as well as our own lookups.  As a whole and
not per name server: dnspython chooses among the configured servers inside one `resolve()`, and
what the admin needs to know, and what makes every message slow, is "DNS gives no answers".
While it is open a lookup fails at once with `DnsBreakerOpen` (a dnspython `NoNameservers`, so
pyspf says temperror as for a timeout; here a `DnsTempError`), and the per-message `DnsBudget`
is hardly spent.  A timed-out lookup counts against the servers only when they do not answer a
question of our own either (the root's NS, sent to each server): a sender can make a lookup time
out with a domain whose name servers never answer, and must not be able to switch DNS off for
everyone else that way.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass
from typing import Any

import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rdata
import dns.rdatatype
import dns.resolver
import dns.reversename

from filterd.breaker import Breaker, BreakerOpen, BreakerSettings, State, breaker_for
from filterd.settings import positive, setting


def _ip_addresses(values: tuple[str, ...]) -> str | None:
    """A resolver is named by its address: dnspython refuses a host name only when first used."""
    for value in values:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            return f"expected IP addresses, {value!r} is not one"
    return None


@dataclass(frozen=True)
class DnsSettings:
    nameservers: tuple[str, ...] = setting(
        (), "resolver addresses; empty: the ones in /etc/resolv.conf", _ip_addresses
    )
    port: int = setting(53, "resolver port", lambda v: None if 0 < v < 65536 else "expected a port number")
    timeout: float = setting(2.0, "seconds for one attempt of one lookup", positive)
    attempts: int = setting(2, "attempts per lookup before it is a temporary error", positive)
    cache_size: int = setting(10000, "answers cached (each for its TTL)", positive)
    max_lookups_per_message: int = setting(
        60, "DNS lookups one message may cause in all (SPF, DKIM, DMARC, ARC); past it: temperror", positive
    )
    max_seconds_per_message: float = setting(
        20.0, "seconds one message may spend waiting for DNS in all; past it: temperror", positive
    )


class DnsTempError(Exception):
    """A lookup failed in a way that may go away: timeout, SERVFAIL, no server reachable."""


class DnsBreakerOpen(BreakerOpen, dns.resolver.NoNameservers):
    """No server was asked: the resolver's circuit breaker is open."""


class DnsBudgetSpent(DnsTempError):
    """The message's DNS budget (lookups or seconds) is used up: the lookup was not made."""


# Lookups and seconds kept back for the DMARC policy of the From domain(s): the records a
# forger cannot choose.  Without them, a message could spend the whole budget on DKIM keys or
# ARC sets at names it controls (or at silent servers) and leave DMARC a temperror, no action.
RESERVED_LOOKUPS = 8
RESERVED_SECONDS = 4.0


@dataclass
class DnsBudget:
    """How much DNS one message may cause: `max_lookups` lookups and `max_seconds` of waiting.

    One per transaction (``Transaction.dns_budget``), handed to every lookup made for it; a lookup
    past the budget raises `DnsBudgetSpent` (a `DnsTempError`), which every check reports as
    temperror.  Time counts only while waiting for DNS, so a slow client sending DATA spends none.
    `reserved` lookups (DMARC's) may go past the ordinary limits by `RESERVED_LOOKUPS` and
    `RESERVED_SECONDS`."""

    max_lookups: int
    max_seconds: float
    lookups: int = 0
    seconds: float = 0.0

    @classmethod
    def from_settings(cls, settings: DnsSettings) -> DnsBudget:
        return cls(settings.max_lookups_per_message, settings.max_seconds_per_message)

    def remaining_seconds(self, reserved: bool = False) -> float:
        return self.max_seconds + (RESERVED_SECONDS if reserved else 0.0) - self.seconds

    def spend(self, what: str, reserved: bool = False) -> float:
        """Count one lookup of `what`; the seconds it may take.  Raises `DnsBudgetSpent` when none are left."""
        limit = self.max_lookups + (RESERVED_LOOKUPS if reserved else 0)
        if self.lookups >= limit:
            raise DnsBudgetSpent(f"DNS budget of {limit} lookups per message spent (before {what})")
        left = self.remaining_seconds(reserved)
        if left <= 0:
            raise DnsBudgetSpent(f"DNS budget of {self.max_seconds:g}s per message spent (before {what})")
        self.lookups += 1
        return left

    def charge(self, seconds: float) -> None:
        """Count `seconds` spent waiting for DNS."""
        self.seconds += max(0.0, seconds)


PROBE_REUSE = 5.0


class _GuardedResolver(dns.resolver.Resolver):
    """dnspython's resolver with a circuit breaker around `resolve()` (pyspf calls it too)."""

    breaker: Breaker | None = None
    # the last "are the servers there?" verdict, reused for PROBE_REUSE seconds: concurrent
    # failing lookups need not each wait for a probe of their own
    _probe: tuple[float, bool] = (-PROBE_REUSE, False)

    def resolve(self, *args: Any, **kwargs: Any) -> dns.resolver.Answer:
        breaker = self.breaker
        if breaker is None:
            return super().resolve(*args, **kwargs)
        refusal = breaker.refusal()
        if refusal is not None:
            raise DnsBreakerOpen(refusal)
        try:
            answer = super().resolve(*args, **kwargs)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.YXDOMAIN):
            breaker.success()
            raise
        except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
            if breaker.state is State.OPEN:
                raise  # opened meanwhile (this call was let through before): nothing to learn
            if self.servers_answer():
                breaker.success()  # the servers are there: this name is what fails
            else:
                breaker.failure(f"{type(exc).__name__}, and no server answers at all")
            raise
        except BaseException:
            breaker.release()  # a malformed name says nothing about the servers
            raise
        breaker.success()
        return answer

    def servers_answer(self) -> bool:
        """Does any configured server answer a question of ours (any reply, even an error)?"""
        asked_at, alive = self._probe
        if time.monotonic() - asked_at < PROBE_REUSE:
            return alive
        alive = self._ask_servers()
        self._probe = (time.monotonic(), alive)
        return alive

    def _ask_servers(self) -> bool:
        query = dns.message.make_query(".", "NS")
        # as long as one attempt of a lookup: a server slower than that to answer is no use anyway,
        # and a shorter wait would count a slow but working server as gone
        timeout = self.timeout
        for server in self.nameservers:
            address = getattr(server, "address", server)
            port = getattr(server, "port", self.port)
            try:
                dns.query.udp(query, str(address), timeout=timeout, port=int(port))
            except (dns.exception.DNSException, OSError, ValueError):
                continue
            return True
        return False


class Resolver:
    def __init__(self, settings: DnsSettings, breaker: BreakerSettings | None = None) -> None:
        """`breaker`: the circuit breaker settings ([breaker]); None: no breaker (tools, tests)."""
        self.settings = settings
        res = _GuardedResolver(configure=not settings.nameservers)
        if settings.nameservers:
            res.nameservers = list(settings.nameservers)
        if breaker is not None:
            servers = ",".join(str(getattr(n, "address", n)) for n in res.nameservers)
            res.breaker = breaker_for(f"DNS {servers} port {settings.port}", breaker)
        res.port = settings.port
        res.timeout = settings.timeout
        res.lifetime = settings.timeout
        res.cache = dns.resolver.LRUCache(settings.cache_size)
        self.dnspython = res

    def install_as_default(self) -> None:
        """Make libraries that use dnspython's default resolver (pyspf, dkimpy) use this one."""
        dns.resolver.default_resolver = self.dnspython

    def query(
        self, name: str, rdtype: str, budget: DnsBudget | None = None, reserved: bool = False
    ) -> list[str]:
        """The records of `rdtype` at `name` as text; [] when the name or the type does not exist.
        See `query_until`."""
        return self.query_until(name, rdtype, budget, reserved)[0]

    def query_until(
        self, name: str, rdtype: str, budget: DnsBudget | None = None, reserved: bool = False
    ) -> tuple[list[str], float]:
        """The records of `rdtype` at `name` as text, and until when (``time.time()``) their TTL
        lets them be used (0 with no records); [] when the name or the type does not exist.

        With a `budget`, the lookup is counted against it and waits no longer than it allows
        (`reserved`: DMARC's share may be used); `DnsBudgetSpent` when it is used up.  A name that
        is not a valid DNS name (8-bit bytes, empty or over-long labels) is a `ValueError`."""
        qname = _qname(name)
        left = budget.spend(f"{name} {rdtype}", reserved) if budget is not None else float("inf")
        last: Exception | None = None
        started = time.monotonic()
        try:
            for _ in range(self.settings.attempts):
                lifetime = min(self.settings.timeout, left - (time.monotonic() - started))
                if lifetime <= 0:
                    break
                try:
                    answer = self.dnspython.resolve(qname, rdtype, search=False, lifetime=lifetime)
                except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                    return [], 0.0
                except DnsBreakerOpen as exc:  # another attempt would be refused the same way
                    raise DnsTempError(f"DNS lookup of {name} {rdtype} not made: {exc}") from exc
                except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
                    last = exc
                    continue
                except dns.exception.DNSException as exc:  # a malformed name or answer: permanent
                    raise ValueError(f"DNS lookup of {name} {rdtype} failed: {exc}") from exc
                return [_text(rdata) for rdata in answer], answer.expiration
        finally:
            if budget is not None:
                budget.charge(time.monotonic() - started)
        raise DnsTempError(f"DNS lookup of {name} {rdtype} failed: {type(last).__name__}: {last}")

    def txt(self, name: str, budget: DnsBudget | None = None, reserved: bool = False) -> list[str]:
        """TXT records, each with its strings joined (as SPF, DKIM and DMARC read them)."""
        return self.query(name, "TXT", budget, reserved)

    def ptr(self, address: str, budget: DnsBudget | None = None) -> list[str]:
        return self.query(dns.reversename.from_address(address).to_text(), "PTR", budget)


def _qname(name: str) -> dns.name.Name:
    """`name` as a DNS name; ValueError for one that is not (bytes outside ASCII that are not a
    valid IDN, an empty or over-long label): such a name comes from message bytes, never from DNS."""
    try:
        return dns.name.from_text(name.rstrip(".") + ".")
    except (dns.exception.DNSException, UnicodeError) as exc:
        raise ValueError(f"{name[:80]!r} is not a DNS name: {exc}") from exc


def _text(rdata: dns.rdata.Rdata) -> str:
    strings = getattr(rdata, "strings", None)
    if strings is not None:  # TXT: the strings are joined without a separator (RFC 7208 3.3)
        return b"".join(strings).decode("utf-8", "replace")
    if rdata.rdtype in (dns.rdatatype.PTR, dns.rdatatype.CNAME):
        return rdata.to_text().rstrip(".")
    return rdata.to_text()

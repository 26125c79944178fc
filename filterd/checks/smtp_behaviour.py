"""SMTP-behaviour heuristics (what Spam Locker did): how the client introduced itself, its DNS, and
envelope or header habits of bulk-mail software.

Each finding is its own symbol with a small default score: none of these alone says "spam", but
together they separate a home router running a spam bot from a mail server.

- `HeloHeuristics` (HELO): not a fully qualified name; a bare IP; an address literal that is not
  the client's address; our own host name or one of our domains (nobody outside is us).
- `ClientDns` (CONNECT): no reverse DNS; reverse DNS not confirmed by a forward lookup; a name
  that looks like a dynamic pool (the address's octets in it, dsl/dyn/pool/dhcp words).
- `SenderDns` (MAIL FROM): the envelope sender's domain has neither MX nor A/AAAA (nobody could
  answer a bounce), or publishes a null MX (RFC 7505: it sends no mail).
- `HeaderHeuristics` (end of message, after DKIM): many recipients; a From that imitates one of
  our domains on unauthenticated mail (the domain itself, a look-alike, or in the display name);
  Date, Message-ID and Received anomalies that `header_sanity` does not cover.

DNS goes through the project's resolver, and each check stops looking up after ``dns_budget``
seconds; a lookup that fails in a way that may go away is a ``*_TEMPERROR`` symbol, never an
exception.  Clients in ``[network] internal_networks`` are not looked at.
"""

from __future__ import annotations

import email.utils
import ipaddress
import re
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property

from filterd.addresses import getaddresses
from filterd.auth.results import DKIM
from filterd.check import Check, CheckSettings, Cost, Finding, Output, Stage
from filterd.dns import DnsTempError
from filterd.keys import domain_of
from filterd.reputation import authenticated_domains
from filterd.settings import positive, setting
from filterd.transaction import Transaction

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_HOSTNAME = re.compile(
    r"(?i)^(?=.{1,253}$)(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{0,61}[a-z0-9]$"
)
# Words ISPs put in the names of dynamically assigned or residential addresses.
_DYNAMIC_WORDS = re.compile(
    r"(?i)(?:^|[.\-_\d])(dsl|adsl|xdsl|vdsl|dyn|dynamic|dynip|pool|dhcp|dial|dialup|dialin|ppp|pppoe|"
    r"cable|cpe|broadband|bb|cust|customer|client|home|res|resnet|residential|user|nat|wifi|"
    r"fibre|fiber|ftth|mobile|3g|4g|lte)(?:[.\-_\d]|$)"
)


@dataclass(frozen=True)
class DnsCheckSettings(CheckSettings):
    # Off until turned on: no check talks to a service (here DNS) the admin has not chosen.
    enabled: bool = setting(False, "run this check (it makes DNS lookups for every message)")
    dns_budget: float = setting(4.0, "seconds of DNS lookups this check may spend per message", positive)


class _Budget:
    """Counts the time a check spends on DNS; past the budget, further lookups are not made."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    @property
    def spent(self) -> bool:
        return time.monotonic() >= self.deadline


def _is_internal(check: Check, ip: IPAddress | None) -> bool:
    nets = check.site.internal_networks
    return ip is not None and any(ip.version == n.version and ip in n for n in nets)


def _our_names(check: Check) -> tuple[str, frozenset[str]]:
    """This host's name, and our mail domains (``[network] local_domains``), lower-cased."""
    # gethostname(), not getfqdn(): no DNS lookup on the mail path
    host = (check.site.hostname or socket.gethostname()).lower().rstrip(".")
    return host, frozenset(d.lower().strip().rstrip(".") for d in check.site.local_domains)


def _in_domains(name: str, domains: Iterable[str]) -> str | None:
    """The local domain `name` is or lies under, or None."""
    for d in domains:
        if name == d or name.endswith("." + d):
            return d
    return None


# --- HELO -------------------------------------------------------------------------------------


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

    @cached_property
    def ours(self) -> tuple[str, frozenset[str]]:
        return _our_names(self)

    def decides(self) -> bool:
        return False  # findings only

    def run(self, tx: Transaction) -> Iterable[Output]:
        helo = (tx.session.helo or "").strip()
        ip = tx.session.client_ip
        if not helo or _is_internal(self, ip):
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
        if not _HOSTNAME.match(name):
            yield Finding("HELO_NOT_FQDN", f"HELO {helo[:80]!r} is not a fully qualified host name")
            return
        host, domains = self.ours
        if name == host:
            yield Finding("HELO_IS_OURS", f"HELO {helo} is this host's own name")
        elif (d := _in_domains(name, domains)) is not None:
            yield Finding("HELO_IS_OURS", f"HELO {helo} claims our domain {d}")


# --- client reverse DNS -----------------------------------------------------------------------


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
        if ip is None or _is_internal(self, ip) or ip.is_loopback:
            return
        resolver = self.services.resolver
        budget = _Budget(self.settings.dns_budget)
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


# --- sender domain DNS ------------------------------------------------------------------------


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
        budget = _Budget(self.settings.dns_budget)
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


# --- header heuristics ------------------------------------------------------------------------


@dataclass(frozen=True)
class HeaderHeuristicsSettings(CheckSettings):
    many_rcpts: int = setting(20, "MANY_RCPTS at this many envelope recipients or more", positive)
    received_skew_hours: float = setting(
        24.0, "DATE_RECEIVED_MISMATCH when Date and the first Received differ by more hours", positive
    )
    max_received: int = setting(30, "RECEIVED_TOO_MANY above this many Received headers", positive)


# Characters spam uses to imitate others in domain names, mapped to what they imitate.
_HOMOGLYPHS = (("rn", "m"), ("vv", "w"), ("0", "o"), ("1", "l"), ("i", "l"), ("5", "s"), ("3", "e"))
_TZ = re.compile(r"([+-])(\d\d)(\d\d)\s*(?:\(.*\))?\s*$")


class HeaderHeuristics(Check):
    name = "header_heuristics"
    stage = Stage.EOM  # reads headers only
    requires = (DKIM,)  # which domains authenticated
    description = "many recipients; From imitating our domains; Date, Message-ID, Received anomalies"
    # Measured on the SpamAssassin public corpus (4150 ham / 1896 spam, 2002), share of messages:
    #   DATE_BAD_TIMEZONE       ham 0.0%   spam 17.5%   -> a strong sign: 2.0
    #   DATE_RECEIVED_MISMATCH  ham 0.3%   spam  8.9%   -> 1.5
    #   RECEIVED_MALFORMED      ham 1.6%   spam  5.1%   -> weak: 0.5
    #   MESSAGE_ID_NOT_FQDN     ham 11.3%  spam 16.4%   -> nearly no signal (many MUAs write
    #                           "<id@hostname>"): 0.1, kept so the report shows it
    # The From checks need [network] local_domains and SPF/DKIM results, which that corpus lacks.
    symbols = {
        "MANY_RCPTS": 1.0,
        "FROM_LOCAL_DOMAIN_UNAUTH": 2.5,
        "FROM_LOOKALIKE_LOCAL": 3.0,
        "FROM_DISPLAY_LOCAL_DOMAIN": 2.0,
        "DUPLICATE_DATE": 1.0,
        "DUPLICATE_MESSAGE_ID": 1.0,
        "DATE_BAD_TIMEZONE": 2.0,
        "MESSAGE_ID_NOT_FQDN": 0.1,
        "DATE_RECEIVED_MISMATCH": 1.5,
        "RECEIVED_MALFORMED": 0.5,
        "RECEIVED_TOO_MANY": 1.0,
    }
    Settings = HeaderHeuristicsSettings

    @cached_property
    def domains(self) -> frozenset[str]:
        return _our_names(self)[1]

    def run(self, tx: Transaction) -> Iterable[Output]:
        assert isinstance(self.settings, HeaderHeuristicsSettings)
        s = self.settings
        if len(tx.rcpts) >= s.many_rcpts:
            yield Finding("MANY_RCPTS", f"{len(tx.rcpts)} recipients in one message")
        yield from self._from(tx)
        dates = tx.header_values("Date")
        ids = tx.header_values("Message-ID")
        if len(dates) > 1:
            yield Finding("DUPLICATE_DATE", f"{len(dates)} Date headers")
        if len(ids) > 1:
            yield Finding("DUPLICATE_MESSAGE_ID", f"{len(ids)} Message-ID headers")
        for date in dates:
            if (m := _TZ.search(date)) is not None:
                hours, minutes = int(m.group(2)), int(m.group(3))
                if minutes >= 60 or hours * 60 + minutes > 14 * 60:  # real zones span -12:00..+14:00
                    yield Finding("DATE_BAD_TIMEZONE", f"Date has an impossible zone {m.group(0).strip()!r}")
                    break
        if ids:
            right = ids[0].strip().strip("<>").rpartition("@")[2]
            if right and "." not in right and not right.startswith("["):
                yield Finding("MESSAGE_ID_NOT_FQDN", f"Message-ID ends in {right[:60]!r}, not a domain")
        yield from self._received(tx, dates[0] if dates else None)

    def _from(self, tx: Transaction) -> Iterable[Finding]:
        values = tx.header_values("From")
        if not values or not self.domains:
            return
        pairs = getaddresses([values[0]])
        if not pairs:
            return
        display, address = pairs[0]
        from_domain = domain_of(address)
        if from_domain is None:
            return
        auth = set().union(*authenticated_domains(tx).values())
        authenticated = any(from_domain == d or from_domain.endswith("." + d) for d in auth)
        if (ours := _in_domains(from_domain, self.domains)) is not None:
            if not authenticated:
                yield Finding(
                    "FROM_LOCAL_DOMAIN_UNAUTH",
                    f"From <{address}> is our domain {ours}, but the message came from outside unauthenticated",
                )
            return
        for d in self.domains:
            if lookalike(from_domain, d):
                yield Finding("FROM_LOOKALIKE_LOCAL", f"From domain {from_domain} imitates our domain {d}")
                return
        shown = display.lower()
        for d in self.domains:
            if d in shown:
                yield Finding(
                    "FROM_DISPLAY_LOCAL_DOMAIN",
                    f"From display name {display[:60]!r} names our domain {d}; the address is <{address}>",
                )
                return

    def _received(self, tx: Transaction, date: str | None) -> Iterable[Finding]:
        assert isinstance(self.settings, HeaderHeuristicsSettings)
        received = tx.header_values("Received")
        if len(received) > self.settings.max_received:
            yield Finding("RECEIVED_TOO_MANY", f"{len(received)} Received headers (a loop or forgery)")
        if not received:
            return
        bad = [r for r in received if ";" not in r or _received_time(r) is None]
        if bad:
            yield Finding(
                "RECEIVED_MALFORMED", f"{len(bad)} Received header(s) without a valid date: {bad[0][:60]!r}"
            )
        first_hop = _received_time(received[-1])  # the bottom one: where the message entered mail
        if date is None or first_hop is None:
            return
        try:
            sent = email.utils.parsedate_to_datetime(date).timestamp()
        except (TypeError, ValueError, IndexError, OverflowError):
            return  # header_sanity reports an unparsable Date
        skew = (sent - first_hop) / 3600
        if abs(skew) > self.settings.received_skew_hours:
            where = "after" if skew > 0 else "before"
            yield Finding(
                "DATE_RECEIVED_MISMATCH",
                f"Date is {abs(skew):.0f} hours {where} the first Received header's time",
            )


def _received_time(value: str) -> float | None:
    stamp = value.rpartition(";")[2].strip()
    try:
        return email.utils.parsedate_to_datetime(stamp).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def lookalike(domain: str, ours: str) -> bool:
    """True when `domain` imitates `ours`: the same after undoing common character swaps
    (``rn``->``m``, ``0``->``o``...), or one edit away (for names long enough that one edit is not a
    different ordinary word).  A subdomain of ours is ours, not a look-alike."""
    if domain == ours or domain.endswith("." + ours):
        return False
    if _unglyph(domain) == _unglyph(ours):
        return True
    name, base = domain.split(".")[0], ours.split(".")[0]
    if domain.partition(".")[2] == ours.partition(".")[2] and len(base) >= 5:
        return _one_edit(name, base)
    return False


def _unglyph(domain: str) -> str:
    d = domain.lower()
    for fake, real in _HOMOGLYPHS:
        d = d.replace(fake, real)
    return d


def _one_edit(a: str, b: str) -> bool:
    """Levenshtein distance 1, or two neighbours swapped."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        if len(diff) == 1:
            return True
        return (
            len(diff) == 2
            and diff[1] == diff[0] + 1
            and a[diff[0]] == b[diff[1]]
            and a[diff[1]] == b[diff[0]]
        )
    short, long_ = (a, b) if len(a) < len(b) else (b, a)
    return any(long_[:i] + long_[i + 1 :] == short for i in range(len(long_)))

"""Header habits of bulk-mail software (end of message, after DKIM): many recipients; a From that
imitates one of our domains on unauthenticated mail (the domain itself, a look-alike, or in the
display name); Date, Message-ID and Received anomalies that `header_sanity` does not cover.
"""

from __future__ import annotations

import email.utils
import re
from collections.abc import Iterable
from dataclasses import dataclass

from filterd.addresses import getaddresses
from filterd.auth.results import DKIM
from filterd.check import Check, CheckSettings, Finding, Output, Stage
from filterd.checks.smtp_common import in_domains, our_names
from filterd.keys import domain_of
from filterd.reputation import authenticated_domains
from filterd.settings import positive, setting
from filterd.transaction import Transaction


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

    @property  # read per message: with [sql] the local domains change while filterd runs
    def domains(self) -> frozenset[str]:
        return our_names(self)[1]

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
        if (ours := in_domains(from_domain, self.domains)) is not None:
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

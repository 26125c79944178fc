"""Header sanity: the Date, Message-ID and From headers every real mail program writes.

Spamware often leaves them out, writes them wrongly, or stamps a Date days away from now.  Each
problem is its own symbol so an admin can score them apart.  Runs at end of headers: no body needed.
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from filterd.addresses import getaddresses
from filterd.check import Check, CheckSettings, Finding, Output, Stage
from filterd.settings import positive, setting
from filterd.transaction import Transaction

# RFC 5322 msg-id: "<" id-left "@" id-right ">", neither side empty nor holding spaces or brackets.
_MESSAGE_ID = re.compile(r"^<[^<>@\s]+@[^<>@\s]+>$")


@dataclass(frozen=True)
class HeaderSanitySettings(CheckSettings):
    future_hours: float = setting(24.0, "a Date more than this many hours ahead is DATE_IN_FUTURE", positive)
    past_days: float = setting(7.0, "a Date more than this many days old is DATE_IN_PAST", positive)


class HeaderSanity(Check):
    name = "header_sanity"
    stage = Stage.HEADERS
    description = "missing or malformed Date, Message-ID and From; Date far from now"
    symbols = {
        "MISSING_DATE": 1.0,
        "INVALID_DATE": 1.5,
        "DATE_IN_FUTURE": 2.0,
        "DATE_IN_PAST": 1.0,
        "MISSING_MESSAGE_ID": 1.0,
        "INVALID_MESSAGE_ID": 1.0,
        "MISSING_FROM": 2.0,
        "INVALID_FROM": 2.0,
        "DUPLICATE_FROM": 1.5,
    }
    Settings = HeaderSanitySettings
    clock: Callable[[], float] = staticmethod(time.time)

    def decides(self) -> bool:
        return False  # findings only

    def run(self, tx: Transaction) -> Iterable[Output]:
        yield from self._date(tx.header_values("Date"))
        yield from self._message_id(tx.header_values("Message-ID"))
        yield from self._from(tx.header_values("From"))

    def _date(self, values: list[str]) -> Iterable[Finding]:
        assert isinstance(self.settings, HeaderSanitySettings)
        if not values:
            yield Finding("MISSING_DATE", "no Date header")
            return
        try:
            sent = email.utils.parsedate_to_datetime(values[0]).timestamp()
        except (TypeError, ValueError, IndexError, OverflowError):
            yield Finding("INVALID_DATE", f"Date header cannot be parsed: {values[0][:60]!r}")
            return
        ahead = sent - self.clock()
        if ahead > self.settings.future_hours * 3600:
            yield Finding("DATE_IN_FUTURE", f"Date is {ahead / 3600:.0f} hours in the future")
        elif -ahead > self.settings.past_days * 86400:
            yield Finding("DATE_IN_PAST", f"Date is {-ahead / 86400:.0f} days in the past")

    def _message_id(self, values: list[str]) -> Iterable[Finding]:
        if not values:
            yield Finding("MISSING_MESSAGE_ID", "no Message-ID header")
        elif not _MESSAGE_ID.match(values[0].strip()):
            yield Finding("INVALID_MESSAGE_ID", f"Message-ID is not <left@right>: {values[0][:60]!r}")

    def _from(self, values: list[str]) -> Iterable[Finding]:
        if not values:
            yield Finding("MISSING_FROM", "no From header")
            return
        if len(values) > 1:
            yield Finding("DUPLICATE_FROM", f"{len(values)} From headers")
        addresses = _addresses(values[0])
        if not addresses or not all(_is_address(a) for a in addresses):
            yield Finding("INVALID_FROM", f"From has no valid address: {values[0][:60]!r}")


_BRACKETED = re.compile(r"<([^<>]*)>")
# One plain dot-atom address with a quoted display name or a trailing comment: the shapes of a
# third of the corpus's From values.  getaddresses returns exactly the address for these (checked
# on every From, To, Cc, Reply-To and Sender value of 5,000 corpus messages), at a quarter of the cost.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_ADDR = rf"{_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
_QUOTED_NAME = re.compile(rf'\s*"[^"\\]*"\s*<({_ADDR})>\s*\Z')  # "Name" <a@b.c>
_COMMENTED = re.compile(rf'\s*({_ADDR})\s*\([^()\\"]*\)\s*\Z')  # a@b.c (Name)


def _addresses(value: str) -> list[str]:
    """The addr-specs of a From value.

    email.utils.getaddresses is a full RFC 5322 parser and costs ~0.3 ms a call here, most of the
    pipeline's time on a typical message; the common shapes -- ``Name <a@b>`` and a bare ``a@b``,
    ``"Name" <a@b>`` and ``a@b (Name)`` -- are read with a regex, and only other values with quotes
    or comments go to the full parser.
    """
    if '"' in value or "(" in value:
        if (m := _QUOTED_NAME.match(value) or _COMMENTED.match(value)) is not None:
            return [m.group(1)]
        return [a for _, a in getaddresses([value]) if a]
    bracketed = _BRACKETED.findall(value)
    if bracketed:
        return [a.strip() for a in bracketed if a.strip()]
    return [a.strip() for a in value.split(",") if a.strip()]


def _is_address(address: str) -> bool:
    local, at, domain = address.rpartition("@")
    return bool(
        (at and local and domain and " " not in address and "." in domain.strip("[]"))
        or domain.startswith("[")
    )

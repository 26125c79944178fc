"""DNS blocklist zones as DNSBL and URIBL checks configure them, and how their answers read.

An A record in 127.0.0.0/8 means listed, and the address it returns says on which of the zone's
lists (for Spamhaus ZEN, 127.0.0.2 is the SBL, 127.0.0.4 the XBL...).  A zone may name the return
codes that count (``"zen.example=127.0.0.2,127.0.0.3"``) or a bit mask over the last octet, as
combined lists like SURBL's encode their sublists (``"multi.example&6"``: bits 2 and 4).  An
answer outside 127.0.0.0/8, or in 127.255.255.0/24 (where the big lists answer "you may not query
me"), is not a listing: a wrong answer must not score mail.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

LISTED_RANGE = ipaddress.ip_network("127.0.0.0/8")
REFUSED_RANGE = ipaddress.ip_network("127.255.255.0/24")


@dataclass(frozen=True)
class Zone:
    """One configured list: its DNS zone and which answers count as listed."""

    name: str
    codes: frozenset[str] = frozenset()  # listed only with one of these answers (empty: any)
    mask: int = 0  # listed only when the answer's last octet has one of these bits (0: any)

    def listing(self, answers: Iterable[str]) -> list[str]:
        """The answers that say "listed" (see the module docstring)."""
        found = []
        for answer in answers:
            try:
                address = ipaddress.ip_address(answer)
            except ValueError:
                continue
            if address not in LISTED_RANGE or address in REFUSED_RANGE:
                continue
            if self.codes and answer not in self.codes:
                continue
            if self.mask and not int(answer.rsplit(".", 1)[1]) & self.mask:
                continue
            found.append(answer)
        return found


def parse_zone(entry: str) -> Zone:
    """``"zone"``, ``"zone=127.0.0.2,127.0.0.3"`` or ``"zone&MASK"``; ValueError naming the mistake."""
    name, codes, mask = entry.strip(), frozenset[str](), 0
    if "=" in name:
        name, _, listed = name.partition("=")
        codes = frozenset(c.strip() for c in listed.split(",") if c.strip())
        for code in codes:
            try:
                if ipaddress.ip_address(code) not in LISTED_RANGE:
                    raise ValueError
            except ValueError:
                raise ValueError(
                    f"{entry!r}: return code {code!r} is not an address in 127.0.0.0/8"
                ) from None
    elif "&" in name:
        name, _, bits = name.partition("&")
        try:
            mask = int(bits, 0)
        except ValueError:
            raise ValueError(f"{entry!r}: mask {bits!r} is not a number (e.g. 6 or 0x06)") from None
        if not 0 < mask < 256:
            raise ValueError(f"{entry!r}: mask must be 1-255 (bits of the answer's last octet)")
    name = name.strip().rstrip(".").lower()
    labels = name.split(".")
    if len(labels) < 2 or not all(label and len(label) < 64 for label in labels):
        raise ValueError(f"{entry!r}: {name!r} is not a DNS zone such as zen.spamhaus.org")
    return Zone(name, codes, mask)


def check_zones(entries: tuple[str, ...]) -> str | None:
    """The validator of a `zones` setting: the first entry `parse_zone` refuses, said why."""
    for entry in entries:
        try:
            parse_zone(entry)
        except ValueError as exc:
            return str(exc)
    return None

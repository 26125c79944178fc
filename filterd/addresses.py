"""Address headers (From, To, Cc, ...) read into (display name, address) pairs without ever raising.

`email.utils.getaddresses` is the full RFC 5322 parser and gives display names, but it recurses
once per group (``g: a@x;``): a header with ``, g:g:`` repeated 800 times raises RecursionError,
which in a check is a fail-open any sender can reach.  So each value is cut to `MAX_CHARS` (a real
one is under 1 KB) and, should the stdlib parser still give up, the addresses are read by the
linear reader DMARC uses (`filterd.auth.fromheader`), without display names.
"""

from __future__ import annotations

import email.utils
from collections.abc import Iterable

from filterd.auth.fromheader import MAX_CHARS, addresses_of


def getaddresses(values: Iterable[str]) -> list[tuple[str, str]]:
    """(display name, address) of every mailbox in the header values; never raises."""
    bounded = [value[:MAX_CHARS] for value in values]
    try:
        return email.utils.getaddresses(bounded)
    except RecursionError:  # nested groups: linear reading, display names lost
        return [("", address) for value in bounded for address in addresses_of(value)]

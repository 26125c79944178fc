"""The domains of the From header (RFC 5322 3.6.2), read in one linear pass with fixed bounds.

DMARC needs the RFC5322.From domain(s), and a From header is message bytes: it may be long,
hold groups (``g: a@x, b@y;``), route addresses, quoted display names with an ``@`` inside,
comments, or 8-bit bytes.  `email.utils.getaddresses` recurses on groups (a From with
``, g:g:`` a thousand times raises RecursionError), so it is not used here.

The reading is deliberately simple and never raises: comments are dropped, quoted strings become
a placeholder (so ``"ceo@bank.example" <x@evil.example>`` names only evil.example), an address in
angle brackets is the mailbox's address, else every bare word holding an ``@`` is one.  Only the
first `MAX_CHARS` characters of each header and the first `MAX_ADDRESSES` addresses are read; the
result says when more were there.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

MAX_CHARS = 8192  # of each From header; a real one is under 1 KB
MAX_ADDRESSES = 50  # in all From headers together

# One token of the skeleton: an angle address, a run of ordinary text, or one separator.
_TOKEN = re.compile(r"<[^<>]*>|[^,;:<>]+|[,;:<>]")


@dataclass(frozen=True)
class FromDomains:
    domains: tuple[str, ...]  # distinct, lower-case, without a trailing dot, in order of appearance
    addresses: int  # addresses read (with or without a domain)
    truncated: bool  # a header was longer than MAX_CHARS or held more than MAX_ADDRESSES addresses


def from_domains(values: Iterable[str]) -> FromDomains:
    """The domains of the addresses in the From header values `values`."""
    domains: dict[str, None] = {}
    count = 0
    truncated = False
    for value in values:
        if len(value) > MAX_CHARS:
            truncated = True
        for address in _addresses(_skeleton(value[:MAX_CHARS])):
            if count >= MAX_ADDRESSES:
                return FromDomains(tuple(domains), count, True)
            count += 1
            _local, at, domain = address.rpartition("@")
            domain = domain.strip().lower().rstrip(".")
            if at and domain:
                domains.setdefault(domain, None)
    return FromDomains(tuple(domains), count, truncated)


def addresses_of(value: str) -> list[str]:
    """The addresses of one header value, read linearly (quoted display names dropped)."""
    return list(_addresses(_skeleton(value)))


def _skeleton(value: str) -> str:
    """`value` with comments removed and each quoted string replaced by ``q`` (one pass).

    An unterminated quoted string is read as ordinary text: what a lenient reader may show as an
    address is then an address here too."""
    out: list[str] = []
    in_quotes: list[str] = []  # the text of the open quoted string
    depth = 0  # comment nesting
    quoted = escaped = False
    for ch in value:
        if quoted:
            in_quotes.append(ch)
        if escaped:
            escaped = False
        elif ch == "\\" and (quoted or depth):
            escaped = True
        elif quoted:
            if ch == '"':
                quoted = False
                in_quotes.clear()
                out.append("q")
        elif depth:
            if ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
        elif ch == '"':
            quoted = True
        elif ch == "(":
            depth += 1
            out.append(" ")
        else:
            out.append(ch)
    if quoted:
        out.extend(in_quotes)
    return "".join(out)


def _addresses(skeleton: str) -> Iterable[str]:
    """The addresses of a comment- and quote-free From value: one per mailbox."""
    angle = ""
    words: list[str] = []
    for token in _TOKEN.findall(skeleton):
        if token in (",", ";"):  # end of a mailbox (";" ends a group too)
            yield from _mailbox(angle, words)
            angle, words = "", []
        elif token == ":":  # "display-name:" starts a group; what came before was its name
            angle, words = "", []
        elif token.startswith("<") and token.endswith(">") and len(token) > 1:
            angle = token[1:-1]
        elif token not in ("<", ">"):
            words.append(token)
    yield from _mailbox(angle, words)


def _mailbox(angle: str, words: list[str]) -> Iterable[str]:
    if angle:  # name-addr: the address in brackets; a route ("@a,@b:") is dropped
        yield angle.rpartition(":")[2].strip()
        return
    for word in " ".join(words).split():
        if "@" in word:
            yield word

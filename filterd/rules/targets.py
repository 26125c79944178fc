"""The texts rules look at, cut from one `Message` once and shared by every rule.

Each text is UTF-8 bytes (RE2 matches bytes, and encoding once per message is cheaper than once
per pattern).  Everything is computed on first use: a rule set without uri rules never
normalises a URL.  The message's own text extraction (`Message.text`, `Message.html`) is reused,
never redone, so the rules and the Bayes tokenizer pay for it once between them.
"""

from __future__ import annotations

import contextlib
import html
import itertools
import re
import urllib.parse
from dataclasses import dataclass
from functools import cached_property

from filterd.addresses import getaddresses
from filterd.message import Message, decode_words
from filterd.rules.engine import compile_pattern

MAX_FULL_BYTES = 1 << 20  # full rules see the first MiB of the raw message
MAX_URLS = 300  # distinct URLs looked at per message
MAX_LINKS = 300  # anchors showing an address looked at per message

_SURROGATE = re.compile(r"[\udc80-\udcff]")
_BAD_HOST = re.compile(r"[\s<>\"'`{}|\\^]")
_IMG_TAG = re.compile(r"(?i)<img\b")
_DEFAULT_PORTS = {"http": 80, "https": 443, "ftp": 21}


def encode(text: str) -> bytes:
    return text.encode("utf-8", "replace")


def header_text(value: str, charset: str | None = None) -> str:
    """A header value as a person reads it: RFC 2047 words decoded, raw 8-bit bytes guessed.

    `Message.headers` keeps bytes that are not UTF-8 as surrogate escapes.  Mail from Chinese,
    Japanese and Korean senders often carries raw GB2312/Big5/EUC-KR bytes in Subject and From
    with no encoded words.  Those bytes are decoded with the message's own charset when it names
    one (the body's charset is the sender's), else tried as GB18030 (a superset of GB2312 and
    GBK), else Latin-1, which never fails.
    """
    if _SURROGATE.search(value):
        raw = value.encode("utf-8", "surrogateescape")
        for codec in (charset, "gb18030"):
            if not codec:
                continue
            try:
                value = raw.decode(codec)
                break
            except (UnicodeDecodeError, LookupError):
                continue
        else:
            value = raw.decode("latin-1")
    return decode_words(value)


@dataclass(frozen=True)
class Url:
    """A URL reduced to what rules compare: lower-case scheme and host, the port if unusual,
    the path (``/`` when empty) and the query; the fragment is dropped."""

    text: str  # scheme://host[:port]/path[?query]
    scheme: str
    host: str  # lower case, no trailing dot, IDN hosts in punycode (xn--)


def normalise_url(url: str) -> Url | None:
    url = url.strip()
    if url[:4].lower() == "www.":
        url = "http://" + url
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:  # a bad port or a broken [IPv6] literal
        return None
    scheme = parts.scheme.lower()
    host = urllib.parse.unquote(parts.hostname or "").rstrip(".")
    if not scheme or not host or _BAD_HOST.search(host):
        return None
    if not host.isascii():
        with contextlib.suppress(UnicodeError):  # a label IDNA 2003 refuses: keep it as written
            host = host.encode("idna").decode("ascii")
    host = host.lower()
    netloc = f"[{host}]" if ":" in host else host  # an IPv6 literal keeps its brackets
    if port not in (None, _DEFAULT_PORTS.get(scheme)):
        netloc += f":{port}"
    path = parts.path or "/"
    query = f"?{parts.query}" if parts.query else ""
    return Url(f"{scheme}://{netloc}{path}{query}", scheme, host)


def parent_domains(host: str) -> list[str]:
    """``a.b.example.com`` -> the host itself and each parent down to the top-level label."""
    labels = host.split(".")
    return [".".join(labels[i:]) for i in range(len(labels))]


@dataclass(frozen=True)
class Link:
    """An HTML anchor: where it goes and the text the reader sees."""

    href: str
    text: str


# An <a> whose visible text starts with a web address, nested tags (<font>, <b>) allowed before it
# but not </a> or another <a>: group 1 is the href, group 2 the address shown.  One RE2 pass instead of an HTML parse: measured
# on the corpus, html.parser took 73% of the rules' time on the slowest 1% of messages, and
# anchors showing an address are the only ones a rule needs.
_SHOWN_URL_LINK = compile_pattern(
    r"""(?is)<a\s[^>]*?\bhref\s*=\s*["']?([^"'\s>]+)[^>]*>\s*(?:</?[b-z!][^>]*>\s*)*((?:https?://|www\.)[^<\s"]+)"""
)


def links_of(markup: str) -> list[Link]:
    """The anchors in `markup` whose text shows a web address."""
    if "<a" not in markup and "<A" not in markup:
        return []
    links: list[Link] = []
    for m in _SHOWN_URL_LINK.finditer(encode(markup)):
        href, text = (html.unescape(g.decode("utf-8", "replace")) for g in m.groups())
        links.append(Link(href.strip(), text))
        if len(links) >= MAX_LINKS:
            break
    return links


class Targets:
    """The texts of one message, made on first use."""

    def __init__(self, message: Message) -> None:
        self.message = message
        self._address_cache: dict[str, list[tuple[str, str]]] = {}

    @cached_property
    def body(self) -> bytes:
        return encode(self.message.text)

    @cached_property
    def rawbody(self) -> bytes:
        """The decoded text parts with HTML markup kept: plain parts, then HTML parts."""
        plain, markup = self.message.plain, self.message.html
        return encode(f"{plain}\n{markup}" if plain and markup else plain or markup)

    @cached_property
    def full(self) -> bytes:
        return self.message.raw[:MAX_FULL_BYTES]

    @cached_property
    def _headers(self) -> dict[str, list[str]]:
        by_name: dict[str, list[str]] = {}
        for name, value in self.message.headers:
            by_name.setdefault(name.lower(), []).append(value)
        return by_name

    def has_header(self, name: str) -> bool:
        return name.lower() in self._headers

    def header(self, name: str) -> bytes | None:
        """The decoded values of header `name` (``Name:addr`` / ``Name:name`` for the addresses or
        display names in it), one per line; None when the message has no such header."""
        base, _, part = name.partition(":")
        key = base.lower()
        values = self._headers.get(key)
        if values is None:
            return None
        if not part:
            return encode("\n".join(self.decode(v) for v in values))
        pairs = self._addresses(key)
        return encode("\n".join(addr if part == "addr" else display for display, addr in pairs))

    def _addresses(self, key: str) -> list[tuple[str, str]]:
        """(display name, address) pairs of an address header, parsed once for :addr and :name."""
        if key not in self._address_cache:
            decoded = [self.decode(v) for v in self._headers.get(key, ())]
            self._address_cache[key] = getaddresses(decoded)
        return self._address_cache[key]

    @cached_property
    def all_headers(self) -> bytes:
        """Every header as ``Name: decoded value``, one per line."""
        return encode("\n".join(f"{n}: {self.decode(v)}" for n, v in self.message.headers))

    def decode(self, value: str) -> str:
        """`header_text`, with the message's charset looked up only for raw 8-bit values."""
        return header_text(value, self.charset if _SURROGATE.search(value) else None)

    @cached_property
    def charset(self) -> str | None:
        """The charset the sender's program wrote in: the first one a text part (or the top
        Content-Type) names."""
        # The root, then the text leaves however deep: nesting must not hide the charset.
        for node in itertools.chain(self.message.mime[:1], (n for n in self.message.leaves if n.is_text)):
            charset = node.charset
            if charset and charset not in ("us-ascii", "ascii"):
                return charset
        return None

    @cached_property
    def urls(self) -> list[Url]:
        out: list[Url] = []
        seen: set[str] = set()
        for raw in self.message.urls:
            url = normalise_url(raw)
            if url is not None and url.text not in seen:
                seen.add(url.text)
                out.append(url)
                if len(out) >= MAX_URLS:
                    break
        return out

    @cached_property
    def links(self) -> list[Link]:
        """HTML anchors that show a web address as their text."""
        return links_of(self.message.html)

    @cached_property
    def image_count(self) -> int:
        """Images the reader sees: <img> tags in the HTML plus image parts that are not inline in it."""
        tags = len(_IMG_TAG.findall(self.message.html))
        parts = sum(1 for p in self.message.parts if p.content_type.startswith("image/"))
        return max(tags, parts)

"""A received message as the checks see it: raw bytes, headers, and the text extracted once.

Everything is computed lazily and cached, so a check that reads only headers never pays for MIME
parsing, and the rules and the classifier share one text extraction.  The MIME tree comes from
fast_mail_parser (see `Message.mime`), the stdlib's `email` parser standing in for what it refuses.
Work is bounded: text parts beyond `MAX_TEXT_CHARS` are cut.

Malformed input never raises from here: broken MIME, bad charsets and bad transfer encodings give
whatever text can be recovered.
"""

from __future__ import annotations

import email.header
import email.message
import email.parser
import email.policy
import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import fast_mail_parser

from filterd.htmlscan import HtmlScan, scan_html

MAX_TEXT_CHARS = 200_000  # text kept per message for content checks
MAX_PARTS = 200  # MIME parts looked at
TOO_DEEP = 10_000  # the mime_depth of a tree nested too deep for the parsers to read

_HEADER_NAME = re.compile(r"[!-9;-~]+")  # RFC 5322 ftext
_URL = re.compile(r"""(?i)\b(?:https?://|www\.)[^\s<>"'()\[\]{}]{2,2000}""")
# The same URL in lower-case text, without the leading \b: a pattern that starts with a plain
# character set lets `re` skip ahead to each "h" or "w" instead of trying every position, three
# times faster; `find_urls` checks the word boundary itself.
_URL_LOWER = re.compile(r"""(?:https?://|www\.)[^\s<>"'()\[\]{}]{2,2000}""")
_SPACES = re.compile(r"[\t\r\f\v][ \t\r\f\v]*| [ \t\r\f\v]+")  # only what changes: not each single space
_NEWLINES = re.compile(r"\n{3,}")


@dataclass(frozen=True)
class Part:
    """One leaf of the MIME tree."""

    content_type: str
    filename: str | None
    size: int  # decoded size in bytes
    is_attachment: bool


class Message:
    def __init__(self, raw: bytes) -> None:
        self.raw = raw

    @cached_property
    def header_block(self) -> bytes:
        end = _header_end(self.raw)
        return self.raw[:end]

    @cached_property
    def headers(self) -> list[tuple[str, str]]:
        """(name, value) in order; folding removed, value stripped, undecoded (RFC 2047 words kept).

        A line that is not a header (a stray mbox From_ line, garbage) is skipped, with its
        continuation lines."""
        text = self.header_block.decode("utf-8", "surrogateescape")
        if "\r" in text:
            text = text.replace("\r\n", "\n")
        fields: list[list[str]] = []
        current: list[str] | None = None
        for line in text.split("\n"):
            if line[:1] in (" ", "\t"):
                if current is not None:
                    current.append(line.strip())
                continue
            name, colon, value = line.partition(":")
            name = name.rstrip(" \t")
            if colon and _HEADER_NAME.fullmatch(name):
                current = [name, value]
                fields.append(current)
            else:
                current = None
        return [(f[0], " ".join(f[1:]).strip()) for f in fields]

    def header_values(self, name: str) -> list[str]:
        key = name.lower()
        return [v for n, v in self.headers if n.lower() == key]

    def header(self, name: str) -> str | None:
        values = self.header_values(name)
        return values[0] if values else None

    def decoded_header(self, name: str) -> str | None:
        """The first header called `name` with RFC 2047 encoded words decoded."""
        value = self.header(name)
        return None if value is None else decode_words(value)

    @cached_property
    def mime(self) -> list[MimeNode]:
        """Every node of the MIME tree in walk order (containers too), at most `MAX_PARTS`.

        Parsed by fast_mail_parser (Rust mailparse): about five times faster than the stdlib
        parser, which was the largest single cost of the rules and the classifier.  A message it
        refuses, or with a text part it cannot transfer-decode (base64 that the stdlib's decoder
        tolerates), is parsed by the stdlib instead, so malformed input still gives its text.  Other
        parts are decoded only when asked (`payload`, `parts`)."""
        try:
            root = fast_mail_parser.parse_email_tree(self.raw, mode="lazy")
            nodes: list[MimeNode] = [
                _FastNode(n) for n in itertools.islice(fast_mail_parser.walk(root), MAX_PARTS)
            ]
            for node in nodes:
                if node.is_text:
                    node.payload()  # a text part it cannot decode: the stdlib's text instead
            return nodes
        except fast_mail_parser.ParseError:
            tree = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(self.raw)
            return [_StdlibNode(p) for p in itertools.islice(tree.walk(), MAX_PARTS)]

    @cached_property
    def mime_depth(self) -> int:
        """The deepest MIME nesting level, the root being 0, counted over the whole tree (not only
        the first `MAX_PARTS` nodes).  A tree too deep for both parsers counts as `TOO_DEEP`."""
        try:
            root = fast_mail_parser.parse_email_tree(self.raw, mode="lazy")
        except fast_mail_parser.ParseError:
            try:
                tree = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(self.raw)
            except RecursionError:  # the stdlib parser recurses once per level
                return TOO_DEEP
            return _depth(tree, lambda p: p.get_payload() if p.is_multipart() else [])
        return _depth(root, lambda n: n.children)

    @cached_property
    def leaves(self) -> list[MimeNode]:
        """The MIME nodes that carry content."""
        return [node for node in self.mime if not node.is_container]

    @cached_property
    def parts(self) -> list[Part]:
        """The leaves, each decoded for its size (`leaves` is cheaper when the size is not needed)."""
        return [
            Part(
                content_type=node.content_type,
                filename=node.filename,
                size=node.size(),
                is_attachment=node.disposition == "attachment" or node.filename is not None,
            )
            for node in self.leaves
        ]

    @cached_property
    def _texts(self) -> tuple[str, str]:
        plain: list[str] = []
        markup: list[str] = []
        budget = MAX_TEXT_CHARS
        for node in self.leaves:
            if budget <= 0:
                break
            if not node.is_text:
                continue
            text = node.text()[:budget]
            budget -= len(text)
            (markup if node.content_type == "text/html" else plain).append(text)
        return "\n".join(plain), "\n".join(markup)

    @cached_property
    def plain(self) -> str:
        """The text/plain parts, concatenated, as decoded."""
        return self._texts[0]

    @cached_property
    def html(self) -> str:
        """The HTML text parts, concatenated, as markup."""
        return self._texts[1]

    @cached_property
    def html_scan(self) -> HtmlScan:
        """The HTML parts scanned once: their text, links, tags and attributes."""
        return scan_html(self._texts[1])

    @cached_property
    def readable(self) -> str:
        """Plain parts plus HTML parts reduced to text, white space as it came (for a consumer of
        words only, such as the classifier: it need not pay for `text`'s clean-up)."""
        plain, markup = self._texts
        if markup:
            text = self.html_scan.text
            plain = (plain + "\n" + text) if plain else text
        return plain

    @cached_property
    def text(self) -> str:
        """The readable text, runs of white space made one space, and at most one blank line."""
        return _NEWLINES.sub("\n\n", _SPACES.sub(" ", self.readable)).strip()

    @cached_property
    def urls(self) -> list[str]:
        """Every URL in the text and in HTML href/src attributes, in order, duplicates removed."""
        found = find_urls(self._texts[0]) + find_urls(self._texts[1])
        found += self.html_scan.urls
        seen: dict[str, None] = {}
        for u in found:
            seen.setdefault(u.rstrip(".,;:!?"), None)
        return list(seen)


def _depth(root: Any, children: Callable[[Any], Any]) -> int:
    """The deepest level under `root` (0), walked without recursion."""
    deepest = 0
    stack = [(root, 0)]
    while stack:
        node, level = stack.pop()
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in children(node) if not isinstance(child, str))
    return deepest


def decode_words(value: str) -> str:
    """Decode RFC 2047 encoded words, tolerating unknown charsets and broken encodings."""
    if "=?" not in value:
        return value
    try:
        chunks = email.header.decode_header(value)
    except (ValueError, LookupError, AssertionError):
        return value
    out: list[str] = []
    for data, charset in chunks:
        if isinstance(data, str):
            out.append(data)
            continue
        try:
            out.append(data.decode(charset or "ascii", "replace"))
        except LookupError:
            out.append(data.decode("latin-1"))
    return "".join(out)


def find_urls(text: str) -> list[str]:
    """The http(s):// and www. addresses in `text`, each starting at a word boundary."""
    lowered = text.lower()
    if len(lowered) != len(text):  # a character whose lower case is longer: positions differ
        return _URL.findall(text)
    found: list[str] = []
    pos = 0
    while m := _URL_LOWER.search(lowered, pos):
        start = m.start()
        if start and (lowered[start - 1].isalnum() or lowered[start - 1] == "_"):
            pos = start + 1  # inside a word ("xhttp://"): not a URL here, maybe one further on
            continue
        found.append(text[start : m.end()])
        pos = m.end()
    return found


def html_to_text(markup: str) -> str:
    return scan_html(markup).text


def _header_end(raw: bytes) -> int:
    """Offset of the blank line that ends the header block (CRLF or bare LF)."""
    crlf = raw.find(b"\r\n\r\n")
    lf = raw.find(b"\n\n")
    ends = [i for i in (crlf, lf) if i >= 0]
    return min(ends) if ends else len(raw)


class MimeNode:
    """One node of the MIME tree, whichever parser read it."""

    content_type: str  # lower-case type/subtype; text/plain when missing, as RFC 2045 says
    charset: str | None  # lower-case, from Content-Type
    filename: str | None  # RFC 2047 words decoded
    disposition: str  # lower-case: "attachment", "inline" or ""
    transfer_encoding: str  # lower-case Content-Transfer-Encoding, "" when absent
    is_container: bool  # multipart/* and message/rfc822: no payload of its own

    @property
    def is_text(self) -> bool:
        """A readable text leaf: text/plain or text/html, not sent as a named file."""
        return (
            not self.is_container
            and self.content_type in ("text/plain", "text/html")
            and self.filename is None
        )

    def payload(self) -> bytes:
        """The transfer-decoded bytes of a leaf (b"" for a container)."""
        raise NotImplementedError

    def size(self) -> int:
        """Bytes of the decoded payload."""
        return len(self.payload())

    def text(self) -> str:
        """The payload decoded by its charset; never raises."""
        data = self.payload()
        try:
            return data.decode(self.charset or "utf-8", "replace")
        except LookupError:  # an unknown charset name: latin-1 never fails and keeps ASCII words intact
            return data.decode("latin-1")


_CHARSET = re.compile(r"""(?i)[;\s]charset\s*=\s*["']?([^"';\s]+)""")


class _FastNode(MimeNode):
    def __init__(self, node: fast_mail_parser.PyLazyMimePart) -> None:
        self._node = node
        self.content_type = node.content_type.lower()
        self.filename = decode_words(node.filename) if node.filename else None
        self.disposition = (node.disposition or "").lower()
        self.is_container = (
            bool(node.children) or node.is_message or self.content_type.startswith("multipart/")
        )
        content_type = encoding = ""
        for name, values in node.headers.items():
            key = name.lower()
            if key == "content-type":
                content_type = values[0]
            elif key == "content-transfer-encoding":
                encoding = values[0].strip().lower()
        m = _CHARSET.search(content_type)
        self.charset = m.group(1).lower() if m else None
        self.transfer_encoding = encoding

    def payload(self) -> bytes:
        if self.is_container:
            return b""
        try:
            return self._node.content or b""
        except fast_mail_parser.DecodeError:  # a broken attachment (text parts are checked earlier)
            return b""

    def size(self) -> int:
        try:
            return 0 if self.is_container else len(self._node.content or b"")
        except fast_mail_parser.DecodeError:
            return self._node.encoded_size or 0  # what it takes in the message


class _StdlibNode(MimeNode):
    def __init__(self, part: email.message.Message) -> None:
        self._part = part
        self.content_type = part.get_content_type()
        self.filename = _filename(part)
        self.disposition = (part.get("Content-Disposition") or "").split(";")[0].strip().lower()
        self.is_container = part.is_multipart()
        try:
            self.charset = part.get_content_charset()
        except (ValueError, LookupError, AssertionError):
            self.charset = None
        self.transfer_encoding = str(part.get("Content-Transfer-Encoding", "")).strip().lower()

    def payload(self) -> bytes:
        return b"" if self.is_container else _payload_bytes(self._part)


def _payload_bytes(part: email.message.Message) -> bytes:
    try:
        payload = part.get_payload(decode=True)
    except (ValueError, AssertionError, LookupError):
        payload = None
    if isinstance(payload, bytes):
        return payload
    raw = part.get_payload()
    return raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else b""


def _filename(part: email.message.Message) -> str | None:
    try:
        name = part.get_filename()
    except (ValueError, LookupError, AssertionError):
        return None
    return decode_words(name) if name else None

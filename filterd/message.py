"""A received message as the checks see it: raw bytes, headers, and the text extracted once.

Everything is computed lazily and cached, so a check that reads only headers never pays for MIME
parsing, and the rules and the classifier share one text extraction.  The MIME tree comes from
fast_mail_parser (see `Message.mime`), the stdlib's `email` parser standing in for what it refuses.
Work is bounded: text parts beyond `MAX_TEXT_CHARS` are cut.

Malformed input never raises from here: broken MIME, bad charsets and bad transfer encodings give
whatever text can be recovered.
"""

from __future__ import annotations

import binascii
import email.message
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property

import fast_mail_parser

from filterd import mimetree
from filterd.archives import is_zip, member_names
from filterd.confusables import fold as fold_confusables
from filterd.htmlscan import HtmlScan, scan_html

MAX_TEXT_CHARS = 200_000  # text kept per message for content checks
MAX_PARTS = 200  # MIME containers, empty leaves, and other leaves kept for the checks: each
MAX_FAST_ENCODED_WORDS = 1_000  # more "=?" than this: the message is read by mimetree (see `_tree`)
MAX_TEXT_BYTES = 4 * MAX_TEXT_CHARS  # decoded text-part bytes kept: the text budget of `Message.mime`

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
    members: tuple[str, ...] = ()  # the file names inside a ZIP attachment (filterd/archives.py)


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
    def _tree(self) -> _Tree:
        """The MIME tree walked once, without recursion: the nodes kept, and its whole shape.

        Parsed by fast_mail_parser (Rust mailparse): about five times faster than the stdlib
        parser, which was the largest single cost of the rules and the classifier.  A message it
        refuses (nesting over 256 levels among them), or with a text part it cannot
        transfer-decode (truncated base64), is read by `filterd.mimetree` instead, which tolerates
        both; so is one with more than `MAX_FAST_ENCODED_WORDS` "=?" in it, because fast_mail_parser's
        header decoding is quadratic in the encoded words of one header (34 KB of them: 5 ms,
        340 KB: 0.4 s, 1 MB: 4 s).  Other parts are decoded only when asked (`payload`, `parts`)."""
        try:
            if self.raw.count(b"=?") > MAX_FAST_ENCODED_WORDS:
                raise _Undecodable
            root = fast_mail_parser.parse_email_tree(self.raw, mode="lazy")
            return _keep(_FastNode(node, depth) for node, depth in _walk_fast(root))
        except (fast_mail_parser.ParseError, _Undecodable):
            return _keep(_RawNode(part) for part in mimetree.walk(self.raw))

    @property
    def mime(self) -> list[MimeNode]:
        """The nodes of the MIME tree in walk order (containers too) that the checks look at.

        Every text leaf with content is kept until `MAX_TEXT_BYTES` of text; of the containers, of
        the empty leaves and of the other leaves (attachments) the first `MAX_PARTS` each.  So no
        number of empty or nested parts in front of the body can push the body or an attachment
        out of sight."""
        return self._tree.nodes

    @property
    def mime_depth(self) -> int:
        """The deepest nesting level of the MIME tree (the message itself is 0), over the whole tree."""
        return self._tree.depth

    @property
    def mime_nodes_total(self) -> int:
        """Every node of the MIME tree, containers included, counted past any cap."""
        return self._tree.total

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
                members=member_names(node.payload()) if is_zip(node.content_type, node.filename) else (),
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
    def _readable(self) -> tuple[str, int]:
        plain, markup = self._texts
        if markup:
            text = self.html_scan.text
            plain = (plain + "\n" + text) if plain else text
        return fold_confusables(plain)

    @cached_property
    def readable(self) -> str:
        """Plain parts plus HTML parts reduced to text, white space as it came (for a consumer of
        words only, such as the classifier: it need not pay for `text`'s clean-up).  Words that
        mix Latin with Cyrillic or Greek look-alike letters read as the Latin words they imitate
        (filterd/confusables.py)."""
        return self._readable[0]

    @cached_property
    def mixed_script_words(self) -> int:
        """How many words of the text mixed Latin with Cyrillic or Greek letters (a disguise)."""
        return self._readable[1]

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


def decode_words(value: str) -> str:
    """Decode RFC 2047 encoded words; never raises, whatever the input.

    Our own small decoder rather than `email.header.decode_header`, which raises on a broken word
    (``=?utf-8?b?A?=`` gives HeaderParseError) -- and an exception here turned a hostile Subject into
    a skipped check.  Broken base64 keeps what decodes, an unknown charset reads as Latin-1 (ASCII
    words stay intact), white space between two encoded words is dropped (RFC 2047 section 6.2), and
    adjacent words in one charset are joined before decoding so a character split across them
    survives."""
    if "=?" not in value:
        return value
    out: list[str] = []
    pending: bytearray = bytearray()  # encoded words in `charset`, not yet decoded
    charset = ""
    pos = 0
    for m in _ENCODED_WORD.finditer(value):
        between = value[pos : m.start()]
        if between and (not pending or between.strip(" \t\r\n")):
            if pending:
                out.append(_decode_charset(bytes(pending), charset))
                pending.clear()
            out.append(between)
        word_charset = m.group(1).partition("*")[0].lower()  # RFC 2231 language suffix dropped
        if pending and word_charset != charset:
            out.append(_decode_charset(bytes(pending), charset))
            pending.clear()
        charset = word_charset
        pending += _b_decode(m.group(3)) if m.group(2) in "bB" else _q_decode(m.group(3))
        pos = m.end()
    if pending:
        out.append(_decode_charset(bytes(pending), charset))
    out.append(value[pos:])
    return "".join(out)


# charset ? B|Q ? text, all printable ASCII without "?" or white space (RFC 2047 section 2).
_ENCODED_WORD = re.compile(r"=\?([!->@-~]{1,75})\?([bBqQ])\?([!->@-~]*)\?=")
_BASE64_JUNK = re.compile(rb"[^A-Za-z0-9+/]")
_QP_ESCAPE = re.compile(rb"=([0-9A-Fa-f]{2})")


def _b_decode(text: str) -> bytes:
    """Base64 as far as it decodes: junk and padding dropped, a dangling sixth of a byte ignored."""
    data = _BASE64_JUNK.sub(b"", text.encode("ascii", "ignore"))
    data = data[: len(data) - len(data) % 4 if len(data) % 4 == 1 else len(data)]
    return binascii.a2b_base64(data + b"=" * (-len(data) % 4))


def _q_decode(text: str) -> bytes:
    data = text.encode("ascii", "ignore").replace(b"_", b" ")
    return _QP_ESCAPE.sub(lambda m: bytes.fromhex(m.group(1).decode()), data)


def _decode_charset(data: bytes, charset: str) -> str:
    try:
        return data.decode(charset or "ascii", "replace")
    except (LookupError, ValueError):  # an unknown name; ValueError: a codec refusing "replace"
        return data.decode("latin-1")


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
    depth: int  # nesting level: the message itself is 0

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

    def is_empty(self) -> bool:
        """A leaf with no body at all (cheap: nothing is decoded)."""
        raise NotImplementedError

    def text_size(self) -> int:
        """`size` of a text leaf, raising `_Undecodable` when this parser cannot decode it."""
        return self.size()

    def text(self) -> str:
        """The payload decoded by its charset; never raises."""
        data = self.payload()
        try:
            return data.decode(self.charset or "utf-8", "replace")
        except LookupError:  # an unknown charset name: latin-1 never fails and keeps ASCII words intact
            return data.decode("latin-1")


_CHARSET = re.compile(r"""(?i)[;\s]charset\s*=\s*["']?([^"';\s]+)""")


class _Undecodable(Exception):
    """A message fast_mail_parser cannot read well (a text part it cannot transfer-decode, too many
    encoded words): it is read by mimetree instead."""


@dataclass(frozen=True)
class _Tree:
    nodes: list[MimeNode]
    depth: int
    total: int


def _keep(nodes: Iterable[MimeNode]) -> _Tree:
    """The nodes the checks look at (see `Message.mime`), and the depth and size of the whole tree.

    Text leaves with content are kept while the text budget lasts; containers, empty leaves and
    the other leaves are each capped at `MAX_PARTS` on their own, so neither empty parts nor deep
    nesting can push the body or an attachment out of sight."""
    kept: list[MimeNode] = []
    counts = {"container": 0, "empty": 0, "leaf": 0}
    text_bytes = depth = total = 0
    for node in nodes:
        total += 1
        depth = max(depth, node.depth)
        if node.is_container:
            kind = "container"
        elif node.is_empty():
            kind = "empty"
        elif node.is_text and text_bytes < MAX_TEXT_BYTES and (size := node.text_size()):
            text_bytes += size
            kept.append(node)
            continue
        else:
            kind = "leaf"
        if counts[kind] < MAX_PARTS:
            counts[kind] += 1
            kept.append(node)
    return _Tree(kept, depth, total)


def _walk_fast(
    root: fast_mail_parser.PyLazyMimePart,
) -> Iterator[tuple[fast_mail_parser.PyLazyMimePart, int]]:
    """Each node with its depth, depth first in walk order, with a stack instead of recursion
    (`fast_mail_parser.walk` recurses once per level)."""
    stack = [(root, 0)]
    while stack:
        node, depth = stack.pop()
        yield node, depth
        stack.extend((child, depth + 1) for child in reversed(node.children))


class _FastNode(MimeNode):
    def __init__(self, node: fast_mail_parser.PyLazyMimePart, depth: int) -> None:
        self._node = node
        self.depth = depth
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
        except fast_mail_parser.DecodeError:  # a broken attachment (text parts are checked in size())
            return b""

    def is_empty(self) -> bool:
        return not self.is_container and self._node.encoded_size == 0

    def size(self) -> int:
        try:
            return 0 if self.is_container else len(self._node.content or b"")
        except fast_mail_parser.DecodeError:
            return self._node.encoded_size or 0  # what it takes in the message

    def text_size(self) -> int:
        try:
            return len(self._node.content or b"")
        except fast_mail_parser.DecodeError:  # its text must not be lost: mimetree decodes what it can
            raise _Undecodable from None


class _RawNode(MimeNode):
    """A node read by `filterd.mimetree`."""

    def __init__(self, part: mimetree.RawPart) -> None:
        headers = part.headers
        self._part = part
        self.depth = part.depth
        self.content_type = headers.get_content_type()
        self.filename = _filename(headers)
        self.disposition = str(headers.get("Content-Disposition", "")).split(";")[0].strip().lower()
        self.is_container = part.is_container
        try:
            self.charset = headers.get_content_charset()
        except (ValueError, LookupError, AssertionError):
            self.charset = None
        self.transfer_encoding = str(headers.get("Content-Transfer-Encoding", "")).strip().lower()

    @cached_property
    def _payload(self) -> bytes:
        return mimetree.decode_transfer(self._part.body, self.transfer_encoding)

    def payload(self) -> bytes:
        return b"" if self.is_container else self._payload

    def is_empty(self) -> bool:
        return not self.is_container and not self._part.body.strip()


def _filename(part: email.message.Message) -> str | None:
    try:
        name = part.get_filename()
    except (ValueError, LookupError, AssertionError):
        return None
    return decode_words(str(name)) if name else None

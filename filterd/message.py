"""A received message as the checks see it: raw bytes, headers, and the text extracted once.

Everything is computed lazily and cached, so a check that reads only headers never pays for MIME
parsing, and the rules and the classifier share one text extraction.  Parsing uses the `compat32`
policy: measured here it is about 4x faster than `email.policy.default`, which builds a header
object for every header.  Work is bounded: text parts beyond `MAX_TEXT_CHARS` are cut.

Malformed input never raises from here: broken MIME, bad charsets and bad transfer encodings give
whatever text can be recovered, and the parser's defects are listed in `defects`.
"""

from __future__ import annotations

import email.header
import email.message
import email.parser
import email.policy
import re
from dataclasses import dataclass
from functools import cached_property

from filterd.htmlscan import HtmlScan, scan_html

MAX_TEXT_CHARS = 200_000  # text kept per message for content checks
MAX_PARTS = 200  # MIME parts looked at

_HEADER_LINE = re.compile(rb"^([!-9;-~]+)[ \t]*:(.*)$", re.S)
_URL = re.compile(r"""(?i)\b(?:https?://|www\.)[^\s<>"'()\[\]{}]{2,2000}""")
_SPACES = re.compile(r"[ \t\r\f\v]+")
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
        """(name, value) in order; folding removed, value stripped, undecoded (RFC 2047 words kept)."""
        result: list[tuple[str, str]] = []
        for line in _unfold(self.header_block):
            m = _HEADER_LINE.match(line)
            if not m:
                continue  # a line that is not a header (a stray From_ line, garbage): skip it
            name = m.group(1).decode("ascii")
            value = m.group(2).decode("utf-8", "surrogateescape").strip()
            result.append((name, value))
        return result

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
    def email(self) -> email.message.Message:
        return email.parser.BytesParser(policy=email.policy.compat32).parsebytes(self.raw)

    @cached_property
    def defects(self) -> list[str]:
        found: list[str] = []
        for i, part in enumerate(self.email.walk()):
            if i >= MAX_PARTS:
                break
            found.extend(type(d).__name__ for d in part.defects)
        return found

    @cached_property
    def parts(self) -> list[Part]:
        leaves: list[Part] = []
        for i, part in enumerate(self.email.walk()):
            if i >= MAX_PARTS:
                break
            if part.is_multipart():
                continue
            payload = _payload_bytes(part)
            filename = _filename(part)
            disposition = (part.get("Content-Disposition") or "").split(";")[0].strip().lower()
            leaves.append(
                Part(
                    content_type=part.get_content_type(),
                    filename=filename,
                    size=len(payload),
                    is_attachment=disposition == "attachment" or filename is not None,
                )
            )
        return leaves

    @cached_property
    def _texts(self) -> tuple[str, str]:
        plain: list[str] = []
        markup: list[str] = []
        budget = MAX_TEXT_CHARS
        for i, part in enumerate(self.email.walk()):
            if i >= MAX_PARTS or budget <= 0:
                break
            ctype = part.get_content_type()
            if part.is_multipart() or ctype not in ("text/plain", "text/html") or _filename(part):
                continue
            text = _decode_text(part)[:budget]
            budget -= len(text)
            (markup if ctype == "text/html" else plain).append(text)
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
    def text(self) -> str:
        """The readable text: plain parts plus HTML parts reduced to text."""
        plain, markup = self._texts
        if markup:
            text = self.html_scan.text
            plain = (plain + "\n" + text) if plain else text
        return _NEWLINES.sub("\n\n", _SPACES.sub(" ", plain)).strip()

    @cached_property
    def urls(self) -> list[str]:
        """Every URL in the text and in HTML href/src attributes, in order, duplicates removed."""
        found = _URL.findall(self._texts[0]) + _URL.findall(self._texts[1])
        found += self.html_scan.urls
        seen: dict[str, None] = {}
        for u in found:
            seen.setdefault(u.rstrip(".,;:!?"), None)
        return list(seen)


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


def html_to_text(markup: str) -> str:
    return scan_html(markup).text


def _header_end(raw: bytes) -> int:
    """Offset of the blank line that ends the header block (CRLF or bare LF)."""
    crlf = raw.find(b"\r\n\r\n")
    lf = raw.find(b"\n\n")
    ends = [i for i in (crlf, lf) if i >= 0]
    return min(ends) if ends else len(raw)


def _unfold(block: bytes) -> list[bytes]:
    lines: list[bytes] = []
    for line in block.replace(b"\r\n", b"\n").split(b"\n"):
        if line[:1] in (b" ", b"\t") and lines:
            lines[-1] += b" " + line.strip()
        elif line:
            lines.append(line)
    return lines


def _payload_bytes(part: email.message.Message) -> bytes:
    try:
        payload = part.get_payload(decode=True)
    except (ValueError, AssertionError, LookupError):
        payload = None
    if isinstance(payload, bytes):
        return payload
    raw = part.get_payload()
    return raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else b""


def _decode_text(part: email.message.Message) -> str:
    data = _payload_bytes(part)
    charset = part.get_content_charset() or "utf-8"
    try:
        return data.decode(charset, "replace")
    except LookupError:  # an unknown charset name: latin-1 never fails and keeps ASCII words intact
        return data.decode("latin-1")


def _filename(part: email.message.Message) -> str | None:
    try:
        name = part.get_filename()
    except (ValueError, LookupError, AssertionError):
        return None
    return decode_words(name) if name else None

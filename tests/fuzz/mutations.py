"""Ways to damage or disguise a message, as plain functions (bench/hostile.py uses them too).

Two kinds:

- byte-level damage, blind to the format: flip, insert, delete, duplicate a slice, truncate;
- structure-aware changes, the ones a spammer (or a broken mailer) makes on purpose: wrap the
  content in a multipart with N parts, nest it N levels deep, re-encode it as base64 or
  quoted-printable, fold headers, add RFC 2047 words in odd charsets, put 8-bit bytes and NULs
  in headers, make one header line very long, add thousands of headers.

The wrappers (`wrap_in_multipart`, `nest`, `reencode`) keep the content readable: a correct
parser finds the same text in the result, which is what the "wrapping must not lower the score"
invariant relies on.
"""

from __future__ import annotations

import base64
import binascii
import quopri
import re

CRLF = b"\r\n"
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_CTE = re.compile(rb"(?im)^content-transfer-encoding:[ \t]*([^\s;]+)")

# Charset names for encoded words: real ones the stdlib knows, ones it does not, and broken ones.
CHARSETS = (
    "utf-8",
    "iso-8859-1",
    "windows-1251",
    "koi8-r",
    "gb2312",
    "big5",
    "shift_jis",
    "iso-2022-jp",
    "utf-16",
    "utf-7",
    "unicode-1-1-utf-7",
    "x-unknown",
    "utf-8*en",
    "",
    "?",
    "ks_c_5601-1987",
)

# Markup that has made HTML scanners slow (unclosed comments and raw-text elements, deep nesting).
HTML_TRAPS = (
    "<!--",
    "<!-- a --",
    "<script>",
    "<style>",
    "<title>",
    "<head>",
    "<a href='http://x.example/",
    "<a href=http://",
    "<img src=",
    "<div style='display:none'>",
    "<font color=#fff>",
    "</div>",
    "<br>",
    "<p>",
    "<",
    "&#",
    "&amp",
    "&#x10FFFF;",
    "<!",
    "<?",
    "</",
    "<table><tr><td>",
)


# -- the parts of a message ---------------------------------------------------------------------


def split(raw: bytes) -> tuple[list[bytes], bytes]:
    """(header lines, folded lines kept together, without line ends; body)."""
    m = _HEADER_END.search(raw)
    head, body = (raw[: m.start()], raw[m.end() :]) if m else (raw, b"")
    lines: list[bytes] = []
    for line in head.split(b"\n"):
        line = line.rstrip(b"\r")
        if line[:1] in (b" ", b"\t") and lines:
            lines[-1] += CRLF + line
        else:
            lines.append(line)
    return lines, body


def join(headers: list[bytes], body: bytes) -> bytes:
    return CRLF.join(headers) + CRLF + CRLF + body


def _is_content_header(line: bytes) -> bool:
    return line[:8].lower() == b"content-"


def entity(raw: bytes) -> tuple[list[bytes], list[bytes], bytes]:
    """(the message's other headers, its Content-* headers, its body): the content is the last two.

    The other headers hold an empty line where the first Content-* header was: `with_content`
    puts the new content headers there, so a header block with a line that is not a header
    keeps its content headers on the same side of it."""
    headers, body = split(raw)
    content = [h for h in headers if _is_content_header(h)]
    other: list[bytes] = []
    for h in headers:
        if _is_content_header(h):
            if b"" not in other:
                other.append(b"")
        else:
            other.append(h)
    return other, content, body


def with_content(other: list[bytes], content: list[bytes]) -> list[bytes]:
    """`other` from `entity` with `content` where the old content headers were.

    MIME-Version is left as it was: a message without one stays without (its absence scores)."""
    new = content
    if b"" not in other:
        return [*other, *new]
    i = other.index(b"")
    return [*other[:i], *new, *other[i + 1 :]]


def _boundary(depth: int) -> bytes:
    return b"=_filterd_fuzz_" + str(depth).encode() + b"_x"


# -- structure-aware wrappers that keep the content ---------------------------------------------


def wrap_in_multipart(raw: bytes, parts: int, subtype: bytes = b"mixed") -> bytes:
    """The content as the first part of a multipart/`subtype` with `parts - 1` small attachments.

    The fillers are binary files, not text: the readable content stays what it was."""
    other, content, body = entity(raw)
    b = _boundary(0)
    chunks = [b"This is a multi-part message in MIME format.", b"--" + b, *content, b"", body]
    for i in range(1, max(1, parts)):
        chunks += [
            b"--" + b,
            b'Content-Type: application/octet-stream; name="f%d.bin"' % i,
            b"Content-Transfer-Encoding: base64",
            b"",
            b"AAECAwQFBgc=",
        ]
    chunks.append(b"--" + b + b"--")
    chunks.append(b"")
    head = with_content(other, [b"Content-Type: multipart/" + subtype + b'; boundary="' + b + b'"'])
    return join(head, CRLF.join(chunks))


def nest(raw: bytes, levels: int) -> bytes:
    """The content inside `levels` nested multipart/mixed containers, one part each."""
    other, content, body = entity(raw)
    inner = CRLF.join([*content, b"", body])
    for depth in range(levels):
        b = _boundary(depth + 1)
        inner = CRLF.join(
            [
                b'Content-Type: multipart/mixed; boundary="' + b + b'"',
                b"",
                b"--" + b,
                inner,
                b"--" + b + b"--",
                b"",
            ]
        )
    if levels <= 0:
        return raw
    head_end = inner.index(CRLF + CRLF)
    return join(with_content(other, [inner[:head_end]]), inner[head_end + 4 :])


def _decoded_body(content: list[bytes], body: bytes) -> bytes:
    m = _CTE.search(CRLF.join(content))
    cte = m.group(1).lower() if m else b""
    if cte == b"base64":
        try:
            return base64.b64decode(body)
        except (binascii.Error, ValueError):
            return body
    if cte == b"quoted-printable":
        return quopri.decodestring(body)
    return body


def reencode(raw: bytes, encoding: str) -> bytes:
    """A single-part message's body re-encoded as "base64" or "quoted-printable" (multipart: as is)."""
    other, content, body = entity(raw)
    if any(h.lower().startswith(b"content-type:") and b"multipart/" in h.lower() for h in content):
        return raw
    data = _decoded_body(content, body)
    kept = [h for h in content if not h.lower().startswith(b"content-transfer-encoding:")]
    if not any(h.lower().startswith(b"content-type:") for h in kept):
        kept.append(b"Content-Type: text/plain; charset=us-ascii")
    if encoding == "base64":
        encoded = base64.encodebytes(data).replace(b"\n", CRLF)
    else:
        encoded = quopri.encodestring(data).replace(b"\r\n", b"\n").replace(b"\n", CRLF)
    cte = b"Content-Transfer-Encoding: " + encoding.encode()
    return join(with_content(other, [*kept, cte]), encoded)


def as_attachment_forward(raw: bytes) -> bytes:
    """The whole message forwarded as a message/rfc822 part of a new one."""
    b = _boundary(99)
    body = CRLF.join([b"--" + b, b"Content-Type: message/rfc822", b"", raw, b"--" + b + b"--", b""])
    head = [
        b"From: fwd@example.org",
        b"Subject: Fwd:",
        b"MIME-Version: 1.0",
        b'Content-Type: multipart/mixed; boundary="' + b + b'"',
    ]
    return join(head, body)


# -- header damage ---------------------------------------------------------------------------


def fold_headers(raw: bytes, every: int) -> bytes:
    """Fold each header at every `every`-th space (a legal but unusual shape)."""
    headers, body = split(raw)
    out = []
    for h in headers:
        pieces = h.split(b" ")
        folded = b""
        for i, piece in enumerate(pieces):
            sep = b"" if i == 0 else (CRLF + b"\t" if i % max(1, every) == 0 else b" ")
            folded += sep + piece
        out.append(folded)
    return join(out, body)


def encoded_word(text: bytes, charset: str, q: bool) -> bytes:
    payload = (
        b"".join(b"=%02X" % c if not chr(c).isalnum() else bytes([c]) for c in text)
        if q
        else base64.b64encode(text)
    )
    return b"=?" + charset.encode() + (b"?Q?" if q else b"?B?") + payload + b"?="


def add_header(raw: bytes, line: bytes, index: int = 0) -> bytes:
    headers, body = split(raw)
    headers.insert(min(max(0, index), len(headers)), line)
    return join(headers, body)


def long_header(raw: bytes, name: bytes, length: int, spaced: bool) -> bytes:
    unit = b"word " if spaced else b"x"
    return add_header(raw, name + b": " + (unit * (length // len(unit) + 1))[:length])


def many_headers(raw: bytes, count: int, name: bytes = b"Received") -> bytes:
    headers, body = split(raw)
    extra = [
        name + b": from h%d.example.net (h%d.example.net [192.0.2.%d]) by mx" % (i, i, i % 256)
        for i in range(count)
    ]
    return join(extra + headers, body)


# -- byte-level damage -------------------------------------------------------------------------


def flip(raw: bytes, pos: int, mask: int) -> bytes:
    if not raw:
        return raw
    pos %= len(raw)
    return raw[:pos] + bytes([raw[pos] ^ (mask or 1)]) + raw[pos + 1 :]


def insert(raw: bytes, pos: int, data: bytes) -> bytes:
    pos = pos % (len(raw) + 1)
    return raw[:pos] + data + raw[pos:]


def delete(raw: bytes, pos: int, length: int) -> bytes:
    pos = pos % (len(raw) + 1)
    return raw[:pos] + raw[pos + length :]


def duplicate(raw: bytes, pos: int, length: int, times: int) -> bytes:
    pos = pos % (len(raw) + 1)
    piece = raw[pos : pos + length]
    return raw[:pos] + piece * times + raw[pos:]


def truncate(raw: bytes, length: int) -> bytes:
    return raw[: length % (len(raw) + 1)]

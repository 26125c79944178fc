"""A MIME tree read without recursion, for the messages fast_mail_parser refuses.

fast_mail_parser stops at 256 levels of nesting (MimeStructureError) and the stdlib's parser
recurses once per level (RecursionError near 1,000 levels), so a hostile message could hide its
body from the content checks by nesting it deeply.  This reader makes one pass over the bytes: it
looks only at lines that start with "--", keeps the open multipart boundaries on a stack, and a
part ends at the next line that names any open boundary (an inner part left unclosed ends with its
parent, as MTAs read it).  Each line is looked at once however deep the nesting, so the work is
linear in the message size.

Headers of each part are read by the stdlib's header-only parser (it does not recurse) from text
decoded as UTF-8 with replacement, so no header comes back as an `email.header.Header` object.
"""

from __future__ import annotations

import binascii
import email.message
import email.parser
import email.policy
import quopri
import re
from collections.abc import Iterator
from dataclasses import dataclass

_HEADER_LINE = re.compile(rb"[!-9;-~]+[ \t]*:")  # RFC 5322 ftext, then the colon
_BASE64_JUNK = re.compile(rb"[^A-Za-z0-9+/]")
_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/=\s]")  # what no line of a base64 body holds


@dataclass
class RawPart:
    """One node as read: its headers, where its body lies in the message, and its depth (root 0)."""

    headers: email.message.Message
    body: bytes
    depth: int
    is_container: bool


def decode_transfer(body: bytes, encoding: str) -> bytes:
    """A body decoded by its Content-Transfer-Encoding; never raises.

    Broken base64 keeps whatever decodes (a truncated part keeps its text), the same tolerance the
    stdlib's parser has."""
    if encoding == "base64":
        if _NOT_BASE64.search(body) is not None:
            # A line with other characters is no base64 line (a stray header line pushed into the
            # body, a list footer): dropped whole, so it cannot shift every byte decoded after it.
            body = b"\n".join(line for line in body.split(b"\n") if _NOT_BASE64.search(line) is None)
        data = _BASE64_JUNK.sub(b"", body)
        if len(data) % 4 == 1:
            data = data[:-1]  # a dangling sixth of a byte
        return binascii.a2b_base64(data + b"=" * (-len(data) % 4))
    if encoding == "quoted-printable":
        return quopri.decodestring(body)
    return body


def walk(raw: bytes) -> Iterator[RawPart]:
    """Every node of the message's MIME tree in walk order (containers too), without recursion."""
    # One frame per open multipart: its boundary and its depth.
    boundaries: list[bytes] = []
    depths: list[int] = []
    open_at: dict[bytes, int] = {}  # boundary -> index in `boundaries`
    start, depth = 0, 0  # where the next entity's headers begin, and its depth
    while True:
        headers, body_start = _read_headers(raw, start, open_at)
        content_type = headers.get_content_type()
        boundary = _boundary(headers) if content_type.startswith("multipart/") else None
        if boundary is not None and boundary not in open_at:
            yield RawPart(headers, b"", depth, True)
            open_at[boundary] = len(boundaries)
            boundaries.append(boundary)
            depths.append(depth)
            pos = body_start  # the preamble is skipped: the search below finds the first boundary
        elif content_type == "message/rfc822" and _is_identity(headers):
            # The body is a message: its headers start right here, one level down.
            yield RawPart(headers, b"", depth, True)
            start, depth = body_start, depth + 1
            continue
        else:
            end, found = _next_boundary(raw, body_start, open_at)
            yield RawPart(headers, _body(raw, body_start, end), depth, False)
            if found is None:
                return
            pos = found
        # Find the boundary line that ends this part (or starts the first child of a multipart).
        while True:
            line_start, line_end = _next_boundary_line(raw, pos, open_at)
            if line_start < 0:
                return  # no open boundary appears again: the rest was the last part's, or epilogue
            name, closing = _boundary_named(raw[line_start + 2 : line_end], open_at)
            level = open_at[name]
            for inner in boundaries[level + 1 :]:  # inner multiparts never closed end here
                del open_at[inner]
            del boundaries[level + 1 :], depths[level + 1 :]
            next_line = _after_line(raw, line_end)
            if closing:
                del open_at[name]
                boundaries.pop()
                depths.pop()
                if not boundaries:
                    return  # the epilogue of the outermost multipart is not content
                pos = next_line
                continue
            start, depth = next_line, depths[level] + 1
            break


def _read_headers(raw: bytes, start: int, open_at: dict[bytes, int]) -> tuple[email.message.Message, int]:
    """The header lines at `start`, up to the blank line, a line that is not a header, or an open
    boundary line (a part with no blank line); and where its body starts."""
    pos, end = start, len(raw)
    while pos < end:
        eol = raw.find(b"\n", pos)
        line_end = end if eol < 0 else eol + 1
        line = raw[pos:line_end]
        if line.strip(b"\r\n") == b"":
            header_end, body_start = pos, line_end
            break
        if pos == start and line.startswith(b"From "):
            start = pos = line_end  # an mbox From_ line, as the stdlib's parser skips it
            continue
        if line[:1] not in (b" ", b"\t") and not _HEADER_LINE.match(line):
            header_end = body_start = pos  # not a header: the body starts here
            break
        if line.startswith(b"--") and _is_boundary_line(line.rstrip(b"\r\n")[2:], open_at):
            header_end = body_start = pos
            break
        pos = line_end
    else:
        header_end = body_start = end
    text = raw[start:header_end].decode("utf-8", "replace")
    return email.parser.HeaderParser(policy=email.policy.compat32).parsestr(text), body_start


def _boundary(headers: email.message.Message) -> bytes | None:
    try:
        value = headers.get_boundary()
    except (ValueError, LookupError, AssertionError):
        return None
    if not value:
        return None
    return value.encode("utf-8", "replace").rstrip(b" \t")


def _is_identity(headers: email.message.Message) -> bool:
    """An embedded message sent as is (7bit, 8bit, binary): one in base64 is kept as a leaf."""
    return str(headers.get("Content-Transfer-Encoding", "")).strip().lower() in ("", "7bit", "8bit", "binary")


def _next_boundary_line(raw: bytes, pos: int, open_at: dict[bytes, int]) -> tuple[int, int]:
    """(start, end without line ending) of the first line at or after `pos` naming an open boundary."""
    if not open_at:
        return -1, -1
    if pos == 0 or raw[pos - 1 : pos] == b"\n":
        at = pos
    else:
        at = raw.find(b"\n", pos) + 1
        if at == 0:
            return -1, -1
    while True:
        if raw.startswith(b"--", at):
            eol = raw.find(b"\n", at)
            line_end = len(raw) if eol < 0 else eol
            if _is_boundary_line(raw[at + 2 : line_end], open_at):
                return at, line_end
        nxt = raw.find(b"\n--", at)
        if nxt < 0:
            return -1, -1
        at = nxt + 1


def _is_boundary_line(rest: bytes, open_at: dict[bytes, int]) -> bool:
    return _boundary_named(rest, open_at)[0] in open_at


def _boundary_named(rest: bytes, open_at: dict[bytes, int]) -> tuple[bytes, bool]:
    """The boundary a line ("--" stripped) names, and whether it closes its multipart."""
    rest = rest.rstrip(b" \t\r")
    if rest in open_at:
        return rest, False
    if rest.endswith(b"--") and rest[:-2] in open_at:
        return rest[:-2], True
    return rest, False


def _next_boundary(raw: bytes, body_start: int, open_at: dict[bytes, int]) -> tuple[int, int | None]:
    """Where a leaf's body ends, and the start of the boundary line that ends it (None: at the end)."""
    line_start, _ = _next_boundary_line(raw, body_start, open_at)
    if line_start < 0:
        return len(raw), None
    return line_start, line_start


def _body(raw: bytes, start: int, end: int) -> bytes:
    """The bytes of a body; the line ending before a boundary line belongs to the boundary."""
    if end < len(raw) and end > start:
        end -= 1
        if end > start and raw[end - 1 : end] == b"\r":
            end -= 1
    return raw[start:end]


def _after_line(raw: bytes, line_end: int) -> int:
    return len(raw) if line_end >= len(raw) else line_end + 1

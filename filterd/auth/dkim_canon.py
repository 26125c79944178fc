"""The message as DKIM sees it, and its canonical forms (RFC 6376 3.2, 3.4): whole-body passes.

Everything here works on bytes with C-speed operations (`bytes.replace`, `re.sub` over a whole
body, `bytes.rstrip`), never a Python loop per body line: a body is hashed in one `hashlib`
call over its canonical form.  The header block is walked line by line (it is short).

The rules follow dkimpy's reading of the RFC exactly, because the verifier built on this module
must give the results dkimpy gave (tests/test_dkim_verify.py compares them on every case):

- the header/body split and unfolding: lines end in CRLF or a bare LF, the body is everything
  after the first empty line with every line ending made CRLF; a header line that is neither a
  ``name:`` line, a continuation nor an mbox ``From `` line makes the whole message unreadable;
- relaxed header values lose their line breaks, runs of WSP become one space, and ``bytes.strip``
  trims both ends; relaxed names are lower-cased;
- a simple body keeps exactly one CRLF at its end (an empty body is one CRLF); a relaxed body
  drops WSP before line ends, compresses WSP runs, keeps one final CRLF, and is empty when
  nothing but line ends is left.
"""

from __future__ import annotations

import re

CRLF = b"\r\n"


class UnreadableMessage(ValueError):
    """The header block cannot be split into fields: no signature of the message can be verified."""


_LINE_END = re.compile(rb"\r?\n")
# What a field name is made of (RFC 5322 2.2: printable US-ASCII; it ends at the first colon).
_NAME_CHARACTERS = bytes(range(0x21, 0x7F))
_WSP_RUN = re.compile(rb"[\t ]+")


def _first_empty_line(raw: bytes) -> tuple[int, int] | None:
    """Where the first empty line starts and ends (after its line end), None without one: a
    line end right at the start, or one straight after another line end."""
    for start in (b"\n", b"\r\n"):
        if raw.startswith(start):
            return 0, len(start)
    after_crlf, after_lf = raw.find(b"\n\r\n"), raw.find(b"\n\n")
    if after_crlf >= 0 and (after_lf < 0 or after_crlf < after_lf):
        return after_crlf + 1, after_crlf + 3
    if after_lf >= 0:
        return after_lf + 1, after_lf + 2
    return None


def split_message(raw: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """(header fields as (name, value with its line ends as CRLF), body with CRLF line ends).

    A value keeps what follows the colon, its continuation lines, and a final CRLF, so `simple`
    header canonicalisation is the value itself.  UnreadableMessage for a header block that is
    not one (a line that is not a field, a continuation before any field)."""
    blank = _first_empty_line(raw)
    if blank is None:
        block, body = raw, b""
    else:
        block, body = raw[: blank[0]], raw[blank[1] :]
    lines = block.split(CRLF) if block.count(b"\n") == block.count(CRLF) else _LINE_END.split(block)
    if lines and not lines[-1]:
        lines.pop()  # the line end that closed the last field
    fields: list[list[bytes]] = []
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            if not fields:
                raise UnreadableMessage("a continuation line before any header field")
            fields[-1][1] += line + CRLF
            continue
        # A field name: one or more printable US-ASCII characters, up to the first colon after
        # the first character (so dkimpy, and here, read "::" as the field ":" with no value).
        colon = line.find(b":", 1)
        if colon > 0 and not line[:colon].translate(None, _NAME_CHARACTERS):
            fields.append([line[:colon], line[colon + 1 :] + CRLF])
        elif not line.startswith(b"From "):  # an mbox separator line is skipped
            raise UnreadableMessage(f"not a header field: {line[:60]!r}")
    if body.count(b"\n") != body.count(CRLF):  # some bare LF: make every line end CRLF
        body = _LINE_END.sub(CRLF, body)
    return [(n, v) for n, v in fields], body


def _without_trailing_line_ends(body: bytes) -> bytes:
    """`body` without the CRLFs at its end (a CR that is not part of one stays).

    One `rstrip` finds the run of CR and LF at the end; in a body whose every LF follows a CR,
    the CRLF pairs at its end start just after the last "CR CR" of that run."""
    head = body.rstrip(b"\r\n")
    tail = body[len(head) :]
    if not tail or tail.endswith(b"\r"):
        return body
    lone_cr = tail.rfind(b"\r\r")
    return body[: len(head) + lone_cr + 1] if lone_cr >= 0 else head


def simple_body(body: bytes) -> bytes:
    """RFC 6376 3.4.3: trailing empty lines removed, exactly one CRLF at the end."""
    return _without_trailing_line_ends(body) + CRLF


def relaxed_body(body: bytes) -> bytes:
    """RFC 6376 3.4.4: WSP at line ends removed, WSP runs made one space, trailing empty lines
    removed; a body of nothing but line ends is empty."""
    if b"\t" in body:
        body = body.replace(b"\t", b" ")
    while b"  " in body:  # each pass halves every run of spaces: twice the speed of re.sub here
        body = body.replace(b"  ", b" ")
    if b" \r\n" in body:  # after compressing, WSP before a line end is exactly one space
        body = body.replace(b" \r\n", CRLF)
    stripped = _without_trailing_line_ends(body)
    if not stripped:
        return b""
    # A body ending in WSP with no line end (no CRLF follows it to strip it) keeps that space.
    return stripped + CRLF


BODY_CANONICALISATION = {b"simple": simple_body, b"relaxed": relaxed_body}


def relaxed_header(name: bytes, value: bytes) -> tuple[bytes, bytes]:
    """RFC 6376 3.4.2: lower-case name; value unfolded, WSP runs one space, trimmed; CRLF added."""
    # Unfolding removes every CRLF, then every LF left alone (a CR not before an LF stays).
    value = value.replace(CRLF, b"").replace(b"\n", b"")
    if b"\t" in value:
        value = value.replace(b"\t", b" ")
    if b"  " in value:
        value = _WSP_RUN.sub(b" ", value)
    return name.lower().rstrip(), value.strip() + CRLF


def parse_tag_list(value: bytes) -> dict[bytes, bytes] | None:
    """A tag=value list (RFC 6376 3.2) as a dict; None when it is not one.

    Tags are split at ";", each at its first "="; names and values are trimmed of white space
    (folding included); a tag name must start with a letter; a repeated tag makes the list
    invalid; a final ";" is allowed."""
    specs = value.strip().split(b";")
    if specs and not specs[-1]:
        specs.pop()
    tags: dict[bytes, bytes] = {}
    for spec in specs:
        name, equals, tag_value = spec.partition(b"=")
        name = name.strip()
        if not equals or not name[:1].isalpha() or not name[:1].isascii() or name in tags:
            return None
        tags[name] = tag_value.strip()
    return tags

r"""How a verdict is shown: the verdict headers on delivered mail, and the one log line per message.

The log line is the mail log's record of the message, in Postfix's own layout (OpenDKIM and
clamav-milter use it too): the queue id first, then ``key=value`` fields separated by ", ":

    4F3A21C0D2: action=reject, spam_status=yes, score=17.20/5.00, symbols=DNSBL_ZEN(4),...,
      client=mail.example.org[192.0.2.1], helo=<...>, from=<...>, rcpts=<...>,
      direction=inbound, time=connect:0.11ms,..., reason='score 17.2 >= 15.0'

(one line; wrapped here).  ``spam_status=yes`` and, when clamd found a virus,
``virus_status=VIRUS`` are the words mailgraph's own rules look for (its "filter-module" spam rule
``\bspam_status\=(?:yes|spam)`` and its "clamsmtpd" virus rule ``status=VIRUS``): mailgraph picks
rules by program name, so it counts filterd's lines once told that ``filterd`` is such a program
(docs: a four-line branch, tests/test_maillog.py runs those patterns on our lines).  ``reason``
is last (it may hold ", ") and quoted.  Every variable part has a bound, shortened where a word,
an address or a symbol ends and never in the middle of one, so the line stays under rsyslog's
default 8 KiB message size.

The X-Spam-Report header is folded as RFC 5322 section 2.2.3 says: at white space, lines up to
78 characters, a long reason wrapped over several lines, never cut inside a word.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection, Iterable, Sequence

from filterd.auth.results import AR_HEADER, authserv_id_of, normalise_id, receivers_of
from filterd.policy import policy_of
from filterd.results import AddHeader, Stage, Verdict
from filterd.transaction import Transaction

STATUS_HEADER = "X-Spam-Status"
SCORE_HEADER = "X-Spam-Score"
FLAG_HEADER = "X-Spam-Flag"
REPORT_HEADER = "X-Spam-Report"

# Incoming headers with these prefixes are removed before ours are added: an upstream verdict is
# forgeable by anyone who can send mail, and a user's Sieve rule must only ever see ours.
FORGEABLE_PREFIXES = ("x-spam-", "x-filterd-", "x-virus-")


RECEIVED_SPF = "Received-SPF"
# Headers that speak for a receiving host: forged when an incoming one claims to be us.
CLAIM_HEADERS = (AR_HEADER, RECEIVED_SPF)
_AR, _RSPF = AR_HEADER.lower(), RECEIVED_SPF.lower()


def is_forgeable(
    name: str, value: str = "", authserv_ids: Collection[str] = (), ours: Iterable[AddHeader] = ()
) -> bool:
    """True for an incoming header that must be removed before ours are added.

    - the X-Spam-* family (`FORGEABLE_PREFIXES`), always;
    - an Authentication-Results header claiming one of `authserv_ids` (RFC 8601 section 5: only
      we may speak for our authserv-id);
    - a Received-SPF header naming one of `authserv_ids` as its receiver, or any incoming
      Received-SPF when `ours` (the headers we are adding to this message) holds our own: ours is
      added below the incoming ones, and a reader takes the topmost, so one written by the client
      or anyone before it would be read in place of ours.  When we add none (a trusted forwarder,
      SPF off) an upstream Received-SPF is left alone.

    Ids compare without case or a trailing dot.  The milter passes the header's value,
    ``our_ids(config, j)`` and the transaction's added headers; a quarantine release uses
    `drop_forged`."""
    lname = name.lower()
    if lname.startswith(FORGEABLE_PREFIXES):  # str.startswith with a tuple: one C call
        return True
    if lname == _AR:
        if not authserv_ids:
            return False
        claimed = normalise_id(authserv_id_of(value))
        return bool(claimed) and claimed in {normalise_id(a) for a in authserv_ids}
    if lname == _RSPF:
        if any(h.name.lower() == _RSPF for h in ours):
            return True
        ids = {normalise_id(a) for a in authserv_ids}
        return any(r in ids for r in receivers_of(value))
    return False


def drop_forged(raw: bytes, our_head: bytes) -> bytes:
    """`raw` (a message as received) without its forged headers, judged by `our_head`: the
    header lines filterd added to it (a quarantined message keeps them apart from the original).

    Our authserv-ids are the ones our own Authentication-Results and Received-SPF headers there
    claim, and an incoming Received-SPF goes whenever we added one, as `is_forgeable` decides in
    the milter.  The rest of the header block and the body stay byte for byte."""
    ours = [AddHeader(n, v) for n, v in _fields(our_head)]
    ids = [authserv_id_of(h.value) for h in ours if h.name.lower() == _AR]
    ids += [r for h in ours if h.name.lower() == _RSPF for r in receivers_of(h.value)]
    ids = [i for i in ids if i]
    end = _header_end(raw)
    kept: list[bytes] = []
    for name, value, lines in _field_lines(raw[:end]):
        if not is_forgeable(name, value, ids, ours):
            kept.append(lines)
    return b"".join(kept) + raw[end:]


def drop_fields(raw: bytes, positions: set[int]) -> bytes:
    """`raw` without its header fields at these places (0 = the first field), folds included."""
    end = _header_end(raw)
    kept = [lines for i, (_, _, lines) in enumerate(_field_lines(raw[:end])) if i not in positions]
    return b"".join(kept) + raw[end:]


def _field_lines(block: bytes) -> Iterable[tuple[str, str, bytes]]:
    """Each header field of `block`: name, unfolded value, and its lines as they were."""
    current: list[bytes] = []
    for line in block.splitlines(keepends=True):
        if current and line[:1] not in (b" ", b"\t"):
            yield _field(current)
            current = []
        current.append(line)
    if current:
        yield _field(current)


def _field(lines: list[bytes]) -> tuple[str, str, bytes]:
    text = b"".join(lines)
    name, colon, value = text.partition(b":")
    if not colon:  # not a field (a stray line): never judged forged
        return "", "", text
    unfolded = b" ".join(value.split())
    return name.decode("ascii", "replace").strip(), unfolded.decode("utf-8", "replace"), text


def _fields(block: bytes) -> list[tuple[str, str]]:
    return [(n, v) for n, v, _ in _field_lines(block) if n]


def _header_end(raw: bytes) -> int:
    """Offset just past the last header line's ending (the blank line follows)."""
    ends = [i + len(sep) // 2 for sep in (b"\r\n\r\n", b"\n\n") if (i := raw.find(sep)) >= 0]
    return min(ends) if ends else len(raw)


def verdict_headers(verdict: Verdict) -> list[tuple[str, str]]:
    """The headers added to every delivered inbound message, in order."""
    spam = "Yes" if verdict.is_spam else "No"
    headers = [
        (STATUS_HEADER, f"{spam}, score={verdict.score:.2f} required={verdict.required:.2f}"),
        (SCORE_HEADER, f"{verdict.score:.2f}"),
    ]
    if verdict.is_spam:
        headers.append((FLAG_HEADER, "YES"))
    headers.append((REPORT_HEADER, report_value(verdict)))
    return headers


# RFC 5322 section 2.1.1: lines SHOULD be at most 78 characters and MUST be at most 998.
HEADER_WIDTH = 78
HEADER_HARD_WIDTH = 998
# A reason's length in the report (the log line has LOG_REASON_LIMIT): room for any check's
# explanation -- they are short -- while 195 rule hits at once stay far under Postfix's 100 KiB
# header_size_limit.  Past it the reason ends where a word ends, with "...".  A single "word"
# longer than the limit or WORD_LIMIT (a URL, base64) is the only thing ever cut inside: a header
# line must stay under 998 characters.
REASON_LIMIT = 300
WORD_LIMIT = 400
ELLIPSIS = "..."
_INDENT = "    "  # after the folding tab: a reason's continuation lines, under its symbol's name


def report_value(verdict: Verdict) -> str:
    """One entry per symbol -- score, name and reason, SpamAssassin's report layout -- folded.

    Each entry starts a line of its own; a long one goes on over indented continuation lines,
    broken at white space only.  Every line but the first starts with the folding tab (counted
    as one character, as RFC 5322 counts)."""
    lines = [f"action={verdict.action.value} score={verdict.score:.2f} required={verdict.required:.2f}"]
    for s in verdict.symbols:
        words = [f"* {s.score:5.1f} {s.name}", *shorten(s.reason, REASON_LIMIT).split()]  # aligned scores
        first, *rest = wrap(words, HEADER_WIDTH - 1, HEADER_WIDTH - 1 - len(_INDENT))
        lines.append(first)
        lines.extend(_INDENT + line for line in rest)
    return "\n\t".join(lines)


def wrap(words: Sequence[str], width: int, next_width: int | None = None) -> list[str]:
    """`words` over lines of at most `width` characters (`next_width` for the lines after the
    first), joined by one space, broken between words only: a word longer than a line gets a
    line of its own."""
    if not words:
        return [""]
    lines: list[str] = []
    current = words[0]
    for word in words[1:]:
        room = width if not lines else (next_width or width)
        if len(current) + 1 + len(word) <= room:
            current += " " + word
        else:
            lines.append(current)
            current = word
    lines.append(current)
    return lines


def shorten(text: str, limit: int) -> str:
    """`text` on one line (runs of white space become one space, control characters escaped),
    at most `limit` characters plus "..." when it was shortened -- where a word ends."""
    if (
        len(text) <= min(limit, WORD_LIMIT)
        and text.isprintable()
        and "  " not in text
        and text == text.strip()
    ):
        return text  # the usual short reason is already one clean line: nothing to build
    out: list[str] = []
    used = -1  # no space before the first word
    for word in map(_word, text.split()):
        if used + 1 + len(word) > limit:
            if not out:  # a single word longer than the limit: the only cut inside a word
                out.append(word[: max(limit - len(ELLIPSIS), 1)])
            return " ".join(out) + ELLIPSIS
        out.append(word)
        used += 1 + len(word)
    return " ".join(out)


def _word(word: str) -> str:
    """A word as it can be shown on one line: control characters and lone surrogates escaped,
    and at most WORD_LIMIT characters (a longer one is cut: see WORD_LIMIT)."""
    if not word.isprintable():
        word = repr(word)[1:-1]
    if len(word) > WORD_LIMIT:
        word = word[: WORD_LIMIT - len(ELLIPSIS)] + ELLIPSIS
    return word


# -- the log line ------------------------------------------------------------------------------

_STAGE_LABELS = tuple((stage, stage.label) for stage in Stage)  # in protocol order

# Bounds of the log line's lists (see the module docstring); what is left out is counted.
SYMBOLS_LIMIT = 2000
RCPTS_LIMIT = 1000
LOG_REASON_LIMIT = 500

# Symbols that say a check failed and its on_error policy (fail-open or fail-closed) was applied:
# the message's line is then a warning.  INTERNAL_ERROR (filterd's own bug) makes it an error.
POLICY_SYMBOLS = frozenset({"CHECK_ERROR", "CLAM_VIRUS_FAIL", "CLAM_CACHE_FAIL"})
_POLICY_SUFFIX = "_REDIS_ERROR"
VIRUS_SYMBOL = "CLAM_VIRUS"


def line_level(verdict: Verdict) -> int:
    """The log line's severity: info for a verdict, warning when a failure's policy was applied,
    error when filterd itself failed on the message."""
    level = logging.INFO
    for s in verdict.symbols:
        if s.name == "INTERNAL_ERROR":
            return logging.ERROR
        if s.name in POLICY_SYMBOLS or s.name.endswith(_POLICY_SUFFIX):
            level = logging.WARNING
    return level


_log = logging.getLogger("filterd")
# a verdict line keeps its shape "QID: action=..." at every severity: no "warning: " word in it
_VERDICT_LINE = {"verdict_line": True}


def log_verdict(tx: Transaction, verdict: Verdict) -> None:
    """Log the message's line (`log_line`) at its severity (`line_level`)."""
    level = line_level(verdict)
    if _log.isEnabledFor(level):
        _log.log(level, log_line(tx, verdict), extra=_VERDICT_LINE)


def log_line(tx: Transaction, verdict: Verdict) -> str:
    """The one line logged per message: its queue id, what was done, what was found, who sent
    it, and where time went (see the module docstring)."""
    session = tx.session
    client = f"{_envelope(session.client_name or 'unknown')}[{_envelope(session.client_addr or '-')}]"
    symbols = _bounded([f"{s.name}({s.score:g})" for s in verdict.symbols], SYMBOLS_LIMIT) or "-"
    timings = ",".join(
        f"{label}:{tx.timings[stage] * 1000:.2f}ms" for stage, label in _STAGE_LABELS if stage in tx.timings
    )
    parts = [
        f"action={verdict.action.value}",
        f"spam_status={'yes' if verdict.is_spam else 'no'}",
    ]
    if any(s.name == VIRUS_SYMBOL for s in verdict.symbols):
        parts.append("virus_status=VIRUS")
    parts += [
        f"score={verdict.score:.2f}/{verdict.required:.2f}",
        f"symbols={symbols}",
        f"client={client}",
        f"helo=<{_envelope(session.helo or '')}>",
        f"from=<{_envelope(tx.mail_from or '')}>",
        f"rcpts=<{_bounded([_envelope(r) for r in tx.rcpts], RCPTS_LIMIT)}>",
        f"direction={tx.direction.value}",
        f"time={timings or '-'}",
    ]
    if policy_of(tx).name:  # the recipients' [policy."..."] entry, when one applied
        parts.append(f"policy=<{_envelope(policy_of(tx).name)}>")
    if verdict.decision is not None:
        parts.append(f"reason={shorten(verdict.decision.reason, LOG_REASON_LIMIT)!r}")
    return f"{tx.queue_id or 'NOQUEUE'}: " + ", ".join(parts)


_UNSAFE = re.compile(r"[\x00-\x20\x7f,]")


def _envelope(text: str) -> str:
    """An envelope value on the log line: no white space, control character or comma (they would
    split the line or its fields), nor a lone surrogate (escaped)."""
    if text.isprintable() and not _UNSAFE.search(text):
        return text
    return _UNSAFE.sub(lambda m: f"\\x{ord(m.group()):02x}", repr(text)[1:-1])


def _bounded(items: Sequence[str], limit: int) -> str:
    """`items` joined by commas, at most about `limit` characters: those that do not fit are
    left out whole and counted ("...(+12)")."""
    out: list[str] = []
    used = 0
    for i, item in enumerate(items):
        if out and used + 1 + len(item) > limit:
            return ",".join(out) + f",...(+{len(items) - i})"
        out.append(item)
        used += len(item) + (1 if len(out) > 1 else 0)
    return ",".join(out)

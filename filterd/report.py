"""How a verdict is shown: the verdict headers on delivered mail, and the one log line per message."""

from __future__ import annotations

from collections.abc import Collection, Iterable

from filterd.auth.results import AR_HEADER, authserv_id_of, normalise_id, receivers_of
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


def report_value(verdict: Verdict) -> str:
    """One folded line per symbol: score, name and reason (SpamAssassin's report layout)."""
    lines = [f"action={verdict.action.value} score={verdict.score:.2f} required={verdict.required:.2f}"]
    for s in verdict.symbols:
        reason = " ".join(s.reason.split())[:200]
        lines.append(f"* {s.score:5.1f} {s.name} {reason}")
    return "\n\t".join(lines)


_STAGE_LABELS = tuple((stage, stage.label) for stage in Stage)  # in protocol order


def log_line(tx: Transaction, verdict: Verdict) -> str:
    """The one line logged per message: who, what was found, what was done, and where time went."""
    session = tx.session
    client = f"{session.client_name or 'unknown'}[{session.client_addr or '-'}]"
    symbols = ",".join(f"{s.name}({s.score:g})" for s in verdict.symbols) or "-"
    timings = ",".join(
        f"{label}:{tx.timings[stage] * 1000:.2f}ms" for stage, label in _STAGE_LABELS if stage in tx.timings
    )
    parts = [
        f"{tx.queue_id or 'NOQUEUE'}:",
        f"client={client}",
        f"helo=<{session.helo or ''}>",
        f"from=<{tx.mail_from or ''}>",
        f"rcpts=<{','.join(tx.rcpts)}>",
        f"direction={tx.direction.value}",
        f"score={verdict.score:.2f}/{verdict.required:.2f}",
        f"action={verdict.action.value}",
        f"symbols={symbols}",
        f"time={timings or '-'}",
    ]
    if verdict.decision is not None:
        parts.append(f"reason={verdict.decision.reason!r}")
    return " ".join(parts)

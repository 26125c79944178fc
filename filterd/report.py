"""How a verdict is shown: the verdict headers on delivered mail, and the one log line per message."""

from __future__ import annotations

from collections.abc import Collection

from filterd.auth.results import AR_HEADER, authserv_id_of
from filterd.check import Stage
from filterd.pipeline import Verdict
from filterd.transaction import Transaction

STATUS_HEADER = "X-Spam-Status"
SCORE_HEADER = "X-Spam-Score"
FLAG_HEADER = "X-Spam-Flag"
REPORT_HEADER = "X-Spam-Report"

# Incoming headers with these prefixes are removed before ours are added: an upstream verdict is
# forgeable by anyone who can send mail, and a user's Sieve rule must only ever see ours.
FORGEABLE_PREFIXES = ("x-spam-", "x-filterd-", "x-virus-")


def is_forgeable(name: str, value: str = "", authserv_ids: Collection[str] = ()) -> bool:
    """True for an incoming header that must be removed before ours are added.

    Besides the X-Spam-* family, that is an Authentication-Results header claiming one of our
    `authserv_ids` (RFC 8601 section 5): only we may speak for our authserv-id.  The milter
    passes the header's value and ``(configured_authserv_id(config),)``."""
    lname = name.lower()
    if lname.startswith(FORGEABLE_PREFIXES):  # str.startswith with a tuple: one C call
        return True
    if lname == AR_HEADER.lower() and authserv_ids:
        claimed = authserv_id_of(value).lower()
        return bool(claimed) and claimed in {a.lower() for a in authserv_ids}
    return False


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

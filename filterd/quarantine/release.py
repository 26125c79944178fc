"""Releasing a quarantined message: re-injecting it through Postfix, exactly once.

`release` re-injects what was received, less the sender's own X-Spam-* and X-Virus-* headers and
forged Authentication-Results / Received-SPF (the re-injection listener runs no milter to remove
them): the body and every other header go out byte for byte.

Release is exactly-once: it holds the entry's lock (`QuarantineStore.locked`), so of two
concurrent releases one wins and the other is refused; the winner delivers, records the release
in the metadata (atomic replace), then removes the lock.  A release that died half-way leaves the
lock, and further releases are refused until an admin checks and removes it.

Kept apart from the store: the mail path stores, only ``filterctl quarantine`` releases.
"""

from __future__ import annotations

import datetime as dt
import smtplib
import socket
from collections.abc import Mapping, Sequence

from filterd.quarantine.store import (
    AlreadyReleased,
    Entry,
    QuarantineError,
    QuarantineStore,
    ReleaseFailed,
    why,
)
from filterd.report import drop_forged


def message_for_release(entry: Entry) -> bytes:
    """What a release re-injects: the bytes received, less incoming X-Spam-*/X-Virus-* headers
    and forged Authentication-Results / Received-SPF (`filterd.report.drop_forged`).

    The re-injection listener runs no milter, so nothing else would remove a sender's forged
    "X-Spam-Status: No" or "X-Virus-Status: Clean" before the user's Sieve rules see it.  The
    rest of the header block and the body stay byte for byte as received."""
    offset = int(entry.meta.get("header_offset", 0))  # forged A-R/Received-SPF: judged by our headers
    return drop_forged(entry.original(), entry.stored()[:offset])


def release(store: QuarantineStore, qid: str, to: Sequence[str] = ()) -> Entry:
    """Re-inject the message over SMTP to ``release_via``, for the original recipients or `to`.

    Refused if already released or if another operation holds the entry.  Recipients the
    server refuses are recorded; the entry counts as released as soon as one accepted it, so
    a second release cannot deliver twice to the others."""
    settings = store.settings
    with store.locked(qid, "release") as entry:
        if entry.released:
            r = entry.released
            raise AlreadyReleased(
                f"{qid} was already released at {r.get('time')} to {', '.join(r.get('to', []))}"
            )
        recipients = list(to) or list(entry.meta.get("rcpts") or [])
        if not recipients:
            raise ReleaseFailed(f"{qid} has no recipients: give one with --to")
        sender = entry.meta.get("mail_from") or ""
        refused = _send(
            settings.release_via, settings.release_timeout, message_for_release(entry), sender, recipients
        )
        meta = dict(entry.meta)
        meta["released"] = {
            "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "to": [r for r in recipients if r not in refused],
            "refused": refused,
            "via": settings.release_via,
        }
        try:
            store.replace_meta(qid, meta)
        except OSError as exc:
            raise QuarantineError(
                f"{qid} was delivered but could not be marked released ({why(exc)}): do not release it again"
            ) from exc
        entry.meta = meta
        return entry


class _UnixSMTP(smtplib.SMTP):
    """SMTP over a UNIX-domain socket (smtplib has it only for LMTP)."""

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(host)
        except OSError:
            sock.close()
            raise
        return sock


def _send(via: str, timeout: float, data: bytes, sender: str, recipients: list[str]) -> dict[str, str]:
    """Send `data` through `via` (a UNIX socket path or HOST:PORT); the refused recipients."""
    try:
        if via.startswith("/"):
            client: smtplib.SMTP = _UnixSMTP(via, 0, local_hostname="localhost", timeout=timeout)
        else:
            host, _, port = via.rpartition(":")
            client = smtplib.SMTP(host, int(port), timeout=timeout)
        with client as smtp:
            smtp.ehlo_or_helo_if_needed()
            options = []
            if smtp.has_extn("8bitmime") and any(b > 127 for b in data):
                options.append("BODY=8BITMIME")
            refused = smtp.sendmail(sender, recipients, data, mail_options=options)
    except smtplib.SMTPRecipientsRefused as exc:
        raise ReleaseFailed(f"every recipient was refused by {via}: {_refusals(exc.recipients)}") from exc
    except smtplib.SMTPResponseException as exc:
        text = (
            exc.smtp_error.decode("utf-8", "replace") if isinstance(exc.smtp_error, bytes) else exc.smtp_error
        )
        raise ReleaseFailed(f"{via} refused the message: {exc.smtp_code} {text}") from exc
    except (smtplib.SMTPException, OSError) as exc:
        raise ReleaseFailed(f"cannot re-inject through {via}: {why(exc)}") from exc
    return {rcpt: f"{code} {msg.decode('utf-8', 'replace')}" for rcpt, (code, msg) in refused.items()}


def _refusals(recipients: Mapping[str, tuple[int, bytes]]) -> str:
    return "; ".join(f"{r}: {code} {msg.decode('utf-8', 'replace')}" for r, (code, msg) in recipients.items())

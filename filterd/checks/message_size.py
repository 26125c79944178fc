"""Message size: the filter's own size limit, and what happens past [milter] max_scan_bytes.

Postfix enforces its own message_size_limit; ``reject_over`` is the filter's, for sites that want
a lower one for inbound mail.

Past ``[milter] max_scan_bytes`` the milter stops keeping the body (memory stays bounded), so
nothing that reads the content can run: no antivirus, no DKIM and so no DMARC enforcement, no
rules, no Bayes.  Delivering such a message would deliver it unscanned, so ``[milter]
oversize_action`` decides, in both directions: ``reject`` (the default: 552 5.3.4 naming the
limit, so the sender learns the size that is refused), ``tempfail`` (452 4.3.4, for a site that
is about to raise the limit) or ``accept`` (delivered unscanned, marked so: SCAN_SKIPPED_SIZE in
the report, ``X-Virus-Status: Not scanned`` from the antivirus check when it is on).  With the
default max_scan_bytes (10 MiB) over Postfix's default message_size_limit (10240000 bytes), no
message Postfix accepts by default reaches this limit.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from filterd.check import Check, CheckSettings, Direction, Finding, Output, Site, Stage
from filterd.replies import R452_TOO_BIG_TO_SCAN, R552_MESSAGE_TOO_BIG, Reject, TempFail
from filterd.settings import setting
from filterd.transaction import Transaction


def _not_negative(value: int) -> str | None:
    return None if value >= 0 else "expected zero (off) or a size in bytes"


@dataclass(frozen=True)
class MessageSizeSettings(CheckSettings):
    reject_over: int = setting(
        0, "reject inbound messages larger than this many bytes (0: no limit)", _not_negative
    )


class MessageSize(Check):
    name = "message_size"
    stage = Stage.EOM
    description = "size limit, and [milter] oversize_action for messages too large to scan"
    symbols = {"SCAN_SKIPPED_SIZE": 0.0}
    Settings = MessageSizeSettings
    # outbound too: an oversized message from a compromised account must not leave unscanned
    directions = frozenset({Direction.INBOUND, Direction.OUTBOUND})

    def decides(self) -> bool:
        assert isinstance(self.settings, MessageSizeSettings)
        return self.settings.reject_over > 0 or self.site.oversize_action != "accept"

    def run(self, tx: Transaction) -> Iterable[Output]:
        assert isinstance(self.settings, MessageSizeSettings)
        limit = self.settings.reject_over
        if limit and tx.size > limit and tx.direction is Direction.INBOUND:
            yield Reject(R552_MESSAGE_TOO_BIG, f"message of {tx.size} bytes over the limit of {limit}")
            return
        if not tx.oversized:
            return
        max_bytes = self.site.max_scan_bytes
        reason = f"message of {tx.size} bytes is over max_scan_bytes ({max_bytes}): content not scanned"
        yield Finding("SCAN_SKIPPED_SIZE", reason)
        decision = oversize_decision(self.site, reason)
        if decision is not None:
            yield decision


def oversize_decision(site: Site, reason: str) -> Reject | TempFail | None:
    """What [milter] oversize_action says for a message over max_scan_bytes (None: accept it).

    Also called by the antivirus check, so that turning this check off does not let oversized
    mail through unscanned."""
    max_bytes = site.max_scan_bytes
    action = site.oversize_action
    if action == "reject":
        text = f"Message size exceeds the limit of {max_bytes} bytes of this site's content filter"
        return Reject(R552_MESSAGE_TOO_BIG.with_text(text), reason)
    if action == "tempfail":
        text = f"Message larger than {max_bytes} bytes cannot be scanned now, please try again later"
        return TempFail(R452_TOO_BIG_TO_SCAN.with_text(text), reason)
    return None

"""Message size: refuse messages over a hard limit, and say when content was not scanned.

Postfix enforces its own message_size_limit; this limit is the filter's, for sites that want a
lower one for inbound mail.  Messages over ``[milter] max_scan_bytes`` are still delivered (or not)
on the other checks' word, but their body was not kept, so content checks did not run: the
report says so with SCAN_SKIPPED_SIZE rather than pretending the message was clean.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from filterd.check import Check, CheckSettings, Finding, Output, Stage
from filterd.replies import R552_MESSAGE_TOO_BIG, Reject
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
    description = "size limit, and a note when a message was too large to scan"
    symbols = {"SCAN_SKIPPED_SIZE": 0.0}
    Settings = MessageSizeSettings

    def decides(self) -> bool:
        return self.settings.reject_over > 0  # type: ignore[attr-defined]

    def run(self, tx: Transaction) -> Iterable[Output]:
        assert isinstance(self.settings, MessageSizeSettings)
        limit = self.settings.reject_over
        if limit and tx.size > limit:
            yield Reject(R552_MESSAGE_TOO_BIG, f"message of {tx.size} bytes over the limit of {limit}")
        elif tx.oversized:
            yield Finding(
                "SCAN_SKIPPED_SIZE",
                f"message of {tx.size} bytes is over max_scan_bytes "
                f"({self.config.milter.max_scan_bytes}): content not scanned",
            )

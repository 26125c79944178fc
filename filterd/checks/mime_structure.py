"""MIME structure: nesting and part counts no mail program writes.

Deep nesting and hundreds of parts have one use in mail: hiding the body from a filter that stops
reading at some depth or part count.  filterd reads the text past both (filterd.message), and this
check says that the structure was there, with a score that counts: a sender who builds it is not
sending ordinary mail.

The defaults sit far above real mail.  In the 8,165 messages of the shared corpus (SpamAssassin
public and test data, CSDMC2010, malware test mails) the deepest tree is 5 levels and the largest
has 22 nodes; a forwarded chain of messages each forwarded as an attachment adds two levels a hop.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from filterd.check import Check, CheckSettings, Finding, Output, Stage
from filterd.settings import positive, setting
from filterd.transaction import Transaction


@dataclass(frozen=True)
class MimeStructureSettings(CheckSettings):
    max_depth: int = setting(
        20, "a MIME tree nested deeper than this is MIME_TOO_DEEP (the message is 0)", positive
    )
    max_parts: int = setting(
        100, "a MIME tree of more nodes than this (containers included) is MIME_TOO_MANY_PARTS", positive
    )


class MimeStructure(Check):
    name = "mime_structure"
    stage = Stage.EOM
    description = "MIME nesting deeper, or more parts, than mail programs write"
    symbols = {"MIME_TOO_DEEP": 4.0, "MIME_TOO_MANY_PARTS": 3.0}
    Settings = MimeStructureSettings

    def decides(self) -> bool:
        return False  # findings only

    def run(self, tx: Transaction) -> Iterable[Output]:
        assert isinstance(self.settings, MimeStructureSettings)
        if tx.oversized:
            return  # the body was not kept: its structure is unknown
        message = tx.message
        if message.mime_depth > self.settings.max_depth:
            yield Finding(
                "MIME_TOO_DEEP", f"MIME nesting {message.mime_depth} deep (limit {self.settings.max_depth})"
            )
        if message.mime_nodes_total > self.settings.max_parts:
            yield Finding(
                "MIME_TOO_MANY_PARTS",
                f"{message.mime_nodes_total} MIME parts (limit {self.settings.max_parts})",
            )

"""Unknown recipients of the domains PostfixAdmin hosts get 550 5.1.1 at RCPT.

Postfix refuses them itself when its virtual_mailbox_maps and virtual_alias_maps read the same
SQL tables; this check is for a Postfix that is not wired to SQL (a filtering front MX relaying to
the mailbox host, say), where the unknown user would otherwise be accepted and bounced later --
backscatter.  It answers as Postfix's own check would (``550 5.1.1 ... User unknown``), from the
cached tables of `filterd.sqllookup`: a mailbox, an alias, or the domain's catch-all alias
(``@example.com``) is known; ``bob+tag@`` is bob's when ``recipient_delimiter`` says so.  A
recipient of any other domain is not judged.

While the database cannot be read, ``[sql] on_error`` decides: "tempfail" answers 451 4.3.0 (the
client retries; nothing is lost), "stale" judges by the last good answer, "static" accepts
(the static configuration lists no recipients).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from filterd.check import Check, CheckContext, CheckSettings, Direction, Output, Stage
from filterd.replies import Reject, Reply, TempFail
from filterd.settings import ConfigError, setting
from filterd.sqllookup import SqlUnavailable
from filterd.transaction import Transaction

R550_USER_UNKNOWN = Reply(550, "5.1.1", "Recipient address rejected: User unknown in virtual mailbox table")
R451_LOOKUP_FAILED = Reply(451, "4.3.0", "Recipient address lookup failed, please try again later")


@dataclass(frozen=True)
class RecipientExistsSettings(CheckSettings):
    enabled: bool = setting(False, "run this check (it needs [sql] enabled)")
    recipient_delimiter: str = setting(
        "+", "Postfix's recipient_delimiter: bob+news@example.com is bob's address (empty: none)"
    )


class RecipientExists(Check):
    name = "recipient_exists"
    stage = Stage.RCPT
    # authenticated users too: Postfix refuses their mail to an unknown local user alike
    directions = frozenset({Direction.INBOUND, Direction.OUTBOUND})
    description = "550 5.1.1 for an unknown recipient of a PostfixAdmin domain ([sql] tables)"
    symbols = {}
    Settings = RecipientExistsSettings
    after = ("recipient_lists",)  # a deny-listed recipient is refused with the deny list's reason

    def __init__(self, ctx: CheckContext[RecipientExistsSettings]) -> None:
        super().__init__(ctx)
        if ctx.site.sql is None:  # parse_config refuses this; a check built by hand may not
            raise ConfigError(
                "checks.recipient_exists.enabled", "needs [sql] enabled = true: it reads those tables"
            )
        self.lookup = ctx.site.sql
        self.delimiter = ctx.settings.recipient_delimiter

    def run(self, tx: Transaction) -> Iterable[Output]:
        rcpt = tx.current_rcpt
        try:
            known = self.lookup.recipient_known(rcpt, self.delimiter)
        except SqlUnavailable as exc:
            yield TempFail(R451_LOOKUP_FAILED, f"recipient {rcpt}: {exc}")
            return
        if known is False:
            address = rcpt.strip().strip("<>")
            yield Reject(
                R550_USER_UNKNOWN.with_text(
                    f"<{address}>: Recipient address rejected: User unknown in virtual mailbox table"
                ),
                f"recipient {address} is no mailbox or alias of its domain",
            )

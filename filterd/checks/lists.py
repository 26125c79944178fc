"""Allow and deny lists by client network, envelope sender and recipient.

A deny-list hit rejects at the stage where the data first exists (client at CONNECT, sender at
MAIL FROM, recipient at RCPT -- that recipient only), so no later work is done.  An allow-list hit
is a large negative score rather than a bypass: the message is still scanned for viruses and the
admin still sees every symbol, as with SpamAssassin's whitelist_from.
The files are read when the pipeline is built, so a SIGHUP reload re-reads them.

The recipient allow list is different: a milter gives one verdict per message, for all its
recipients, so a score given for one recipient is given to all of them.  Its -20 therefore
applies only when *every* recipient of the message is on the list (`RecipientAllowed`, once the
recipients are known); a message to an allowed and an ordinary recipient is scored as usual, so
spam sent to ``postmaster@`` and ``bob@`` is treated as spam for bob -- and for postmaster too,
who still gets what is sent to postmaster alone.  (Refusing the mix at RCPT with ``452 4.5.3``
would split it, but a sending server retries the refused recipients only on its next queue run,
minutes later, and some clients give up: a delay for every mixed message.)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import ClassVar

from filterd.addrlists import AddressList, NetworkList
from filterd.check import Check, CheckContext, CheckSettings, Finding, Output, Stage
from filterd.replies import R550_CLIENT_DENIED, R550_RECIPIENT_DENIED, R550_SENDER_DENIED, Reject, Reply
from filterd.settings import setting
from filterd.transaction import Transaction


@dataclass(frozen=True)
class ListSettings(CheckSettings):
    allow_file: str = setting("", "file of allowed entries, one per line (empty: none)")
    deny_file: str = setting("", "file of denied entries, one per line (empty: none)")


class ClientLists(Check):
    name = "client_lists"
    stage = Stage.CONNECT
    description = "allow and deny lists of client IP networks"
    symbols = {"CLIENT_ALLOWED": -20.0}
    Settings = ListSettings

    def __init__(self, ctx: CheckContext[ListSettings]) -> None:
        super().__init__(ctx)
        settings = ctx.settings
        self.allow = NetworkList.load(settings.allow_file, f"checks.{self.name}.allow_file")
        self.deny = NetworkList.load(settings.deny_file, f"checks.{self.name}.deny_file")

    def decides(self) -> bool:
        return bool(self.deny.networks)

    def run(self, tx: Transaction) -> Iterable[Output]:
        ip = tx.session.client_ip
        if (net := self.deny.match(ip)) is not None:
            yield Reject(
                R550_CLIENT_DENIED.with_text(f"Client host [{ip}] is on this site's deny list"),
                f"client {ip} in deny list ({net})",
            )
        elif (net := self.allow.match(ip)) is not None:
            yield Finding("CLIENT_ALLOWED", f"client {ip} in allow list ({net})")


class _AddressLists(Check):
    """Shared by the sender and recipient lists: only the address looked at and the words differ."""

    Settings = ListSettings
    allowed_symbol: str | None  # None: the allow list is applied elsewhere
    deny_reply: Reply
    noun: str  # "sender", "recipient"

    def __init__(self, ctx: CheckContext[ListSettings]) -> None:
        super().__init__(ctx)
        settings = ctx.settings
        self.allow = AddressList.load(settings.allow_file, f"checks.{self.name}.allow_file")
        self.deny = AddressList.load(settings.deny_file, f"checks.{self.name}.deny_file")

    def address(self, tx: Transaction) -> str | None:
        raise NotImplementedError

    def decides(self) -> bool:
        return bool(self.deny.addresses or self.deny.domains or self.deny.parent_domains)

    def run(self, tx: Transaction) -> Iterable[Output]:
        address = self.address(tx)
        if (entry := self.deny.match(address)) is not None:
            text = f"{self.noun.capitalize()} address <{address}> is on this site's deny list"
            yield Reject(self.deny_reply.with_text(text), f"{self.noun} {address} in deny list ({entry})")
        elif self.allowed_symbol and (entry := self.allow.match(address)) is not None:
            yield Finding(self.allowed_symbol, f"{self.noun} {address} in allow list ({entry})")


class SenderLists(_AddressLists):
    name = "sender_lists"
    stage = Stage.MAIL_FROM
    description = "allow and deny lists of envelope sender addresses and domains"
    symbols = {"SENDER_ALLOWED": -20.0}
    allowed_symbol = "SENDER_ALLOWED"
    deny_reply = R550_SENDER_DENIED
    noun = "sender"

    def address(self, tx: Transaction) -> str | None:
        return tx.mail_from


class RecipientLists(_AddressLists):
    name = "recipient_lists"
    stage = Stage.RCPT
    description = "allow and deny lists of recipient addresses and domains"
    symbols: ClassVar[Mapping[str, float]] = {}  # RCPT_ALLOWED comes from RecipientAllowed
    allowed_symbol = None
    deny_reply = R550_RECIPIENT_DENIED
    noun = "recipient"

    def address(self, tx: Transaction) -> str | None:
        return tx.current_rcpt


class RecipientAllowed(Check):
    """The allow list of `recipient_lists`, applied once the recipients are final: RCPT_ALLOWED
    only when every one of them is on it (see the module docstring).  Its files are set in
    ``[checks.recipient_lists]``; turning that check off turns this one off too."""

    name = "recipient_allowed"
    stage = Stage.HEADERS  # the first stage after the last RCPT; refused recipients are gone by then
    description = "RCPT_ALLOWED when every recipient is on the recipient_lists allow list (files set there)"
    symbols = {"RCPT_ALLOWED": -20.0}

    def __init__(self, ctx: CheckContext[CheckSettings]) -> None:
        super().__init__(ctx)
        lists: ListSettings = ctx.settings_of(RecipientLists.name)
        path = lists.allow_file if lists.enabled else ""
        self.allow = AddressList.load(path, f"checks.{RecipientLists.name}.allow_file")

    def decides(self) -> bool:
        return False

    def run(self, tx: Transaction) -> Iterable[Output]:
        if not tx.rcpts:
            return
        entries = []
        for rcpt in tx.rcpts:
            entry = self.allow.match(rcpt)
            if entry is None:
                return  # one ordinary recipient: the message is scored as usual
            entries.append(f"{rcpt} ({entry})" if entry != rcpt.strip("<>").lower() else rcpt)
        shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
        noun = "recipient" if len(entries) == 1 else f"all {len(entries)} recipients"
        yield Finding("RCPT_ALLOWED", f"{noun} in allow list: {shown}")

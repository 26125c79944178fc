"""SMTP replies and the early decisions a check may take.

A decision ends the transaction (or, at RCPT, one recipient) before the pipeline adds up scores.
Each decision is a small frozen class, and the class fixes the reply's code class: a `Reject`
cannot carry a 4xx, a `TempFail` cannot carry a 5xx.  The replies filterd itself sends live in
the table at the bottom, each named after its code (the aiosmtpd convention), and a unit test
checks that every name matches its code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_DSN = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")


@dataclass(frozen=True)
class Reply:
    """An SMTP reply: a three-digit code, an enhanced status code (RFC 3463) and a human text."""

    code: int
    dsn: str
    text: str

    def __post_init__(self) -> None:
        if not 400 <= self.code <= 599:
            raise ValueError(f"SMTP reply code {self.code} is not a 4xx or 5xx")
        if not _DSN.match(self.dsn) or self.dsn[0] != str(self.code)[0]:
            raise ValueError(f"enhanced status {self.dsn!r} does not match reply code {self.code}")
        if "\r" in self.text or "\n" in self.text:
            raise ValueError("SMTP reply text must be one line")

    def with_text(self, text: str) -> Reply:
        """The same codes with another text (e.g. naming what was matched)."""
        return Reply(self.code, self.dsn, " ".join(text.split()))

    def __str__(self) -> str:
        return f"{self.code} {self.dsn} {self.text}"


@dataclass(frozen=True)
class Reject:
    """Refuse permanently with a 5xx: the client sees the reply, nothing is delivered."""

    reply: Reply
    reason: str

    def __post_init__(self) -> None:
        if not 500 <= self.reply.code <= 599:
            raise ValueError(f"Reject needs a 5xx reply, got {self.reply.code}")


@dataclass(frozen=True)
class TempFail:
    """Refuse for now with a 4xx: the client keeps the message and retries."""

    reply: Reply
    reason: str

    def __post_init__(self) -> None:
        if not 400 <= self.reply.code <= 499:
            raise ValueError(f"TempFail needs a 4xx reply, got {self.reply.code}")


@dataclass(frozen=True)
class Discard:
    """Accept the message from the client and drop it silently (e.g. a virus policy)."""

    reason: str


@dataclass(frozen=True)
class Quarantine:
    """Accept the message from the client and hold it back for an admin to review."""

    reason: str


Decision = Reject | TempFail | Discard | Quarantine


# The replies filterd sends.  The name carries the code so a reader of a test or a log line
# knows the class of the answer without looking it up.
R451_CHECK_FAILED = Reply(451, "4.3.0", "Temporary failure in the content filter, please try again later")
R451_GREYLISTED = Reply(451, "4.7.1", "Message scored as suspicious, please try again later")
R451_VIRUS_SCAN_FAILED = Reply(451, "4.3.0", "Virus scanner unavailable, please try again later")
R452_TOO_BIG_TO_SCAN = Reply(452, "4.3.4", "Message too large for the virus scanner, please try again later")
R554_VIRUS_FOUND = Reply(554, "5.7.1", "Message rejected: virus found")
R451_GREYLIST_DEFERRED = Reply(451, "4.7.1", "Greylisted: first attempt deferred, please try again later")
R451_RATE_LIMITED = Reply(451, "4.7.1", "Too many messages from you, please try again later")
R550_SPAM = Reply(550, "5.7.1", "Message rejected as spam")
R550_CLIENT_DENIED = Reply(550, "5.7.1", "Client host is on this site's deny list")
R550_SENDER_DENIED = Reply(550, "5.7.1", "Sender address is on this site's deny list")
R550_RECIPIENT_DENIED = Reply(550, "5.7.1", "Recipient address is on this site's deny list")
R552_MESSAGE_TOO_BIG = Reply(552, "5.3.4", "Message size exceeds the limit of this site's content filter")
# Sender authentication (enhanced codes from RFC 7372).
R550_SPF_FAIL = Reply(550, "5.7.23", "SPF validation failed")
R550_SPF_PERMERROR = Reply(550, "5.7.24", "SPF validation error")
R451_SPF_TEMPERROR = Reply(451, "4.7.24", "SPF validation error, please try again later")
R451_SPF_DEFERRED = Reply(451, "4.7.1", "SPF validation failed, please try again later")
R550_DMARC_REJECT = Reply(550, "5.7.26", "Rejected by the DMARC policy of the From domain")
R550_FROM_AMBIGUOUS = Reply(550, "5.7.1", "Message has From addresses of several domains")

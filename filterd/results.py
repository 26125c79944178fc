"""What checks and the driver produce: plain result types, importing nothing of filterd.

This is the bottom of the house.  A check yields `Finding`s, `AddHeader`s and at most one
decision (`Reject`, `TempFail`, `Discard`, `Quarantine`); the driver resolves findings into
scored `Symbol`s and picks one `Action`, and the `Verdict` carries all of it to whoever shows it
(the milter's headers, the log line, `filterctl scan`).  Every type here is frozen data (the
verdict aside, which the driver fills in), so any layer may hold one without knowing who made it.

`Fact` is the other currency: a typed key under which one check leaves a result for another
(DKIM's results for DMARC, say).  A check declares the facts it provides and requires, and the
registry orders checks from that (see `filterd.registry`).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast

T = TypeVar("T")


class Stage(enum.IntEnum):
    """The SMTP stages, in protocol order; a check runs at the first stage where its data exists.

    FINISH is not an SMTP stage: it comes after the verdict, for what writes headers or signs."""

    CONNECT = 1
    HELO = 2
    MAIL_FROM = 3
    RCPT = 4
    HEADERS = 5  # headers known; run first at end of message (the milter takes no end-of-headers event)
    EOM = 6  # end of message: the whole message is known
    FINISH = 7  # after the verdict: headers and signatures, which cannot change it

    @property
    def label(self) -> str:
        return self.name.lower()


class Direction(enum.Enum):
    """Inbound mail is scored; outbound (authenticated or internal clients) is not, but may be signed."""

    INBOUND = "inbound"
    OUTBOUND = "outbound"


@dataclass(frozen=True)
class Finding:
    """One named result of a check: the symbol, a short reason, and optionally its own score."""

    symbol: str
    reason: str
    score: float | None = None
    value: float | None = None  # a measured number the learned combination reads (the spamicity)


@dataclass(frozen=True)
class AddHeader:
    """A header a check wants added to the delivered message."""

    name: str
    value: str


# --- SMTP replies and decisions ------------------------------------------------------------

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

Output = Finding | AddHeader | Decision


# --- the verdict ---------------------------------------------------------------------------


class Action(enum.Enum):
    ACCEPT = "accept"
    ADD_HEADER = "add_header"
    REWRITE_SUBJECT = "rewrite_subject"
    QUARANTINE = "quarantine"
    GREYLIST = "greylist"
    REJECT = "reject"
    TEMPFAIL = "tempfail"  # a check's decision (or a fail-closed error), not a score threshold
    DISCARD = "discard"


@dataclass(frozen=True)
class Symbol:
    """A finding with its score resolved."""

    name: str
    score: float
    reason: str


@dataclass
class Verdict:
    """The outcome for one message: what was found, the total, and the single action to take."""

    score: float
    required: float
    action: Action
    symbols: list[Symbol]
    decision: Decision | None = None  # set when a check decided (or a threshold means a reply)
    add_headers: list[AddHeader] = field(default_factory=list)

    @property
    def is_spam(self) -> bool:
        return self.score >= self.required


def action_of(decision: Decision) -> Action:
    """The action a check's decision amounts to."""
    if isinstance(decision, Reject):
        return Action.REJECT
    if isinstance(decision, TempFail):
        return Action.TEMPFAIL
    if isinstance(decision, Discard):
        return Action.DISCARD
    return Action.QUARANTINE


# --- facts one check leaves for another ----------------------------------------------------


class Fact(Generic[T]):
    """A typed key for a result one check provides and others require.

    ``DKIM = Fact[tuple[DkimResult, ...]]("auth.dkim")``: the DKIM check sets it, DMARC reads
    it, and mypy knows the type at both ends.  Facts compare by identity: two keys with one
    name are two facts (the name is for reading logs and errors)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Fact({self.name!r})"


class Facts:
    """The facts known about one message (or connection), by key."""

    __slots__ = ("_values",)

    def __init__(self) -> None:
        self._values: dict[Fact[Any], Any] = {}

    def get(self, key: Fact[T]) -> T | None:
        return cast("T | None", self._values.get(key))

    def set(self, key: Fact[T], value: T) -> None:
        self._values[key] = value

    def __contains__(self, key: Fact[Any]) -> bool:
        return key in self._values

    def copy(self) -> Facts:
        new = Facts()
        new._values = dict(self._values)
        return new

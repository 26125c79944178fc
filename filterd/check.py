"""What a check is.

A check is one small class.  It has a `name`, the SMTP `stage` at which its data first exists,
the `symbols` it can emit with their default scores, and a `Settings` dataclass that declares
(and so validates) its section of the configuration, ``[checks.<name>]``.  Its `run` method looks
at the transaction and yields what it found:

- `Finding` -- a named symbol with a short human reason.  The score normally comes from the
  score table (the symbol's default, overridden by ``[scores]`` in the config); a check whose
  score is computed (a classifier's spamicity, a reputation ratio) passes ``score=`` itself.
- a decision from `filterd.replies` (`Reject`, `TempFail`, `Discard`, `Quarantine`) -- ends the
  transaction early, so no later work is done.  At RCPT a decision applies to that recipient.
- `AddHeader` -- a header the check wants on the delivered message (Received-SPF, say).

A check never decides the final action: the pipeline adds the scores and the action table in the
config picks one.  Everything a check needs from outside (a resolver, Redis, clamd) is handed in,
so a unit test can pass a fake and an end-to-end test the real thing.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

from filterd.replies import Decision
from filterd.settings import setting

if TYPE_CHECKING:
    from filterd.config import Config
    from filterd.pipeline import Verdict
    from filterd.services import Services
    from filterd.transaction import Transaction


class Stage(enum.IntEnum):
    """The SMTP stages, in protocol order; a check runs at the first stage where its data exists."""

    CONNECT = 1
    HELO = 2
    MAIL_FROM = 3
    RCPT = 4
    HEADERS = 5  # headers known; run first at end of message (the milter takes no end-of-headers event)
    EOM = 6  # end of message: the whole message is known

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


Output = Finding | AddHeader | Decision

# Symbols the pipeline itself emits, about the checks rather than the message's content.
# TIME_BUDGET scores: a message that makes the checks slow was probably built to (deeply nested
# MIME, pathological HTML), and the content checks it made us skip cannot score it any more.
PIPELINE_SYMBOLS: Mapping[str, float] = {
    "CHECK_ERROR": 0.0,  # a check failed and was skipped (fail-open)
    "TIME_BUDGET": 3.0,  # the message's CPU budget was spent; names the check that crossed it
    "TIME_BUDGET_SKIPPED": 0.0,  # an optional content check not run because the budget was spent
    "INTERNAL_ERROR": 0.0,  # filterd's own milter path failed; the message was delivered anyway
    "TOO_MANY_HEADERS": 3.0,  # more header fields than [milter] max_headers
}


@dataclass(frozen=True)
class CheckSettings:
    """Settings every check has.  A check's own `Settings` subclasses this and adds fields."""

    enabled: bool = setting(True, "run this check")
    on_error: Literal["open", "closed"] = setting(
        "open", 'when the check fails: "open" skips it and says so in the report, "closed" tempfails (4xx)'
    )


class Check:
    """Base class of every check.  Subclasses set the class attributes and implement `run`."""

    name: ClassVar[str]
    stage: Stage  # a class attribute; a check whose stage depends on its settings sets it in __init__
    symbols: ClassVar[Mapping[str, float]]
    directions: ClassVar[frozenset[Direction]] = frozenset({Direction.INBOUND})
    Settings: ClassVar[type[CheckSettings]] = CheckSettings
    description: ClassVar[str] = ""
    needs_body: ClassVar[bool] = False  # True: skipped when the message is over max_scan_bytes
    # True: runs after the other checks of its stage, so it sees their findings and the score so
    # far (a content-gated greylist at end of message).
    after_scoring: ClassVar[bool] = False
    # True: the check only adds scores from the content (rules, the classifier), so it may be
    # skipped, with TIME_BUDGET_SKIPPED, once the message's CPU budget ([milter] cpu_budget) is
    # spent.  Checks whose absence changes another's result (DKIM for DMARC) or that protect
    # (antivirus, signing) keep False and always run.
    optional_content: ClassVar[bool] = False

    def __init__(self, settings: CheckSettings, config: Config, services: Services) -> None:
        self.settings = settings
        self.config = config
        self.services = services

    def run(self, tx: Transaction) -> Iterable[Output]:
        """Look at the transaction and yield findings, headers or one decision."""
        raise NotImplementedError

    def after_verdict(self, tx: Transaction, verdict: Verdict) -> None:
        """Called once the final verdict of a message is known (reputation counters learn here).

        The pipeline calls it for the checks of the message's direction, after the action was
        chosen; an exception here is logged and never changes the verdict."""

    def can_decide(self) -> bool:
        """Could this check, as configured, refuse or hold a message (a fail-closed error included)?

        When no check at MAIL FROM or RCPT could, the milter tells Postfix not to wait for its answer
        there: two round trips less per message."""
        return self.settings.on_error == "closed" or self.decides()

    def decides(self) -> bool:
        """Could `run` yield a decision with these settings?  Override only when sure it cannot."""
        return True

    def close(self) -> None:
        """Release what the check holds (connections, files) when the pipeline is replaced."""

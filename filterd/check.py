"""What a check is.

A check is one small class.  It has a `name`, the SMTP `stage` at which its data first exists,
the `symbols` it can emit with their default scores, and a `Settings` dataclass that declares
(and so validates) its section of the configuration, ``[checks.<name>]``.  It declares the
`Fact`s it `provides` and `requires` (DKIM's results, the score so far), and the registry orders
the checks of a stage from those (`filterd.registry`).  Its `run` method looks at the transaction
and yields what it found:

- `Finding` -- a named symbol with a short human reason.  The score normally comes from the
  score table (the symbol's default, overridden by ``[scores]`` in the config); a check whose
  score is computed (a classifier's spamicity, a reputation ratio) passes ``score=`` itself.
- a decision (`Reject`, `TempFail`, `Discard`, `Quarantine`) -- ends the transaction early, so
  no later work is done.  At RCPT a decision applies to that recipient.
- `AddHeader` -- a header the check wants on the delivered message (Received-SPF, say).

A check never decides the final action: the driver adds the scores and the action table in the
config picks one.  A check is built from a `CheckContext`: its own settings, the few site facts
checks need (`Site`), the score table and the services (a resolver, Redis, clamd) -- never the
whole configuration -- so a unit test can pass a fake and an end-to-end test the real thing.

A `Finisher` is a check of the FINISH stage: it runs after the verdict (Authentication-Results,
DKIM signing), adds headers, and cannot change the verdict.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, TypeVar

# re-exported (the "X as X" form): what a check yields, imported from one place with `Check`
from filterd.results import AddHeader as AddHeader
from filterd.results import Direction as Direction
from filterd.results import Fact, Verdict
from filterd.results import Finding as Finding
from filterd.results import Output as Output
from filterd.results import Stage as Stage
from filterd.settings import setting

if TYPE_CHECKING:
    from filterd.dns import DnsSettings
    from filterd.services import Services
    from filterd.sqllookup import SqlLookup
    from filterd.transaction import Transaction


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


class Cost(enum.IntEnum):
    """What a check costs, for ordering checks that do not depend on each other: within a stage
    the cheaper run first, so a check that decides early (a deny list) saves the dearer ones."""

    LOCAL = 1  # memory and CPU only: lists, header sanity
    NETWORK = 2  # a round trip to DNS, Redis or clamd
    CONTENT = 3  # CPU over the whole content: rules, the classifier


# The score of the findings made so far in the message.  No check provides it: a check that
# requires it runs after every check of its stage that does not (content-gated greylisting,
# the classifier's autolearn), and reads it with `CheckContext.score_so_far`.
SCORE_SO_FAR = Fact[float]("score.so_far")


@dataclass(frozen=True)
class Site:
    """The few site-wide facts checks need, from ``[network]``, ``[milter]``, ``[redis]`` and
    ``[actions]``: a check is handed these, not the whole configuration."""

    hostname: str = ""  # [network] hostname; "" means the name Postfix announces, else the FQDN
    static_local_domains: tuple[str, ...] = ()  # [network] local_domains
    internal_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    key_prefix: str = "filterd:"  # of every Redis key
    max_scan_bytes: int = 10 * 1024 * 1024
    oversize_action: str = "reject"
    reject_score: float = 15.0  # [actions] reject
    sql: SqlLookup | None = None  # [sql]: PostfixAdmin's domains join the static ones

    @property
    def local_domains(self) -> tuple[str, ...]:
        """Our mail domains: [network] local_domains, and with [sql] PostfixAdmin's (cached, so
        reading this per message costs no query; see filterd.sqllookup)."""
        if self.sql is None:
            return self.static_local_domains
        return self.sql.local_domains()


class ScoreTable:
    """Every symbol's score: its check's default, unless ``[scores]`` overrides it."""

    def __init__(self, defaults: Mapping[str, float], overrides: Mapping[str, float]) -> None:
        self.defaults = defaults
        self.overrides = overrides

    def of(self, symbol: str) -> float:
        if symbol in self.overrides:
            return self.overrides[symbol]
        return self.defaults.get(symbol, 0.0)

    def of_finding(self, finding: Finding) -> float:
        """A finding's score: its own when the check computed one, else the table's."""
        return finding.score if finding.score is not None else self.of(finding.symbol)

    def total(self, findings: Iterable[Finding]) -> float:
        return round(sum(self.of_finding(f) for f in findings), 3)

    def is_overridden(self, symbol: str) -> bool:
        return symbol in self.overrides


S = TypeVar("S", bound=CheckSettings)


@dataclass(frozen=True)
class CheckContext(Generic[S]):
    """What one check is built from."""

    settings: S
    site: Site
    scores: ScoreTable
    services: Services
    dns: DnsSettings
    # another check's settings by name, for the two checks that share a section's files
    # (recipient_allowed reads recipient_lists', auth_reputation reads reputation's)
    settings_of: Callable[[str], Any]

    def score_so_far(self, tx: Transaction) -> float:
        """The total of the findings made so far (for a check that requires SCORE_SO_FAR)."""
        return self.scores.total(tx.findings)


class Check:
    """Base class of every check.  Subclasses set the class attributes and implement `run`."""

    name: ClassVar[str]
    stage: Stage  # a class attribute; a check whose stage depends on its settings sets it in __init__
    symbols: ClassVar[Mapping[str, float]]
    directions: ClassVar[frozenset[Direction]] = frozenset({Direction.INBOUND})
    Settings: ClassVar[type[CheckSettings]] = CheckSettings
    description: ClassVar[str] = ""
    needs_body: ClassVar[bool] = False  # True: skipped when the message is over max_scan_bytes
    # The run order within a stage comes from these (filterd.registry): a check runs after the
    # checks that provide what it requires, after the checks it names in `after`, and otherwise
    # cheaper first.  `requires` may name SCORE_SO_FAR: then it runs after every check of its
    # stage that does not.
    provides: ClassVar[tuple[Fact[Any], ...]] = ()
    requires: ClassVar[tuple[Fact[Any], ...]] = ()
    after: ClassVar[tuple[str, ...]] = ()  # names of checks to run after, with the reason beside
    cost: ClassVar[Cost] = Cost.LOCAL
    # True: the check only adds scores from the content (rules, the classifier), so it may be
    # skipped, with TIME_BUDGET_SKIPPED, once the message's CPU budget ([milter] cpu_budget) is
    # spent.  Checks whose absence changes another's result (DKIM for DMARC) or that protect
    # (antivirus, signing) keep False and always run.
    optional_content: ClassVar[bool] = False

    def __init__(self, ctx: CheckContext[Any]) -> None:
        self.ctx = ctx
        self.settings: Any = ctx.settings  # the check's own `Settings` class
        self.site = ctx.site
        self.services = ctx.services

    def run(self, tx: Transaction) -> Iterable[Output]:
        """Look at the transaction and yield findings, headers or one decision."""
        raise NotImplementedError

    def after_verdict(self, tx: Transaction, verdict: Verdict) -> None:
        """Called once the final verdict of a message is known (reputation counters learn here).

        The driver calls it for the checks of the message's direction, after the action was
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


class Finisher(Check):
    """A check of the FINISH stage: it runs once the verdict is known, on a message that is
    delivered or held (not one refused or discarded), and adds headers or a signature.

    It cannot change the verdict: it yields headers, and findings that explain what it did
    (shown in the report and the log line with no score).  When it fails, its `on_error` policy
    applies as for any check ("closed" tempfails: an admin may prefer no mail to unsigned mail)."""

    stage = Stage.FINISH

    def decides(self) -> bool:
        return False

    def run(self, tx: Transaction) -> Iterable[Output]:
        raise TypeError(f"{self.name} is a finisher: the driver calls finish()")

    def finish(self, tx: Transaction, verdict: Verdict) -> Iterable[AddHeader | Finding]:
        """The headers to add to the message, given its verdict."""
        raise NotImplementedError

"""Reputation checks: score a message by what earlier messages of its client and domains were.

`Reputation` runs at MAIL FROM, when the client, HELO and sender are known (and an SPF pass, when
the SPF check ran before it), so the greylist check at RCPT can see whether the client is
trusted.  `AuthReputation` runs at end of message for the domains DKIM authenticated, which only
exist then.  Both read their counters in one round trip.  `Reputation.after_verdict` counts the
message's final verdict for all its entities, also in one round trip.  The counters and the
scoring rule are documented in `filterd.reputation`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from filterd.auth.results import DKIM, SPF
from filterd.check import Check, CheckContext, Cost, Finding, Output, ScoreTable, Stage
from filterd.keys import Keys
from filterd.redisstate import RedisCheckSettings, RedisGuard
from filterd.reputation import (
    Entity,
    ReputationSettings,
    ReputationStore,
    assess,
    authenticated_domains,
    category_of,
    entities_of,
    message_ids,
)
from filterd.settings import setting
from filterd.transaction import Transaction

if TYPE_CHECKING:
    from filterd.pipeline import Verdict

_KIND_SYMBOL = {"ip": "IP", "net": "NET", "helo": "HELO", "from": "FROM", "auth": "AUTH"}
_TRUSTED = {"ip": "REP_CLIENT_TRUSTED", "net": "REP_CLIENT_TRUSTED", "auth": "REP_AUTH_TRUSTED"}


def _findings(
    scores: ScoreTable,
    settings: ReputationSettings,
    entities: Sequence[Entity],
    store: ReputationStore,
    now: float,
) -> Iterable[Finding]:
    trusted_marked: set[str] = set()
    for entity, counts in zip(entities, store.read(entities, now), strict=True):
        verdict = assess(counts, settings)
        if verdict is None:
            continue
        symbol = f"REP_{_KIND_SYMBOL[entity.kind]}_{verdict.suffix}"
        score = round(scores.of(symbol) * verdict.strength, 3)
        yield Finding(symbol, f"{entity}: {counts} in {settings.window_days} days", score=score)
        marker = _TRUSTED.get(entity.kind)
        if verdict.trusted and marker and marker not in trusted_marked:
            trusted_marked.add(marker)
            yield Finding(marker, f"{entity}: ham share at least {settings.trusted_ratio:g} ({counts})")


class Reputation(Check):
    name = "reputation"
    stage = Stage.MAIL_FROM
    requires = (SPF,)  # an SPF-pass domain is scored here
    cost = Cost.NETWORK
    description = "verdict history of the client IP, network, HELO domain, sender and SPF-pass domain"
    symbols = {
        "REP_IP_BAD": 3.0,
        "REP_IP_GOOD": -1.5,
        "REP_NET_BAD": 2.0,
        "REP_NET_GOOD": -1.0,
        "REP_HELO_BAD": 1.0,
        "REP_HELO_GOOD": -0.5,
        "REP_FROM_BAD": 1.5,
        "REP_FROM_GOOD": -0.3,  # the claim is forgeable: good history of a claim is worth little
        "REP_AUTH_BAD": 2.5,
        "REP_AUTH_GOOD": -2.5,
        "REP_CLIENT_TRUSTED": 0.0,
        "REP_AUTH_TRUSTED": 0.0,
        "REPUTATION_REDIS_ERROR": 0.0,
    }
    Settings = ReputationSettings
    clock: Callable[[], float] = staticmethod(time.time)

    def __init__(self, ctx: CheckContext[ReputationSettings]) -> None:
        super().__init__(ctx)
        settings = ctx.settings
        self.keys = Keys(ctx.site.key_prefix)
        self.guard = RedisGuard(self.name, "REPUTATION_REDIS_ERROR", settings)

    @property
    def store(self) -> ReputationStore:
        assert isinstance(self.settings, ReputationSettings)
        return ReputationStore(self.services.redis, self.keys, self.settings)

    def run(self, tx: Transaction) -> Iterable[Output]:
        assert isinstance(self.settings, ReputationSettings)
        settings = self.settings
        entities = entities_of(tx, settings, auth=False)
        entities += [Entity("auth", d) for d in sorted(authenticated_domains(tx).get("spf", ()))]
        ok, findings = self.guard.call(
            lambda: list(_findings(self.ctx.scores, settings, entities, self.store, self.clock()))
        )
        if not ok:
            yield self.guard.outcome()
            return
        yield from findings

    def after_verdict(self, tx: Transaction, verdict: Verdict) -> None:
        assert isinstance(self.settings, ReputationSettings)
        category = category_of(verdict, self.settings)
        if category is None:
            return
        entities = entities_of(tx, self.settings)
        ids = message_ids(tx, verdict)
        ok, _ = self.guard.call(lambda: self.store.record(entities, category, self.clock(), ids))
        if not ok:
            # the verdict is already taken; a lost count is logged by the guard and not retried
            return


@dataclass(frozen=True)
class AuthReputationSettings(RedisCheckSettings):
    enabled: bool = setting(True, "score DKIM-pass domains too, when [checks.reputation] is on")


class AuthReputation(Check):
    name = "reputation_auth"
    stage = Stage.EOM
    requires = (SPF, DKIM)  # the authenticated domains
    cost = Cost.NETWORK
    description = "verdict history of the DKIM-pass domains (settings: [checks.reputation])"
    symbols = {"REPUTATION_AUTH_REDIS_ERROR": 0.0}
    Settings = AuthReputationSettings
    clock: Callable[[], float] = staticmethod(time.time)

    def __init__(self, ctx: CheckContext[AuthReputationSettings]) -> None:
        super().__init__(ctx)
        settings = ctx.settings
        self.keys = Keys(ctx.site.key_prefix)
        self.guard = RedisGuard(self.name, "REPUTATION_AUTH_REDIS_ERROR", settings)
        self.reputation: Any = ctx.settings_of("reputation")

    def run(self, tx: Transaction) -> Iterable[Output]:
        if not self.reputation.enabled:
            return
        auth = authenticated_domains(tx)
        domains = sorted(auth.get("dkim", set()) - auth.get("spf", set()))  # SPF ones: scored at MAIL FROM
        if not domains:
            return
        entities = [Entity("auth", d) for d in domains]
        store = ReputationStore(self.services.redis, self.keys, self.reputation)
        ok, findings = self.guard.call(
            lambda: list(_findings(self.ctx.scores, self.reputation, entities, store, self.clock()))
        )
        if not ok:
            yield self.guard.outcome()
            return
        yield from findings

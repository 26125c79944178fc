"""The naive-Bayes classifier (DSPAM's role in the old stack): spamicity -> score, and signatures.

At end of message the check tokenizes the message (filterd.bayes.tokenizer), scores it with the
model (filterd.bayes.classifier: Robinson/Fisher chi-square combining), and reports one of
BAYES_SPAM / BAYES_UNSURE / BAYES_HAM with a score read from the configured `bands` and the
strongest tokens as the reason.

It then adds a new id as `X-Filterd-Signature` and, once the message is known to be delivered,
stores the message's digest and token buckets in Redis under that id for `signature_days`, so a
user's "this is spam" (or "not spam") later retrains the classifier without the original message:
`filterctl train spam --signature ID`.  Only a delivered message (accepted, tagged or
quarantined) can ever be reported by a user, so a rejected, tempfailed or discarded one stores
nothing: its signature would cost Redis memory for nothing, and a sender could fill Redis with
mail that is refused anyway.  The verdict is known after this check has run (it is the last at end
of message, and the action depends on the total), so the signature waits in `after_verdict`.  The
message does not wait for the write: a background thread sends the queued signatures in batches
(filterd.bayes.signatures).  With on_error = "closed" the write is made before answering (a message
is never accepted with a signature that was not stored) and deleted again if the message is not
delivered.  The training modes and autolearn also train here (they need storage = "redis").

On by default, with the shipped model and `storage = "file"`: it needs nothing but the model file,
and uses Redis only when an admin turns on signatures or the shared model (as every Redis-backed
check, it does not assume a Redis exists).

Redis failure: the shared handling of the Redis-backed checks (filterd.redisstate.RedisGuard).  With
on_error = "open" (the default) the message is classified with the model in memory (the file, or
the shared model as last synced), nothing is stored, no signature header is added, and
BAYES_REDIS_ERROR says why; after a failure Redis is left alone for `redis_retry` seconds, so a dead
Redis costs one timeout, not one per message.  That the check is classifying from the file is
logged once.  With on_error = "closed" the message is tempfailed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypeVar

from filterd.bayes.params import Params
from filterd.bayes.signatures import PendingSignature, PerMessage, SignatureWriter
from filterd.check import (
    SCORE_SO_FAR,
    AddHeader,
    Check,
    CheckContext,
    CheckSettings,
    Cost,
    Finding,
    Output,
    Stage,
)
from filterd.redisstate import RedisCheckSettings, RedisGuard, redis_errors
from filterd.results import Action, Verdict
from filterd.settings import ConfigError, not_negative, positive, setting
from filterd.transaction import Transaction

if TYPE_CHECKING:  # numpy and scikit-learn load when the check is built, not when filterctl starts
    import numpy as np

    from filterd.bayes.classifier import Result
    from filterd.bayes.model import Model
    from filterd.bayes.peruser import UserDictionaries

log = logging.getLogger("filterd.bayes")
T = TypeVar("T")

SIGNATURE_HEADER = "X-Filterd-Signature"
UNTRAINED_RECHECK = 60.0  # per_user: seconds a user found with too little training is not looked up
UNTRAINED_USERS_KEPT = 10_000


def check_bands(bands: tuple[tuple[float, ...], ...]) -> str | None:
    if not bands:
        return "at least one [spamicity, score] band is needed"
    lows = []
    for band in bands:
        if len(band) != 2 or not 0.0 <= band[0] <= 1.0:
            return f"{list(band)} is not [spamicity from 0 to 1, score]"
        lows.append(band[0])
    if lows != sorted(lows) or len(set(lows)) != len(lows):
        return "bands must be in increasing order of spamicity"
    if lows[0] != 0.0:
        return "the first band must start at spamicity 0.0"
    return None


def check_unit(value: float) -> str | None:
    return None if 0.0 <= value <= 1.0 else "expected a number from 0 to 1"


@dataclass(frozen=True)
class BayesSettings(CheckSettings):
    # On by default: the shipped model classifies from the first message, from its file alone.
    enabled: bool = setting(True, "run this check (the shipped model works from the first message)")
    model: str = setting(
        "", "the model file (.npz); empty: the model shipped with filterd (models/bayes.npz)"
    )
    # "file" by default: nothing but the model file is needed, as no Redis-backed check is on until
    # an admin has a Redis for it.
    storage: Literal["redis", "file"] = setting(
        "file",
        '"redis": hosts share the model\'s training log through [redis] (the file is the seed); '
        '"file": `filterctl train` rewrites the model file and filterd reloads it',
    )
    train_mode: Literal["toe", "teft", "tum"] = setting(
        "toe",
        "toe: train on error only (filterctl train skips messages already classified right); "
        "teft: train everything seen (filterd learns each message as classified); "
        "tum: teft until `mature_after` messages of each class are trained, then toe",
    )
    mature_after: int = setting(1000, "tum: messages of each class after which training is toe", positive)
    spam_cutoff: float = setting(
        0.99,
        "spamicity at or above which a message is spam (BAYES_SPAM; FP/FN in `filterctl eval`)",
        check_unit,
    )
    ham_cutoff: float = setting(
        0.45,
        "spamicity below which a message is ham (BAYES_HAM); between the cutoffs: BAYES_UNSURE",
        check_unit,
    )
    bands: tuple[tuple[float, ...], ...] = setting(
        ((0.0, -2.0), (0.01, -1.0), (0.2, 0.0), (0.8, 1.0), (0.99, 3.0), (0.9999, 4.5)),
        "[spamicity, score] pairs in increasing order: a message scores the band its spamicity reaches",
        check_bands,
    )
    min_learned: int = setting(
        20,
        "fewer spam or ham messages trained than this: score 0 and say BAYES_UNTRAINED",
        not_negative,
    )
    signature: bool = setting(
        False, f"add {SIGNATURE_HEADER} and keep the message's tokens in Redis for retraining (needs [redis])"
    )
    signature_days: float = setting(14.0, "days a signature's tokens are kept", positive)
    log_max: int = setting(
        100_000, "storage = redis: training log entries kept (older ones: in the snapshot)", positive
    )
    sync_interval: float = setting(
        2.0, "seconds between checks for a new model file or shared training", positive
    )
    redis_retry: float = setting(10.0, "seconds Redis is left alone after it failed", not_negative)
    autolearn: bool = setting(
        False, "train messages the other checks scored far past the thresholds (storage = redis)"
    )
    autolearn_spam: float = setting(12.0, "autolearn as spam at or above this score from the other checks")
    autolearn_ham: float = setting(-2.0, "autolearn as ham at or below this score from the other checks")
    autolearn_ratio: float = setting(
        3.0,
        "balance guard: never autolearn a class that already has this many times the other's messages",
        positive,
    )
    per_user: bool = setting(
        False,
        "layer each user's own dictionary (trained by their reports and `filterctl train --user`) on the "
        "global model for mail to that one user (needs [redis]; docs/bayes.md)",
    )
    per_user_weight: float = setting(
        10.0, "per_user: how many of the global model's messages one of the user's own counts as", positive
    )
    min_user_learned: int = setting(
        10, "per_user: the user's dictionary is used once it has this many spam and ham", not_negative
    )
    per_user_days: float = setting(
        180.0, "per_user: a user's dictionary is deleted this many days after they last trained", positive
    )
    per_user_max_messages: int = setting(
        1000, "per_user: messages a user's dictionary holds at most (new ones beyond are not added)", positive
    )
    robs: float = setting(Params.robs, "Robinson's s: how many messages the prior is worth", positive)
    robx: float = setting(Params.robx, "Robinson's x: the probability of a token never seen", check_unit)
    min_dev: float = setting(Params.min_dev, "tokens with |f - 0.5| below this are not evidence", check_unit)
    max_clues: int = setting(Params.max_clues, "at most this many of the strongest tokens decide", positive)
    prior_messages: float = setting(
        Params.prior_messages, "how many messages the prior token rate is worth, per class", positive
    )
    prior_rate: float = setting(
        Params.prior_rate, "a token's rate in a class before any of its messages", check_unit
    )


def params_of(settings: BayesSettings) -> Params:
    s = settings
    return Params(s.robs, s.robx, s.min_dev, s.max_clues, s.prior_messages, s.prior_rate)


class Bayes(Check):
    name = "bayes"
    stage = Stage.EOM
    requires = (SCORE_SO_FAR,)  # autolearn reads the score of the other checks
    cost = Cost.CONTENT
    needs_body = True
    optional_content = True
    description = "naive-Bayes classifier (chi-square combining), signatures for retraining"
    symbols = {
        "BAYES_SPAM": 3.0,
        "BAYES_UNSURE": 0.0,
        "BAYES_HAM": -1.0,
        "BAYES_UNTRAINED": 0.0,
        "BAYES_REDIS_ERROR": 0.0,
        "BAYES_AUTOLEARN": 0.0,
    }
    Settings = BayesSettings

    def __init__(self, ctx: CheckContext[BayesSettings]) -> None:
        super().__init__(ctx)
        settings = ctx.settings
        from filterd.bayes.model import ModelError
        from filterd.bayes.store import ModelHolder, model_path

        self.settings: BayesSettings = settings
        self.learns = settings.train_mode in ("teft", "tum") or settings.autolearn
        if self.learns and settings.storage != "redis":
            raise ConfigError(
                "checks.bayes.storage",
                'train_mode "teft"/"tum" and autolearn train inside filterd, which needs storage = "redis"',
            )
        if settings.ham_cutoff > settings.spam_cutoff:
            raise ConfigError("checks.bayes.ham_cutoff", "must not be above spam_cutoff")
        self.params = params_of(settings)
        try:
            self.holder = ModelHolder(
                model_path(settings.model),
                settings.storage,
                lambda: ctx.services.redis,
                ctx.site.key_prefix,
                settings.log_max,
                settings.sync_interval,
            )
        except ModelError as exc:  # a damaged or incompatible file must stop the start, loudly
            raise ConfigError("checks.bayes.model", str(exc)) from exc
        # the failure handling every Redis-backed check shares: back-off, and the fail-open symbol
        self.guard = RedisGuard(
            self.name,
            "BAYES_REDIS_ERROR",
            RedisCheckSettings(on_error=settings.on_error, redis_retry_after=settings.redis_retry),
        )
        self._outage_logged = False
        self._failures = 0  # Redis failures so far: a message that saw one says so, whatever the back-off
        self.signatures = SignatureWriter(lambda: self.holder.client().redis, self._redis_failed)
        self.pending: PerMessage[PendingSignature] = PerMessage()
        self._user_dictionaries: UserDictionaries | None = None  # per_user: made at first use
        self._untrained_users: dict[str, float] = {}  # user -> until when not to look them up

    # -- the check ---------------------------------------------------------------------------

    def run(self, tx: Transaction) -> Iterable[Output]:
        s = self.settings
        failures = self._failures
        self._guarded(lambda: self.holder.refresh(follow_shared=self._redis_usable()))
        model = self.holder.model
        msg = tx.message
        tokens, buckets = model.features(msg)
        untrained = min(model.nspam, model.nham) < s.min_learned
        layered = None
        if s.per_user and not untrained and self._redis_usable():
            layered = self._guarded(lambda: self._per_user(tx, model, tokens, buckets))
        if layered is not None:
            result, note = layered  # scored once: with the user's dictionary
        else:
            result, note = model.classify_tokens(tokens, buckets, self.params), ""
        if untrained:
            yield Finding(
                "BAYES_UNTRAINED",
                f"model has {model.nspam} spam and {model.nham} ham, fewer than {s.min_learned} "
                f"(spamicity {result.spamicity:.4f} not scored)",
            )
        else:
            yield self._finding(result, note)
        needs_redis = s.signature or self.learns
        if needs_redis and self._redis_usable():
            from filterd.bayes.model import message_digest

            stored = self._guarded(
                lambda: self._store(tx, model, result, message_digest(msg), buckets, untrained)
            )
            if stored is not None:
                yield from stored
        if (needs_redis or s.per_user or s.storage == "redis") and (
            not self._redis_usable() or self._failures != failures
        ):
            yield Finding(
                "BAYES_REDIS_ERROR",
                f"redis unavailable ({self.guard.last_error}): classified with the model in memory, nothing stored",
            )

    def _per_user(
        self, tx: Transaction, model: Model, tokens: Sequence[str], buckets: np.ndarray
    ) -> tuple[Result, str] | None:
        """The message scored with its one user's dictionary layered on the global model, and a
        note for the reason; None (the global score stands) for several users or a user who has not
        trained enough."""
        from filterd.bayes.peruser import classify_layered, single_user

        user = single_user(tx.rcpts)
        if user is None:
            return None
        s = self.settings
        now = time.monotonic()
        if self._untrained_users.get(user, 0.0) > now:
            return None
        counts = self._users().lookup(user, buckets, s.min_user_learned)
        if min(counts.nspam, counts.nham) < s.min_user_learned:
            # most users never train: remember it a while rather than ask Redis for every message
            if len(self._untrained_users) >= UNTRAINED_USERS_KEPT:
                self._untrained_users.clear()
            self._untrained_users[user] = now + UNTRAINED_RECHECK
            return None
        result = classify_layered(model.counts, buckets, tokens, counts, s.per_user_weight, self.params)
        return result, (
            f"; with {user}'s dictionary ({counts.nspam} spam, {counts.nham} ham, weight {s.per_user_weight:g})"
        )

    def _users(self) -> UserDictionaries:
        from filterd.bayes.peruser import UserDictionaries

        if self._user_dictionaries is None:
            s = self.settings
            self._user_dictionaries = UserDictionaries(
                self.ctx.services.redis,
                self.ctx.site.key_prefix,
                int(s.per_user_days * 86400),
                s.per_user_max_messages,
            )
        return self._user_dictionaries

    def _finding(self, result: Result, note: str = "") -> Finding:
        s = self.settings
        p = result.spamicity
        symbol = "BAYES_SPAM" if p >= s.spam_cutoff else "BAYES_HAM" if p < s.ham_cutoff else "BAYES_UNSURE"
        # the band's score, unless [scores] names the symbol: then the admin's fixed score applies
        score = (
            None
            if self.ctx.scores.is_overridden(symbol)
            else next(sc for low, sc in reversed(s.bands) if p >= low)
        )
        clues = ", ".join(f"{c.token}={c.prob:.3f}" for c in result.clues[:6])
        return Finding(
            symbol,
            f"spamicity {p:.4f} from {result.n_tokens} tokens; strongest: {clues}{note}",
            score=score,
            value=p,  # unrounded, for [scoring] mode = "learned" (filterd.combination)
        )

    def _store(
        self,
        tx: Transaction,
        model: Model,
        result: Result,
        digest: bytes,
        buckets: np.ndarray,
        untrained: bool,
    ) -> list[Output]:
        out: list[Output] = []
        label, why = self._learn_label(tx, model, result, untrained)
        if label is not None:
            change = self.holder.connect().train([(digest, buckets, label)])[0]
            state = f"learned as {label}" if change.changed else f"already trained as {change.before}"
            out.append(Finding("BAYES_AUTOLEARN", f"{state} ({why})"))
        elif why:
            out.append(Finding("BAYES_AUTOLEARN", why))
        if self.settings.signature:
            ttl = int(self.settings.signature_days * 86400)
            client = self.holder.client()
            sig_id, key, value = client.signature_record(digest, buckets)
            stored = self.settings.on_error == "closed"
            if stored:  # accept no message whose signature is not stored
                client.redis.set(key, value, ex=ttl)
            self.pending.put(tx, PendingSignature(key, value, ttl, stored))
            out.append(AddHeader(SIGNATURE_HEADER, sig_id))
        return out

    def after_verdict(self, tx: Transaction, verdict: Verdict) -> None:
        """Store the message's signature if it is delivered; forget (or delete) it otherwise."""
        pending = self.pending.pop(tx)
        if pending is None:
            return
        delivered = verdict.action in (
            Action.ACCEPT,
            Action.ADD_HEADER,
            Action.REWRITE_SUBJECT,
            Action.QUARANTINE,
        )
        if delivered and not pending.stored:
            self.signatures.submit(pending.key, pending.value, pending.ttl)
        elif not delivered and pending.stored:
            self._guarded(lambda: self.holder.client().redis.delete(pending.key))

    def close(self) -> None:
        self.signatures.close()  # send what is queued
        super().close()

    def _learn_label(
        self, tx: Transaction, model: Model, result: Result, untrained: bool
    ) -> tuple[str | None, str]:
        """What filterd itself trains this message as, and why (or why not)."""
        s = self.settings
        mode = s.train_mode
        if mode == "tum" and min(model.nspam, model.nham) >= s.mature_after:
            mode = "toe"
        if mode in ("teft", "tum"):
            if untrained:
                return None, ""  # an untrained model's verdict is noise: learning it would teach noise
            return ("spam" if result.spamicity >= 0.5 else "ham"), f"train_mode {mode}"
        if not s.autolearn:
            return None, ""
        others = sum(self.ctx.scores.of_finding(f) for f in tx.findings if not f.symbol.startswith("BAYES_"))
        if others >= s.autolearn_spam:
            label, mine, theirs = "spam", model.nspam, model.nham
        elif others <= s.autolearn_ham:
            label, mine, theirs = "ham", model.nham, model.nspam
        else:
            return None, ""
        if mine >= s.autolearn_ratio * max(theirs, 1) and mine >= s.min_learned:
            guard = f"{mine} {label} >= {s.autolearn_ratio:g} x {theirs}"
            return None, f"not autolearned as {label}: balance guard ({guard})"
        return label, f"autolearn: other checks scored {others:g}"

    # -- Redis failure policy ----------------------------------------------------------------

    def _redis_usable(self) -> bool:
        return self.guard.available

    def _guarded(self, action: Callable[[], T]) -> T | None:
        """Run a Redis-backed action; a Redis failure follows on_error (fail-closed raises, for the
        pipeline's tempfail), fail-open returns None and the guard backs off."""
        try:
            result = action()
        except redis_errors() as exc:
            if self.settings.on_error == "closed":
                raise
            self._redis_failed(exc)
            return None
        return result

    def _redis_failed(self, exc: Exception) -> None:
        """Back off (called from the signature thread too); say once what the check does meanwhile
        (the guard's own warning repeats at each retry)."""
        self.guard.failed(exc)
        self._failures += 1
        if not self._outage_logged:
            self._outage_logged = True
            log.warning(
                "bayes: redis unavailable: classifying with the model %s (nothing stored, no signatures) "
                "until it answers again",
                "file " + str(self.holder.path) if self.settings.storage == "file" else "in memory",
            )

    def config_warnings(self) -> list[str]:
        """What `filterctl config check` should say about this check's setup."""
        path = self.holder.path
        if self.settings.storage == "file" and not path.exists():
            return [
                f"checks.bayes: no model at {path}: every message scores BAYES_UNTRAINED until one is "
                "trained (filterctl train, see models/README.md)"
            ]
        return []

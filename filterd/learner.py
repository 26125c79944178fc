"""The learn worker: trains what users reported through `filterd-learn` (filterd/learnclient.py).

Reports wait in a Redis stream (`{prefix}learn:queue`: label, user, time, message).  The worker
reads it as a member of a consumer group, trains each report with the Bayes code's own `Trainer`
(filterd/bayes/training.py: the same idempotent, digest-keyed training as `filterctl train`, in
the configured `train_mode`), and only then acknowledges and deletes the entry.  A worker killed
between training and the acknowledgement gets the entry again when it restarts (its own pending
entries are read first; another worker's are claimed once idle `CLAIM_IDLE_MS`): training the
same message again as the same class changes nothing, so at-least-once delivery counts once.

Why a process of its own (`filterctl learn-worker`) rather than a thread of the daemon's parent:
training loads the model (numpy, 64 MB of counts) and with `storage = "file"` rewrites the model
file under the folder lock `filterctl train` takes; the daemon's parent is the supervisor that
restarts workers and reloads the configuration, and is kept small and always responsive.  Any
number of workers (on any hosts sharing the Redis) can run: the consumer group hands each report
to one of them.

Every report, once trained, leaves a record in `{prefix}learn:log` (a stream trimmed to about
`LOG_MAX` entries: user, label, outcome, message digest, when it was queued) and a count in the
hash `{prefix}learn:users` (field "LABEL:USER"): who taught the filter what.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from filterd.bayes.model import Model, message_digest
from filterd.bayes.peruser import UserDictionaries
from filterd.bayes.store import ModelHolder, load_or_empty
from filterd.bayes.training import Tally, Trainer
from filterd.learnclient import QUEUE_KEY
from filterd.message import Message

log = logging.getLogger("filterd.learn")

GROUP = "filterd-learners"
LOG_KEY = "learn:log"
USERS_KEY = "learn:users"
LOG_MAX = 100_000  # learn:log entries kept (approximately: MAXLEN ~)
BATCH = 100  # reports read, trained and saved at once (one model file write per batch)
BLOCK_MS = 2000  # how long one read waits for a new report
CLAIM_IDLE_MS = 60_000  # another consumer's unacknowledged report is taken over after this
LOCK_WAIT = 600.0  # seconds to wait for a `filterctl train` holding the model folder


@dataclass(frozen=True)
class Report:
    entry_id: str
    label: str
    user: str
    queued_at: str
    raw: bytes


@dataclass(frozen=True)
class Outcome:
    report: Report
    result: str  # learned, moved, unchanged, skipped; invalid or error (not trained)
    digest: str  # hex; empty when the report was invalid


def outcome_of(tally: Tally) -> str:
    """What training one message did, from the Trainer's tally."""
    for name in ("learned", "moved", "unchanged", "skipped"):
        if getattr(tally, name):
            return name
    return "unchanged"


@contextlib.contextmanager
def model_folder_lock(model: Path, wait: float = LOCK_WAIT) -> Iterator[None]:
    """The lock `filterctl train` takes (flock on the model's folder), waited for rather than
    refused: a report can wait for a long training to finish."""
    model.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(model.parent, os.O_RDONLY)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{model.parent} stayed locked by another trainer for {wait:.0f}s"
                    ) from None
                time.sleep(0.2)
        yield
    finally:
        os.close(fd)


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


class Learner:
    """Reads reports from the queue, trains them, acknowledges them, records who taught what."""

    def __init__(
        self,
        config: Any,
        redis: Any,
        consumer: str = "",
        model_path: Path | None = None,
        storage: str | None = None,
    ) -> None:
        from filterd.bayes.store import model_path as configured_path

        self.settings = config.check_settings("bayes")
        self.redis = redis
        prefix = config.redis.key_prefix
        self.queue_key = prefix + QUEUE_KEY
        self.log_key = prefix + LOG_KEY
        self.users_key = prefix + USERS_KEY
        self.consumer = consumer or socket.gethostname()
        self.storage = storage or self.settings.storage
        self.path = model_path or configured_path(self.settings.model)
        self.holder = ModelHolder(
            self.path, self.storage, lambda: redis, prefix, self.settings.log_max, self.settings.sync_interval
        )
        self._file_stat: tuple[int, int] | None = self._stat()
        self._group_ready = False
        # [checks.bayes] per_user: each report also trains its user's dictionary (filterd.bayes.peruser)
        self.users: UserDictionaries | None = None
        if self.settings.per_user:
            self.users = UserDictionaries(
                redis,
                prefix,
                int(self.settings.per_user_days * 86400),
                self.settings.per_user_max_messages,
            )
        self._user_items: list[tuple[str, bytes, np.ndarray, str | None]] = []

    # -- reading the queue -----------------------------------------------------------------

    def ensure_group(self) -> None:
        """The consumer group, created with the stream if need be; it starts at the first entry,
        so reports queued before any worker ever ran are trained too."""
        if self._group_ready:
            return
        try:
            self.redis.xgroup_create(self.queue_key, GROUP, id="0", mkstream=True)
        except Exception as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    def read(self, block_ms: int = BLOCK_MS) -> list[Report]:
        """The next reports: this consumer's own unacknowledged ones first (a restart after a crash),
        then another consumer's left idle too long, then new ones (waiting up to `block_ms`)."""
        self.ensure_group()
        own = self.redis.xreadgroup(GROUP, self.consumer, {self.queue_key: "0"}, count=BATCH)
        entries = _entries(own)
        gone = _deleted(own)
        if gone:  # deleted by hand while pending: nothing to train, and never to be read again
            self.redis.xack(self.queue_key, GROUP, *gone)
        if not entries:
            claimed = self.redis.xautoclaim(
                self.queue_key, GROUP, self.consumer, CLAIM_IDLE_MS, start_id="0-0", count=BATCH
            )
            entries = [e for e in claimed[1] if e is not None and e[1]] if claimed else []
        if not entries:
            new = self.redis.xreadgroup(
                GROUP, self.consumer, {self.queue_key: ">"}, count=BATCH, block=block_ms or None
            )
            entries = _entries(new)
        return [_report(entry_id, fields) for entry_id, fields in entries]

    # -- training --------------------------------------------------------------------------

    def train(self, reports: list[Report]) -> list[Outcome]:
        """Train the reports in the order they were made (a message moved into Junk and out again
        ends as ham), with one model write per batch when the model is a file."""
        if not reports:
            return []
        self._user_items = []
        if self.storage == "file":
            with model_folder_lock(self.path):
                model = self._file_model()
                outcomes = [self._guarded(model, None, r) for r in reports]
                if any(o.result in ("learned", "moved") for o in outcomes):
                    model.save(self.path)
                    self._file_stat = self._stat()
        else:
            shared = self.holder.connect()
            shared.sync()
            outcomes = [self._guarded(shared.model, shared, r) for r in reports]
        self._train_users()
        return outcomes

    def _train_users(self) -> None:
        """The reporting users' own dictionaries (per_user), every report, in report order, in one
        round trip.  After the global model: a Redis error here leaves the batch queued, and training
        it again changes neither (both are idempotent)."""
        if self.users is None or not self._user_items:
            return
        for (user, _digest, _buckets, label), change in zip(
            self._user_items, self.users.train(self._user_items), strict=True
        ):
            if change is None:
                log.warning("learn: %s's bayes dictionary is full: not learned as %s there", user, label)
        self._user_items = []

    def _guarded(self, model: Model, shared: Any, report: Report) -> Outcome:
        """One report trained; an exception its bytes cause is a bug, logged with the report and
        recorded as "error" -- not retried forever, which would stop every report behind it.
        Redis errors propagate: the batch stays queued and is retried."""
        from filterd.redisstate import redis_errors

        try:
            return self._train_one(model, shared, report)
        except redis_errors():
            raise
        except Exception:
            log.exception("learn: report %s (%s, user %s) failed", report.entry_id, report.label, report.user)
            return Outcome(report, "error", "")

    def _file_model(self) -> Model:
        """The model file as it is now: reloaded when someone else (`filterctl train`) rewrote it
        since our last write (the folder lock is held, so it cannot change under us)."""
        stat = self._stat()
        if stat != self._file_stat:
            self.holder.seed = load_or_empty(self.path)
            self._file_stat = stat
        return self.holder.seed

    def _train_one(self, model: Model, shared: Any, report: Report) -> Outcome:
        if report.label not in ("spam", "ham") or not report.raw:
            log.warning("learn: report %s is not usable (label %r), dropped", report.entry_id, report.label)
            return Outcome(report, "invalid", "")
        s = self.settings
        from filterd.checks.bayes import params_of

        trainer = Trainer(
            model,
            shared,
            report.label,
            mode=s.train_mode,
            params=params_of(s),
            spam_cutoff=s.spam_cutoff,
            ham_cutoff=s.ham_cutoff,
            mature_after=s.mature_after,
            min_learned=s.min_learned,
        )
        if self.users is not None and report.user:
            trainer.seen = []
        trainer.add_message(report.raw)
        trainer.flush()
        for digest_bytes, buckets in trainer.seen or ():
            self._user_items.append((report.user, digest_bytes, buckets, report.label))
        digest = message_digest(Message(report.raw)).hex()
        return Outcome(report, outcome_of(trainer.tally), digest)

    # -- acknowledging ---------------------------------------------------------------------

    def record(self, outcomes: list[Outcome]) -> None:
        """The learn log and the per-user counts, then XACK and XDEL, in one round trip.  Only
        after training: a report is never acknowledged before the model has it."""
        if not outcomes:
            return
        pipe = self.redis.pipeline(transaction=False)
        for o in outcomes:
            r = o.report
            pipe.xadd(
                self.log_key,
                {
                    "user": r.user,
                    "label": r.label,
                    "result": o.result,
                    "digest": o.digest,
                    "queued": r.entry_id,
                    "size": str(len(r.raw)),
                },
                maxlen=LOG_MAX,
                approximate=True,
            )
            if o.result in ("learned", "moved", "unchanged", "skipped"):
                pipe.hincrby(self.users_key, f"{r.label}:{r.user}", 1)
        ids = [o.report.entry_id for o in outcomes]
        pipe.xack(self.queue_key, GROUP, *ids)
        pipe.xdel(self.queue_key, *ids)
        pipe.execute()
        for o in outcomes:
            log.info(
                "learn: %s as %s for %s: %s (digest %s)",
                o.report.entry_id,
                o.report.label,
                o.report.user or "-",
                o.result,
                o.digest[:16] or "-",
            )

    def step(self, block_ms: int = BLOCK_MS) -> int:
        """Read, train and acknowledge one batch; how many reports it held."""
        reports = self.read(block_ms)
        self.record(self.train(reports))
        return len(reports)

    def run(self, stop: Callable[[], bool], once: bool = False) -> int:
        """Work until `stop()` says so (or, `once`, until the queue is empty); reports trained.

        A Redis or model error is logged and retried after a pause: the reports stay queued."""
        from filterd.redisstate import redis_errors

        retried: tuple[type[BaseException], ...] = (*redis_errors(), TimeoutError)
        done = 0
        pause = 0.5
        while not stop():
            try:
                n = self.step(0 if once else BLOCK_MS)
            except retried as exc:
                if once:
                    raise
                log.warning("learn: %s: %s; retrying in %.1fs", type(exc).__name__, exc, pause)
                time.sleep(pause)
                pause = min(pause * 2, 30.0)
                continue
            pause = 0.5
            done += n
            if once and n == 0:
                break
        return done

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns


def _entries(reply: Any) -> list[tuple[Any, Any]]:
    """[(id, fields)] out of an XREADGROUP reply (list or dict form, by redis-py protocol)."""
    if not reply:
        return []
    streams = reply.values() if isinstance(reply, dict) else (entries for _key, entries in reply)
    out: list[tuple[Any, Any]] = []
    for entries in streams:
        if isinstance(entries, list) and entries and isinstance(entries[0], list):
            entries = entries[0]  # RESP3 dict form: {key: [[entries]]}
        out.extend(e for e in entries if e[1])  # an entry deleted while pending comes back empty
    return out


def _deleted(reply: Any) -> list[Any]:
    """Ids of pending entries that were deleted from the stream (they come back without fields)."""
    if not reply:
        return []
    streams = reply.values() if isinstance(reply, dict) else (entries for _key, entries in reply)
    gone: list[Any] = []
    for entries in streams:
        if isinstance(entries, list) and entries and isinstance(entries[0], list):
            entries = entries[0]
        gone.extend(e[0] for e in entries if not e[1])
    return gone


def _report(entry_id: Any, fields: dict[Any, Any]) -> Report:
    get = {_text(k): v for k, v in fields.items()}
    raw = get.get("message", b"")
    return Report(
        entry_id=_text(entry_id),
        label=_text(get.get("label")),
        user=_text(get.get("user")),
        queued_at=_text(get.get("time")),
        raw=raw if isinstance(raw, bytes) else str(raw).encode(),
    )


def learn_log(redis: Any, key_prefix: str, count: int = 20) -> list[dict[str, str]]:
    """The last `count` learn events, newest first (for `filterctl learn-worker --log`)."""
    rows = redis.xrevrange(key_prefix + LOG_KEY, count=count)
    return [{"id": _text(i), **{_text(k): _text(v) for k, v in f.items()}} for i, f in rows]

"""Verdict counters and the last verdicts, kept in Redis so that several MX hosts add up.

Every verdict that is carried out -- the one logged line per message, or per refusal at MAIL FROM
or RCPT -- is counted once, from the driver (`record`).  The mail path only queues it (a few
microseconds, no I/O); a sender thread per worker writes the queue in batches, every 0.1 s or
200 verdicts, in one pipelined Redis round trip per batch:

- an hourly and a daily hash of counters (`COUNTERS`): ``received`` and exactly one of the
  outcomes (``accepted`` ... ``discarded``), so ``received`` is their sum; ``virus`` on top when
  clamd named a virus;
- per day, two sorted sets: the symbols of the verdicts (how many verdicts had each) and the
  sender domains of rejected mail;
- the last ``[stats] history`` verdicts as JSON in one list, newest first: the web console's
  history page reads it straight from Redis, so its format is a contract (docs/stats.md).

The key layout (``P`` is ``[redis] key_prefix``; hours and days in UTC; ``{DAY}`` is the day,
YYYYMMDD, written as a Redis Cluster hash tag so that one script call touches one slot):

============================  ============  =========================================  ============
key                           type          contents                                   kept
============================  ============  =========================================  ============
P stats:{DAY}:h:HH            hash          counter -> messages in that hour           hourly_days
P stats:{DAY}:day             hash          counter -> messages on that day            daily_days
P stats:{DAY}:sym             sorted set    symbol -> verdicts that had it             daily_days
P stats:{DAY}:rejfrom         sorted set    sender domain -> rejected messages         daily_days
                                            (``<>`` for the null sender)
P stats:history               list          JSON of the last verdicts, newest first    ``history``
============================  ============  =========================================  ============

A batch's counters go in one Lua script call (`_COUNT`) with the batch's sums (one call per day
the batch spans), its history entries in another (`_HISTORY`: LPUSH, merged by time with
newer entries other workers wrote meanwhile, and LTRIM); all in one pipeline.  A script call is one command for redis-py to encode and parse where the counters as
plain commands were some fifteen per verdict (measured: bench/stats_cost.py).

Counting never touches the mail (fail-open, deliberately): a Redis error or timeout loses the
counts of that batch, stops counting for ``[stats] retry_after`` seconds (a hung Redis costs
one timeout then, not one per batch), and is logged at most once a minute with the number of
verdicts left uncounted meanwhile.  When Redis is slower than the mail, past ``QUEUE_LIMIT``
queued verdicts the next ones are not counted either (logged likewise).  A worker told to stop
writes its queue before it exits (`flush`, bounded in time).  An offline scan (``filterctl
scan``) counts nothing: the driver records only for mail a client sent.
"""

from __future__ import annotations

import email.errors
import email.header
import json
import logging
import os
import re
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import redis.exceptions

from filterd.keys import domain_of
from filterd.redisstate import LuaScript, RedisCheckSettings, redis_errors
from filterd.results import Action, TempFail, Verdict

if TYPE_CHECKING:
    from filterd.config import Config, StatsSettings
    from filterd.pipeline import Pipeline
    from filterd.transaction import Transaction

log = logging.getLogger("filterd.stats")

# The counters of one bucket: ``received``, then the outcomes (each verdict is exactly one of
# them), then ``virus`` (a verdict with a virus symbol, whatever its outcome).
OUTCOMES = ("accepted", "tagged", "rejected", "tempfailed", "greylisted", "quarantined", "discarded")
COUNTERS = ("received", *OUTCOMES, "virus")
VIRUS_SYMBOLS = frozenset({"CLAM_VIRUS"})
GREYLIST_REASON = "greylisted ("  # filterd.checks.greylist's decisions

HISTORY_KEY = "stats:history"
SUBJECT_LIMIT = 200  # characters of the Subject in a history entry
RCPTS_LIMIT = 100  # recipients in a history entry (the first ones)
LOG_INTERVAL = 60.0  # seconds between two warnings about Redis (or about the full queue)
QUEUE_LIMIT = 10_000  # verdicts waiting for the sender; past it they are not counted
BATCH_SIZE = 200  # verdicts that make the sender write at once ...
SEND_INTERVAL = 0.1  # ... else it writes this many seconds after the first one waiting
FLUSH_TIMEOUT = 3.0  # seconds a stopping worker waits for its last verdicts to be written

_OUTCOME_OF = {
    Action.ACCEPT: "accepted",
    Action.ADD_HEADER: "tagged",
    Action.REWRITE_SUBJECT: "tagged",
    Action.REJECT: "rejected",
    Action.TEMPFAIL: "tempfailed",
    Action.GREYLIST: "greylisted",
    Action.QUARANTINE: "quarantined",
    Action.DISCARD: "discarded",
}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def outcome_of(verdict: Verdict) -> str:
    """The one outcome counter a verdict adds to.  A greylisting 4xx -- the greylist check's, or
    the score threshold's -- is ``greylisted``; any other 4xx ``tempfailed``."""
    decision = verdict.decision
    # the greylist check's 4xx: its reply's text names the recipient, its reason starts so
    if isinstance(decision, TempFail) and decision.reason.startswith(GREYLIST_REASON):
        return "greylisted"
    return _OUTCOME_OF[verdict.action]


def hour_bucket(ts: float) -> str:
    return time.strftime("%Y%m%d%H", time.gmtime(ts))


def day_bucket(ts: float) -> str:
    return time.strftime("%Y%m%d", time.gmtime(ts))


@dataclass(frozen=True)
class StatsKeys:
    """The keys of the stats family under one ``[redis] key_prefix``.  Every key of one day
    carries the day as its Redis Cluster hash tag: the counting script touches them together."""

    prefix: str

    def hour(self, bucket: str) -> str:
        """The hourly counters of `bucket` (YYYYMMDDHH)."""
        return f"{self.prefix}stats:{{{bucket[:8]}}}:h:{bucket[8:]}"

    def day(self, day: str) -> str:
        return f"{self.prefix}stats:{{{day}}}:day"

    def symbols(self, day: str) -> str:
        return f"{self.prefix}stats:{{{day}}}:sym"

    def rejected_from(self, day: str) -> str:
        return f"{self.prefix}stats:{{{day}}}:rejfrom"

    @property
    def history(self) -> str:
        return self.prefix + HISTORY_KEY


# One call per day of a batch, with the batch's sums.  KEYS: the day's counters, symbols and
# rejected sender domains, then the hours' counters.  ARGV: hour TTL, day TTL, the bound of the
# domains, then one section per key, in the order of KEYS: its number of members, then each
# member and its increment.  One call: one command to encode and parse, however many verdicts.
_COUNT = LuaScript(
    """
local hour_ttl, day_ttl, top = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local i = 4
for k = 1, #KEYS do
  local n = tonumber(ARGV[i])
  i = i + 1
  if n > 0 then
    for j = i, i + 2 * n - 1, 2 do
      if k == 2 or k == 3 then
        redis.call('ZINCRBY', KEYS[k], ARGV[j + 1], ARGV[j])
      else
        redis.call('HINCRBY', KEYS[k], ARGV[j], ARGV[j + 1])
      end
    end
    if k == 3 then redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -top - 1) end
    if k > 3 then redis.call('EXPIRE', KEYS[k], hour_ttl) else redis.call('EXPIRE', KEYS[k], day_ttl) end
  end
  i = i + 2 * n
end
return 1
"""
)


# The history entries of a batch, oldest first, into the list kept newest first by "ts": the
# other workers' and hosts' batches written meanwhile may hold newer entries than this batch's
# oldest, so those are taken off the head (a few, found from the head: usually none) and put
# back merged with the batch.  KEYS: the list.  ARGV: its bound, how deep to look, the entries
# (each our JSON, "ts" its first field).  One call, so no reader sees the list half merged.
_HISTORY = LuaScript(
    """
local key, bound, depth = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2])
local function ts_of(entry) return tonumber(string.match(entry, '^{"ts":([^,}]+)')) or 0 end
local oldest = ts_of(ARGV[3])
local newer = {}
local head = redis.call('LINDEX', key, 0)
local from = depth
if head and ts_of(head) > oldest then from = 0 end  -- else nothing newer: the usual case
while from < depth do
  local chunk = redis.call('LRANGE', key, from, from + 63)
  local stop = #chunk < 64
  for _, entry in ipairs(chunk) do
    if ts_of(entry) <= oldest then stop = true break end
    newer[#newer + 1] = entry
  end
  if stop then break end
  from = from + 64
end
local merged = {}
if #newer == 0 then
  for i = 3, #ARGV do merged[#merged + 1] = ARGV[i] end
else
  redis.call('LTRIM', key, #newer, -1)
  -- both oldest first; on a tie what was there first stays older
  local a, b = 3, #newer
  while a <= #ARGV or b >= 1 do
    if b < 1 or (a <= #ARGV and ts_of(ARGV[a]) < ts_of(newer[b])) then
      merged[#merged + 1] = ARGV[a]
      a = a + 1
    else
      merged[#merged + 1] = newer[b]
      b = b - 1
    end
  end
end
for i = 1, #merged, 1000 do
  redis.call('LPUSH', key, unpack(merged, i, math.min(i + 999, #merged)))
end
redis.call('LTRIM', key, 0, bound - 1)
return #newer
"""
)
HISTORY_DEPTH = 2048  # entries of the list looked at for newer ones (several workers' batches)


# -- what is recorded --------------------------------------------------------------------------


def decoded_subject(tx: Transaction) -> str:
    """The message's Subject as people read it: RFC 2047 words decoded, on one line, at most
    SUBJECT_LIMIT characters; "" before the headers are known (a refusal at RCPT).  Undecodable
    words stay as they were: hostile bytes give a readable string, never an exception."""
    values = tx.header_values("subject")
    return readable_subject(values[0]) if values else ""


def readable_subject(text: str) -> str:
    """A Subject header's value as `decoded_subject` shows it."""
    if "=?" in text:
        try:
            text = str(email.header.make_header(email.header.decode_header(text)))
        except (ValueError, LookupError, UnicodeError, email.errors.HeaderParseError):
            pass  # shown encoded: still the subject, and still one line
    # one line, and valid UTF-8 for whoever reads the JSON (a lone surrogate becomes U+FFFD)
    text = _utf8(_CONTROL.sub(" ", text))
    return text[:SUBJECT_LIMIT]


def _utf8(text: str) -> str:
    """`text` as valid UTF-8 can carry it: bytes a header had that were not UTF-8 (kept as lone
    surrogates by surrogateescape) become U+FFFD, as does any other lone surrogate."""
    if text.isascii():
        return text
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a surrogate surrogateescape did not make
        return text.encode("utf-8", "replace").decode("utf-8")


def _clean(text: str | None) -> str:
    """An envelope value as JSON can carry to any reader: valid UTF-8, no control characters."""
    if not text:
        return ""
    return _utf8(text if text.isprintable() else _CONTROL.sub("?", text))


class Pending(NamedTuple):
    """One verdict waiting in the queue: the verdict, and what its history entry needs of the
    transaction, taken on the mail path (the transaction goes on changing once the hook has
    returned: more recipients after a refusal at RCPT, the next message of the session).  The
    rest -- cleaning, decoding, JSON -- is the sender's work, off the mail path."""

    ts: float
    verdict: Verdict
    qid: str | None
    mail_from: str | None
    rcpts: list[str]  # the first RCPTS_LIMIT
    subject: str | None  # the Subject header's value as it came; None when absent or not yet known
    client: str | None
    direction: str


def pending(tx: Transaction, verdict: Verdict, ts: float) -> Pending:
    """What the queue keeps of one verdict (`Pending`)."""
    subjects = tx.header_values("subject")
    return Pending(
        ts,
        verdict,
        tx.queue_id,
        tx.mail_from,
        tx.rcpts[:RCPTS_LIMIT],
        subjects[0] if subjects else None,
        tx.session.client_addr,
        tx.direction.value,
    )


def entry_of(p: Pending) -> dict[str, Any]:
    """One verdict in the history list's format (docs/stats.md: a stable contract)."""
    verdict = p.verdict
    return {
        "ts": round(p.ts, 3),
        "qid": p.qid or None,
        "action": verdict.action.value,
        "score": round(float(verdict.score), 2),
        "from": _clean(p.mail_from),
        "rcpts": [_clean(r) for r in p.rcpts],
        "subject": "" if p.subject is None else readable_subject(p.subject),
        "client": _clean(p.client),
        "direction": p.direction,
        "symbols": [[s.name, round(float(s.score), 3)] for s in verdict.symbols],
    }


def history_entry(tx: Transaction, verdict: Verdict, ts: float) -> dict[str, Any]:
    """One verdict in the history list's format, at once."""
    return entry_of(pending(tx, verdict, ts))


class StatsRecorder:
    """Counts the verdicts of one pipeline's configuration in its Redis (see the module docstring).

    `record` (the mail path) only appends the verdict to a queue; a sender thread of this process
    writes the queue every `interval` seconds, or as soon as `batch_size` verdicts wait, in one
    pipelined round trip.  The thread starts at the first verdict: in a worker, after the fork
    (a thread does not survive fork; the parent, which forks, records nothing)."""

    def __init__(
        self,
        settings: StatsSettings,
        key_prefix: str,
        client: Callable[[], Any],
        clock: Callable[[], float] = time.monotonic,
        *,
        queue_limit: int = QUEUE_LIMIT,
        batch_size: int = BATCH_SIZE,
        interval: float = SEND_INTERVAL,
    ) -> None:
        self.settings = settings
        self.keys = StatsKeys(key_prefix)
        self.client = client  # called at the first batch: Redis is connected lazily
        self.clock = clock
        self.queue_limit = queue_limit
        self.batch_size = batch_size
        self.interval = interval
        self.hour_ttl = settings.hourly_days * 86400 + 3600
        self.day_ttl = settings.daily_days * 86400 + 86400
        self.down_until = 0.0
        self.last_logged = -LOG_INTERVAL
        self.uncounted = 0  # verdicts Redis did not take since the last warning about it
        self.last_logged_full = -LOG_INTERVAL
        self.dropped = 0  # verdicts the full queue refused since the last warning about it
        self.counted_total = 0  # verdicts written to Redis (tests, the bench)
        self.lost_total = 0  # verdicts not counted: Redis failed or backed off, or the queue full
        self._reset()

    def _reset(self) -> None:
        """The queue and its thread, new: at construction, and in a child after a fork (the
        parent's thread is not there, its locks may have been held, its queue is not ours)."""
        self._cond = threading.Condition(threading.Lock())
        self._queue: list[Pending] = []
        self._queued = 0  # verdicts ever queued ...
        self._settled = 0  # ... and ever taken off the queue and written or given up
        self._hurry = False  # flush(): send what waits now, without waiting for the interval
        self._sender: threading.Thread | None = None

    def record(self, tx: Transaction, verdict: Verdict, ts: float | None = None) -> bool:
        """Queue one verdict to be counted; False when it will not be (Redis backed off, or the
        queue full).  A few microseconds: no I/O; the entry and its JSON are the sender's work."""
        now = time.time() if ts is None else ts
        if self.clock() < self.down_until:
            with self._cond:
                self.uncounted += 1
                self.lost_total += 1
            return False
        waiting = pending(tx, verdict, now)
        with self._cond:
            if len(self._queue) >= self.queue_limit:
                self._overflowed()
                return False
            self._queue.append(waiting)
            self._queued += 1
            # wake the sender for a first verdict (its interval starts) or a full batch
            if len(self._queue) == 1 or len(self._queue) >= self.batch_size:
                self._cond.notify()
            if self._sender is None:
                self._sender = threading.Thread(target=self._run, name="stats-sender", daemon=True)
                self._sender.start()
        return True

    def flush(self, timeout: float = FLUSH_TIMEOUT) -> bool:
        """Write the verdicts queued so far now; True once they are written (or given up on:
        Redis down), False when `timeout` ran out first (a hung Redis: the caller goes on)."""
        with self._cond:
            target = self._queued
            if self._settled >= target:
                return True
            self._hurry = True
            self._cond.notify_all()
            return self._cond.wait_for(lambda: self._settled >= target, timeout)

    # -- the sender thread -------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    self._cond.wait()
                # the first verdict waits at most `interval` for others to join its batch
                deadline = time.monotonic() + self.interval
                while len(self._queue) < self.batch_size and not self._hurry:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                batch, self._queue = self._queue, []
            try:
                self._send(batch)
            except Exception:  # a bug of ours: the thread must go on counting the next verdicts
                log.exception("stats: writing %d verdicts failed", len(batch))
                with self._cond:
                    self.lost_total += len(batch)
            with self._cond:
                self._settled += len(batch)
                if not self._queue:
                    self._hurry = False
                self._cond.notify_all()

    def _send(self, batch: Sequence[Pending]) -> None:
        """Write one batch: the counting script once per day the batch spans (one, but at
        midnight), the history entries in one more (`_HISTORY`); one round trip."""
        if self.clock() < self.down_until:
            with self._cond:
                self.uncounted += len(batch)
                self.lost_total += len(batch)
            return
        calls = self._counting(batch)
        history = self.settings.history
        entries = []
        if history:
            # oldest first by time (a worker's verdicts are, but for a clock stepped back)
            entries = [_json(entry_of(p)) for p in sorted(batch, key=lambda p: p.ts)[-history:]]
        try:
            client = self.client()
            pipe = client.pipeline(transaction=False)
            scripts = [(_COUNT, keys, args) for keys, args in calls]
            if entries:
                scripts.append((_HISTORY, [self.keys.history], [history, HISTORY_DEPTH, *entries]))
            for script, keys, args in scripts:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            results = pipe.execute(raise_on_error=False)
            for (script, keys, args), result in zip(scripts, results, strict=True):
                # NOSCRIPT (first use, or Redis restarted): that script did nothing, so running
                # it again (loading it) counts nothing twice, nor adds an entry twice
                if isinstance(result, redis.exceptions.NoScriptError):
                    script(client, keys, args)
                elif isinstance(result, Exception):
                    raise result
        except redis_errors() as exc:
            self._failed(exc, len(batch))
            return
        with self._cond:
            self.counted_total += len(batch)

    def _counting(self, batch: Iterable[Pending]) -> list[tuple[list[str], list[Any]]]:
        """The counting script's keys and arguments for a batch: one call per day, each
        counter, symbol and domain once with the batch's sum (see `_COUNT`)."""
        days: dict[str, _DayCounts] = {}
        for p in batch:
            outcome = outcome_of(p.verdict)
            hour = hour_bucket(p.ts)
            day = days.get(hour[:8])
            if day is None:
                day = days[hour[:8]] = _DayCounts()
            counters = day.hours.setdefault(hour, Counter())
            counters["received"] += 1
            counters[outcome] += 1
            symbols = p.verdict.symbols
            if any(s.name in VIRUS_SYMBOLS for s in symbols):
                counters["virus"] += 1
            day.symbols.update({s.name for s in symbols})  # each once per verdict
            if outcome == "rejected":
                day.rejected_from[_clean(domain_of(p.mail_from)) or "<>"] += 1
        calls = []
        for name, day in days.items():
            total: Counter[str] = Counter()
            for counters in day.hours.values():
                total.update(counters)
            sections = [total, day.symbols, day.rejected_from, *day.hours.values()]
            keys = [
                self.keys.day(name),
                self.keys.symbols(name),
                self.keys.rejected_from(name),
                *(self.keys.hour(h) for h in day.hours),
            ]
            args: list[Any] = [self.hour_ttl, self.day_ttl, self.settings.top_domains]
            for section in sections:
                args.append(len(section))
                for member, n in section.items():
                    args += (member, n)
            calls.append((keys, args))
        return calls

    # -- what is lost, said at most once a minute ------------------------------------------------

    def _failed(self, exc: BaseException, verdicts: int) -> None:
        now = self.clock()
        self.down_until = now + self.settings.retry_after
        with self._cond:
            self.uncounted += verdicts
            self.lost_total += verdicts
            if now - self.last_logged < LOG_INTERVAL:
                return
            self.last_logged, uncounted, self.uncounted = now, self.uncounted, 0
        log.warning(
            "stats: Redis unavailable, verdicts not counted (%d since the last warning; mail "
            "is not affected): %s: %s",
            uncounted,
            type(exc).__name__,
            exc,
        )

    def _overflowed(self) -> None:
        """The queue is full (Redis slower than the mail): this verdict is not counted.  Called
        with the lock held, on the mail path."""
        self.dropped += 1
        self.lost_total += 1
        now = self.clock()
        if now - self.last_logged_full >= LOG_INTERVAL:
            self.last_logged_full, dropped, self.dropped = now, self.dropped, 0
            log.warning(
                "stats: %d verdicts queued for Redis already, verdicts not counted (%d since the "
                "last warning; mail is not affected)",
                self.queue_limit,
                dropped,
            )


@dataclass
class _DayCounts:
    """A batch's increments for one day: its hours' counters, its symbols, its rejected domains."""

    hours: dict[str, Counter[str]] = field(default_factory=dict)
    symbols: Counter[str] = field(default_factory=Counter)
    rejected_from: Counter[str] = field(default_factory=Counter)


def _json(entry: dict[str, Any]) -> str:
    return json.dumps(entry, ensure_ascii=False, separators=(",", ":"))


# Checks on by default that use Redis only when another one is on (which then counts itself).
_FOLLOWERS = frozenset({"reputation_auth"})


def uses_redis(config: Config) -> bool:
    """Does this configuration use Redis: a [redis] setting other than its default, or an
    enabled check that keeps its state there (``[stats] enabled = "auto"`` counts then)."""
    from filterd.config import RedisSettings, registered_checks

    if config.redis != RedisSettings():
        return True
    for check in registered_checks():
        settings = config.check_settings(check.name)
        if not settings.enabled or check.name in _FOLLOWERS:
            continue
        if isinstance(settings, RedisCheckSettings) or getattr(settings, "storage", "") == "redis":
            return True
        if getattr(settings, "cache_ttl", 0) and getattr(settings, "cache_key_file", ""):
            return True  # the antivirus cache
    return False


def counts(config: Config) -> bool:
    """Are verdicts counted under this configuration (``[stats] enabled``)?"""
    mode = config.stats.enabled
    return mode == "on" or (mode == "auto" and uses_redis(config))


# -- the driver's hook: one recorder per pipeline (a reload builds a new pipeline) ----------------

_recorders: weakref.WeakKeyDictionary[Pipeline, StatsRecorder | None] = weakref.WeakKeyDictionary()


def recorder_for(pipeline: Pipeline) -> StatsRecorder | None:
    """The pipeline's recorder, made at its first verdict; None when its configuration does not count."""
    try:
        return _recorders[pipeline]
    except KeyError:
        pass
    config = pipeline.config
    services = pipeline.services
    made = (
        StatsRecorder(config.stats, config.redis.key_prefix, lambda: services.redis)
        if counts(config)
        else None
    )
    _recorders[pipeline] = made
    return made


def record(pipeline: Pipeline, tx: Transaction, verdict: Verdict) -> None:
    """The driver carried out (or gave, at MAIL FROM or RCPT) a verdict: count it.  Never raises:
    whatever happens here, the mail goes on as decided."""
    try:
        recorder = recorder_for(pipeline)
        if recorder is not None:
            recorder.record(tx, verdict)
    except Exception:  # a bug of ours: logged in full, and still never the mail's problem
        log.exception("%s: counting the verdict failed", tx.queue_id or "NOQUEUE")


def flush(timeout: float = FLUSH_TIMEOUT) -> bool:
    """A worker about to exit writes the verdicts still queued (every pipeline's recorder), for
    at most `timeout` seconds in all: a hung Redis cannot keep a stopping worker alive.  True
    when everything queued was written or given up on in time.  Never raises."""
    deadline = time.monotonic() + timeout
    done = True
    try:
        for recorder in _all_recorders():
            if recorder is not None:
                done = recorder.flush(max(0.0, deadline - time.monotonic())) and done
    except Exception:
        log.exception("stats: writing the last verdicts failed")
        return False
    return done


def _all_recorders() -> list[StatsRecorder | None]:
    # a weak dictionary another thread adds to (a pipeline's first verdict) may fail to be read
    # ("changed size during iteration"): read it again
    for _ in range(10):
        try:
            return list(_recorders.values())
        except RuntimeError:
            continue
    return list(_recorders.values())


def _after_fork_in_child() -> None:
    # a recorder made before a fork (the parent records nothing, but a test or a tool might):
    # the child starts its own sender, with its own locks and an empty queue
    for recorder in _all_recorders():
        if recorder is not None:
            recorder._reset()


os.register_at_fork(after_in_child=_after_fork_in_child)


# -- reading (filterctl stats, the graphs) -------------------------------------------------------


@dataclass(frozen=True)
class Bucket:
    """One hour or day: its start (Unix time, UTC) and its counters (every name of COUNTERS)."""

    start: int
    counts: dict[str, int]


PERIOD_SECONDS = {"hour": 3600, "day": 86400}


def bucket_starts(period: str, last: int, now: float) -> list[int]:
    """The starts of the `last` buckets of `period` up to the one holding `now`, oldest first."""
    step = PERIOD_SECONDS[period]
    current = int(now) // step * step
    return [current - step * i for i in range(last - 1, -1, -1)]


def read_buckets(client: Any, prefix: str, period: str, last: int, now: float | None = None) -> list[Bucket]:
    """The counters of the `last` hours or days up to now, oldest first (one round trip)."""
    keys = StatsKeys(prefix)
    starts = bucket_starts(period, last, time.time() if now is None else now)
    name = keys.hour if period == "hour" else keys.day
    fmt = hour_bucket if period == "hour" else day_bucket
    pipe = client.pipeline(transaction=False)
    for start in starts:
        pipe.hgetall(name(fmt(start)))
    rows = pipe.execute()
    return [Bucket(start, _counters(row)) for start, row in zip(starts, rows, strict=True)]


def _counters(row: dict[Any, Any]) -> dict[str, int]:
    got = {_text(k): int(v) for k, v in row.items()}
    return {name: got.get(name, 0) for name in COUNTERS}


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def totals(buckets: Iterable[Bucket]) -> dict[str, int]:
    out = dict.fromkeys(COUNTERS, 0)
    for b in buckets:
        for name, n in b.counts.items():
            out[name] += n
    return out


def read_top(client: Any, prefix: str, kind: str, days: Sequence[str], n: int) -> list[tuple[str, int]]:
    """The `n` most counted members of the per-day sorted sets of `kind` ("symbols" or
    "rejected_from") over `days`, added up, most counted first (ties by name)."""
    keys = StatsKeys(prefix)
    name = keys.symbols if kind == "symbols" else keys.rejected_from
    pipe = client.pipeline(transaction=False)
    for day in days:
        pipe.zrange(name(day), 0, -1, withscores=True)
    summed: dict[str, int] = {}
    for rows in pipe.execute():
        for member, score in rows:
            key = _text(member)
            summed[key] = summed.get(key, 0) + int(score)
    return sorted(summed.items(), key=lambda item: (-item[1], item[0]))[:n]


def days_of(buckets: Sequence[Bucket]) -> list[str]:
    """The days (YYYYMMDD) the buckets fall on, in order, each once."""
    return list(dict.fromkeys(day_bucket(b.start) for b in buckets))


def read_history(client: Any, prefix: str, count: int = 100) -> list[dict[str, Any]]:
    """The last `count` history entries, newest first."""
    return [json.loads(raw) for raw in client.lrange(StatsKeys(prefix).history, 0, count - 1)]

"""Verdict counters and the last verdicts, kept in Redis so that several MX hosts add up.

Every verdict that is carried out -- the one logged line per message, or per refusal at MAIL FROM
or RCPT -- is counted once, from the driver (`record`), in one pipelined Redis round trip:

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

The counters go in one Lua script call (`_COUNT`), the history entry in LPUSH and LTRIM, all three
in one pipeline: one round trip.  A script call is one command for redis-py to encode and parse
where the counters as plain commands were some fifteen (measured: bench/stats_cost.py).

Counting never touches the mail (fail-open, deliberately): a Redis error or timeout loses the
counts of that message, stops counting for ``[stats] retry_after`` seconds (a hung Redis costs
one timeout then, not one per message), and is logged at most once a minute with the number of
verdicts left uncounted meanwhile.  An offline scan (``filterctl scan``) counts nothing: the driver
records only for mail a client sent.
"""

from __future__ import annotations

import email.errors
import email.header
import json
import logging
import re
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

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
LOG_INTERVAL = 60.0  # seconds between two warnings about Redis

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


# KEYS: the hour's and the day's counters, the day's symbols and rejected sender domains.
# ARGV: hour TTL, day TTL, outcome, virus ("1" or "0"), sender domain ("" unless rejected), the
# bound of the domains, then the symbols.  One call: one command to encode and parse, not 15.
_COUNT = LuaScript(
    """
local hour_ttl, day_ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
for i = 1, 2 do
  redis.call('HINCRBY', KEYS[i], 'received', 1)
  redis.call('HINCRBY', KEYS[i], ARGV[3], 1)
  if ARGV[4] == '1' then redis.call('HINCRBY', KEYS[i], 'virus', 1) end
end
redis.call('EXPIRE', KEYS[1], hour_ttl)
redis.call('EXPIRE', KEYS[2], day_ttl)
if #ARGV > 6 then
  for i = 7, #ARGV do redis.call('ZINCRBY', KEYS[3], 1, ARGV[i]) end
  redis.call('EXPIRE', KEYS[3], day_ttl)
end
if ARGV[5] ~= '' then
  redis.call('ZINCRBY', KEYS[4], 1, ARGV[5])
  redis.call('ZREMRANGEBYRANK', KEYS[4], 0, -tonumber(ARGV[6]) - 1)
  redis.call('EXPIRE', KEYS[4], day_ttl)
end
return 1
"""
)


# -- what is recorded --------------------------------------------------------------------------


def decoded_subject(tx: Transaction) -> str:
    """The message's Subject as people read it: RFC 2047 words decoded, on one line, at most
    SUBJECT_LIMIT characters; "" before the headers are known (a refusal at RCPT).  Undecodable
    words stay as they were: hostile bytes give a readable string, never an exception."""
    values = tx.header_values("subject")
    if not values:
        return ""
    text = values[0]
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


def history_entry(tx: Transaction, verdict: Verdict, ts: float) -> dict[str, Any]:
    """One verdict in the history list's format (docs/stats.md: a stable contract)."""
    session = tx.session
    return {
        "ts": round(ts, 3),
        "qid": tx.queue_id or None,
        "action": verdict.action.value,
        "score": round(float(verdict.score), 2),
        "from": _clean(tx.mail_from),
        "rcpts": [_clean(r) for r in tx.rcpts[:RCPTS_LIMIT]],
        "subject": decoded_subject(tx),
        "client": _clean(session.client_addr),
        "direction": tx.direction.value,
        "symbols": [[s.name, round(float(s.score), 3)] for s in verdict.symbols],
    }


class StatsRecorder:
    """Counts the verdicts of one pipeline's configuration in its Redis (see the module docstring)."""

    def __init__(
        self,
        settings: StatsSettings,
        key_prefix: str,
        client: Callable[[], Any],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.keys = StatsKeys(key_prefix)
        self.client = client  # called at the first message: Redis is connected lazily
        self.clock = clock
        self.hour_ttl = settings.hourly_days * 86400 + 3600
        self.day_ttl = settings.daily_days * 86400 + 86400
        self.down_until = 0.0
        self.last_logged = -LOG_INTERVAL
        self.uncounted = 0  # verdicts not counted since the last warning

    def record(self, tx: Transaction, verdict: Verdict, ts: float | None = None) -> bool:
        """Count one verdict; False when it was not counted (Redis failed, or is backed off)."""
        if self.clock() < self.down_until:
            self.uncounted += 1
            return False
        now = time.time() if ts is None else ts
        keys, args = self._counting(tx, verdict, now)
        try:
            pipe = self.client().pipeline(transaction=False)
            pipe.evalsha(_COUNT.sha, len(keys), *keys, *args)
            if self.settings.history:
                entry = json.dumps(history_entry(tx, verdict, now), ensure_ascii=False, separators=(",", ":"))
                pipe.lpush(self.keys.history, entry)
                pipe.ltrim(self.keys.history, 0, self.settings.history - 1)
            counted = pipe.execute(raise_on_error=False)[0]
            if isinstance(counted, redis.exceptions.NoScriptError):  # first use, or Redis restarted
                _COUNT(self.client(), keys, args)  # the history went in already: only the counters
            elif isinstance(counted, Exception):
                raise counted
        except redis_errors() as exc:
            self._failed(exc)
            return False
        return True

    def _counting(self, tx: Transaction, verdict: Verdict, ts: float) -> tuple[list[str], list[Any]]:
        """The counting script's keys and arguments for one verdict."""
        keys, hour = self.keys, hour_bucket(ts)
        day = hour[:8]
        outcome = outcome_of(verdict)
        virus = any(s.name in VIRUS_SYMBOLS for s in verdict.symbols)
        domain = (_clean(domain_of(tx.mail_from)) or "<>") if outcome == "rejected" else ""
        names = dict.fromkeys(s.name for s in verdict.symbols)  # once per verdict, in order
        return (
            [keys.hour(hour), keys.day(day), keys.symbols(day), keys.rejected_from(day)],
            [
                self.hour_ttl,
                self.day_ttl,
                outcome,
                "1" if virus else "0",
                domain,
                self.settings.top_domains,
                *names,
            ],
        )

    def _failed(self, exc: BaseException) -> None:
        now = self.clock()
        self.down_until = now + self.settings.retry_after
        self.uncounted += 1
        if now - self.last_logged >= LOG_INTERVAL:
            self.last_logged = now
            log.warning(
                "stats: Redis unavailable, verdicts not counted (%d since the last warning; mail "
                "is not affected): %s: %s",
                self.uncounted,
                type(exc).__name__,
                exc,
            )
            self.uncounted = 0


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

"""What every Redis-backed check shares: Lua scripts run in one round trip, and the failure policy.

Round trips are what a Redis check costs on the mail path (measured here: ~7.5k round trips/s on
one connection against ~186k pipelined commands/s), so each check does its work in one script
call: atomic, and one round trip however many keys it reads or writes.  `LuaScript` sends
``EVALSHA`` and loads the script only when Redis answers NOSCRIPT (first use, or after a
restart).  (redis-py's own `Script` objects are not used: inside a pipeline they send ``SCRIPT
EXISTS`` before every execute, an extra round trip per message.)

Failure: when Redis is down or slow, a check does not raise.  `RedisGuard` turns the error into
the check's policy -- fail-open gives a named ``<CHECK>_REDIS_ERROR`` symbol (score 0, shown in the
report header) and fail-closed a 4xx -- and then leaves Redis alone for ``redis_retry_after``
seconds, so a hung Redis costs one timeout every few seconds instead of one per message.  After
that the next message tries again; redis-py's pool reconnects by itself.

Under that, the client itself has a circuit breaker (`BreakerRedis`, filterd/breaker.py): after a
few connection errors or timeouts in a row every call fails at once with `RedisBreakerOpen` (a
redis-py `ConnectionError`, so every caller's existing handling applies) until a probe gets an
answer.  The guard's back-off is per check; the breaker is per server and covers every user of
the client (the antivirus cache, Bayes), and its error text says it is open.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis.exceptions

from filterd.breaker import Breaker, BreakerOpen
from filterd.check import CheckSettings, Finding
from filterd.replies import R451_CHECK_FAILED, TempFail
from filterd.settings import not_negative, setting

log = logging.getLogger("filterd.redis")


@dataclass(frozen=True)
class RedisCheckSettings(CheckSettings):
    """Settings of a check that keeps its state in Redis."""

    # Off until turned on: a check needs the Redis of ``[redis]`` to exist before it can work.
    enabled: bool = setting(False, "run this check (it needs the Redis set in [redis])")
    redis_retry_after: float = setting(
        2.0,
        "after a Redis error, seconds during which the check does not try Redis again "
        "(its on_error policy applies meanwhile)",
        not_negative,
    )


def redis_errors() -> tuple[type[Exception], ...]:
    """The exceptions that mean "Redis is not there or not answering" (redis-py imported late)."""
    import redis

    # RedisClusterException ("no reachable node") is not a RedisError
    return (redis.RedisError, redis.exceptions.RedisClusterException, OSError)


class LuaScript:
    """A Lua script run with EVALSHA, loaded on NOSCRIPT; one round trip per call."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def __call__(self, client: Any, keys: Sequence[str], args: Sequence[Any]) -> Any:
        import redis

        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            client.script_load(self.source)
            return client.evalsha(self.sha, len(keys), *keys, *args)


class RedisGuard:
    """Runs a check's Redis work under its failure policy, with a short back-off after an error."""

    def __init__(
        self,
        check_name: str,
        symbol: str,
        settings: RedisCheckSettings,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.check_name = check_name
        self.symbol = symbol
        self.settings = settings
        self.clock = clock
        self.down_until = 0.0
        self.last_error = ""

    @property
    def available(self) -> bool:
        """False while backing off after an error."""
        return self.clock() >= self.down_until

    def failed(self, exc: BaseException) -> None:
        """Record an error: log it and back off."""
        self.last_error = f"{type(exc).__name__}: {exc}"
        self.down_until = self.clock() + self.settings.redis_retry_after
        log.warning("%s: Redis unavailable: %s", self.check_name, self.last_error)

    def outcome(self) -> Finding | TempFail:
        """What the check yields while Redis is unavailable: its policy, named."""
        if self.settings.on_error == "closed":
            return TempFail(
                R451_CHECK_FAILED,
                f"{self.check_name}: Redis unavailable (fail-closed): {self.last_error}",
            )
        return Finding(
            self.symbol, f"{self.check_name} skipped, Redis unavailable (fail-open): {self.last_error}"
        )

    def call(self, work: Callable[[], Any]) -> tuple[bool, Any]:
        """(True, result) when `work` ran; (False, None) when Redis is unavailable (see `outcome`)."""
        if not self.available:
            return False, None
        try:
            return True, work()
        except redis_errors() as exc:
            self.failed(exc)
            return False, None


# The errors that say the server is not there; any other RedisError (NOSCRIPT, WRONGTYPE) is an answer.
_SERVER_FAILURES = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.RedisClusterException,
    OSError,
)


class RedisBreakerOpen(BreakerOpen, redis.exceptions.ConnectionError):
    """Redis was not asked: its circuit breaker is open."""


class BreakerRedis:
    """A redis-py client (or pipeline) whose commands go through one server's circuit breaker.

    A thin proxy: every attribute is the client's, and calling a method first asks the breaker.
    Pipelines are proxied too, their `execute` being the one round trip."""

    def __init__(self, client: Any, breaker: Breaker) -> None:
        self._client = client
        self._breaker = breaker

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr) or name == "close":
            return attr
        if name == "pipeline":
            return lambda *a, **kw: BreakerRedis(attr(*a, **kw), self._breaker)

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._call(attr, args, kwargs)

        return call

    def _call(self, method: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        breaker = self._breaker
        if method.__name__ not in _ROUND_TRIPS and _is_queued(self._client):
            result = method(*args, **kwargs)  # queued in a pipeline: no round trip yet
            return self if result is self._client else result
        refusal = breaker.refusal()
        if refusal is not None:
            raise RedisBreakerOpen(refusal)
        try:
            result = method(*args, **kwargs)
        except _SERVER_FAILURES as exc:
            breaker.failure(f"{type(exc).__name__}: {exc}")
            raise
        except Exception:
            breaker.success()  # an error reply (NOSCRIPT, WRONGTYPE): the server answered
            raise
        except BaseException:
            breaker.release()
            raise
        breaker.success()
        return self if result is self._client else result


# In a pipeline, only these make a round trip; every other method queues a command.
_ROUND_TRIPS = frozenset({"execute", "immediate_execute_command", "watch", "unwatch"})


def _is_queued(client: Any) -> bool:
    return hasattr(client, "command_stack")

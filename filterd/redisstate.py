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
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

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

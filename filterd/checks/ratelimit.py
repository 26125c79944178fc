"""Rate limits: a token bucket in Redis per client IP (inbound) and per authenticated user (outbound).

A bucket holds up to `burst` tokens and refills at `rate` tokens per minute; each message (at
MAIL FROM) takes one.  An empty bucket answers ``451 4.7.1`` with the time until a token is
back, so a real server just queues and retries while a spam run -- from outside, or from a
compromised account inside -- is slowed to the configured rate.  The bucket is one Redis hash
updated by one Lua script call (one round trip), shared by every filterd host; its TTL is the
time it takes to refill, after which a full bucket and a missing one are the same.

Outbound mail from the internal networks without SMTP authentication is not limited: those are
the site's own servers.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from filterd.addrlists import NetworkList
from filterd.check import Check, Direction, Output, Stage
from filterd.config import Config
from filterd.keys import Keys
from filterd.redisstate import LuaScript, RedisCheckSettings, RedisGuard
from filterd.replies import R451_RATE_LIMITED, TempFail
from filterd.services import Services
from filterd.settings import ConfigError, ip_networks, not_negative, setting
from filterd.transaction import Transaction


@dataclass(frozen=True)
class RateLimitSettings(RedisCheckSettings):
    ip_rate: float = setting(60.0, "inbound: messages per minute per client IP (0: no limit)", not_negative)
    ip_burst: int = setting(120, "inbound: messages a client IP may send at once", not_negative)
    user_rate: float = setting(
        2.0, "outbound: messages per minute per authenticated user (0: no limit)", not_negative
    )
    user_burst: int = setting(100, "outbound: messages an authenticated user may send at once", not_negative)
    exempt_networks: tuple[str, ...] = setting(
        ("127.0.0.0/8", "::1/128"),
        "client networks never limited (local submission, content filters)",
        ip_networks,
    )


# KEYS[1]: the bucket.  ARGV: now (ms), refill per ms, burst, cost.
# Returns {allowed (1/0), tokens left (floored), ms until enough tokens}.
_BUCKET = LuaScript(
    """
local now = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1])
local ts = tonumber(b[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
if now > ts then tokens = math.min(burst, tokens + (now - ts) * rate) end
local allowed = 0
local wait = 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
else
  wait = math.ceil((cost - tokens) / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(math.max(now, ts)))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate) + 1000)
return {allowed, math.floor(tokens), wait}
"""
)


class RateLimit(Check):
    name = "ratelimit"
    stage = Stage.MAIL_FROM
    directions = frozenset({Direction.INBOUND, Direction.OUTBOUND})
    description = "token buckets per client IP (inbound) and per authenticated user (outbound)"
    symbols = {"RATELIMIT_REDIS_ERROR": 0.0}
    Settings = RateLimitSettings
    clock: Callable[[], float] = staticmethod(time.time)

    def __init__(self, settings: RateLimitSettings, config: Config, services: Services) -> None:
        super().__init__(settings, config, services)
        for kind in ("ip", "user"):
            if getattr(settings, f"{kind}_rate") > 0 and getattr(settings, f"{kind}_burst") < 1:
                raise ConfigError(f"checks.{self.name}.{kind}_burst", "must be at least 1 when a rate is set")
        self.exempt = NetworkList(
            tuple(ipaddress.ip_network(n, strict=False) for n in settings.exempt_networks)
        )
        self.keys = Keys(config.redis.key_prefix)
        self.guard = RedisGuard(self.name, "RATELIMIT_REDIS_ERROR", settings)

    def run(self, tx: Transaction) -> Iterable[Output]:
        assert isinstance(self.settings, RateLimitSettings)
        s = self.settings
        if tx.auth_user:
            kind, who, rate, burst = "user", tx.auth_user, s.user_rate, s.user_burst
            shown = f"user {tx.auth_user}"
        elif tx.direction is Direction.INBOUND and tx.session.client_ip is not None:
            kind, who, rate, burst = "ip", str(tx.session.client_ip), s.ip_rate, s.ip_burst
            shown = f"[{who}]"
        else:
            return
        if rate <= 0 or self.exempt.match(tx.session.client_ip) is not None:
            return
        key = self.keys.ratelimit(kind, who)
        args = [int(self.clock() * 1000), repr(rate / 60000.0), burst, 1]
        ok, result = self.guard.call(lambda: _BUCKET(self.services.redis, [key], args))
        if not ok:
            yield self.guard.outcome()
            return
        allowed, wait_ms = int(result[0]), int(result[2])
        if allowed:
            return
        wait = max(1, -(-wait_ms // 1000))
        yield TempFail(
            R451_RATE_LIMITED.with_text(
                f"Too many messages from {shown}: limit {rate:g} per minute; please retry in {wait} seconds"
            ),
            f"rate limit of {kind} {who}: {rate:g}/min, burst {burst}, over",
        )

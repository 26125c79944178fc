"""Rate limits: a token bucket in Redis per client network (inbound) and per authenticated user (outbound).

A bucket holds up to `burst` tokens and refills at `rate` tokens per minute; each recipient (at
RCPT) takes one, so a message to 50 recipients costs 50 tokens, as Postfix's own
smtpd_client_recipient_rate_limit counts.  Counting messages instead let one transaction with a
thousand recipients cost the same as one with one.  An empty bucket answers ``451 4.7.1`` for
that recipient with the time until a token is back: a real server delivers the recipients
accepted so far and retries the others, while a spam run -- from outside, or from a compromised
account inside -- is slowed to the configured rate.  The bucket is one Redis hash updated by one
Lua script call (one round trip per recipient), shared by every filterd host; its TTL is the
time it takes to refill, after which a full bucket and a missing one are the same.

An inbound client is counted by its network, ``ipv4_prefix`` (32: the address) and
``ipv6_prefix`` (64) bits long: a site is given a whole IPv6 /64 (often more), so a bucket per
IPv6 address would let a sender rotate through 2^64 of them.

Outbound mail from the internal networks without SMTP authentication is not limited: those are
the site's own servers.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from filterd.addrlists import NetworkList
from filterd.check import Check, CheckContext, Cost, Direction, Output, Stage
from filterd.keys import Keys, client_network
from filterd.redisstate import LuaScript, RedisCheckSettings, RedisGuard
from filterd.replies import R451_RATE_LIMITED, TempFail
from filterd.settings import ConfigError, ip_networks, not_negative, setting
from filterd.transaction import Transaction


@dataclass(frozen=True)
class RateLimitSettings(RedisCheckSettings):
    ip_rate: float = setting(
        60.0, "inbound: recipients per minute per client network (0: no limit)", not_negative
    )
    ip_burst: int = setting(120, "inbound: recipients a client network may send to at once", not_negative)
    ipv4_prefix: int = setting(32, "IPv4 prefix length of the client network counted (32: per address)")
    ipv6_prefix: int = setting(64, "IPv6 prefix length of the client network counted (a site gets a /64)")
    user_rate: float = setting(
        2.0, "outbound: recipients per minute per authenticated user (0: no limit)", not_negative
    )
    user_burst: int = setting(
        100, "outbound: recipients an authenticated user may send to at once", not_negative
    )
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
    stage = Stage.RCPT  # one token per recipient
    cost = Cost.NETWORK  # after the recipient deny list: a refused recipient costs no token
    directions = frozenset({Direction.INBOUND, Direction.OUTBOUND})
    description = (
        "token buckets of recipients per client network (inbound) and per authenticated user (outbound)"
    )
    symbols = {"RATELIMIT_REDIS_ERROR": 0.0}
    Settings = RateLimitSettings
    clock: Callable[[], float] = staticmethod(time.time)

    def __init__(self, ctx: CheckContext[RateLimitSettings]) -> None:
        super().__init__(ctx)
        settings = ctx.settings
        for kind in ("ip", "user"):
            if getattr(settings, f"{kind}_rate") > 0 and getattr(settings, f"{kind}_burst") < 1:
                raise ConfigError(f"checks.{self.name}.{kind}_burst", "must be at least 1 when a rate is set")
        if not 0 <= settings.ipv4_prefix <= 32:
            raise ConfigError(f"checks.{self.name}.ipv4_prefix", "an IPv4 prefix length is 0-32")
        if not 0 <= settings.ipv6_prefix <= 128:
            raise ConfigError(f"checks.{self.name}.ipv6_prefix", "an IPv6 prefix length is 0-128")
        self.exempt = NetworkList(
            tuple(ipaddress.ip_network(n, strict=False) for n in settings.exempt_networks)
        )
        self.keys = Keys(ctx.site.key_prefix)
        self.guard = RedisGuard(self.name, "RATELIMIT_REDIS_ERROR", settings)

    def run(self, tx: Transaction) -> Iterable[Output]:
        assert isinstance(self.settings, RateLimitSettings)
        s = self.settings
        if tx.auth_user:
            kind, who, rate, burst = "user", tx.auth_user, s.user_rate, s.user_burst
            shown = f"user {tx.auth_user}"
        elif tx.direction is Direction.INBOUND and (ip := tx.session.client_ip) is not None:
            who = client_network(ip, s.ipv4_prefix, s.ipv6_prefix)
            kind, rate, burst = "ip", s.ip_rate, s.ip_burst
            whole_address = ip.max_prefixlen == (s.ipv4_prefix if ip.version == 4 else s.ipv6_prefix)
            shown = f"[{ip}]" if whole_address else f"[{ip}] (network {who})"
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
                f"Too many recipients from {shown}: limit {rate:g} per minute; please retry in {wait} seconds"
            ),
            f"rate limit of {kind} {who}: {rate:g}/min, burst {burst}, over",
        )

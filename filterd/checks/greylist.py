"""Greylisting with postgrey's semantics, its state in Redis so several MX hosts share it.

A triplet is (client network, envelope sender, recipient).  The first attempt of a triplet gets
``451 4.7.1`` with a text telling a person what happens and when to retry; a retry after `delay`
and within `retry_window` passes, and the passed triplet is remembered for `pass_ttl` (refreshed
on every use).  A client network that passed `auto_allowlist` times (counted at most once per
`allowlist_count_interval`, as postgrey counts) skips greylisting altogether.

Real mail servers retry; most spamware does not.  Large senders retry from other addresses of a
pool, which is why the triplet holds the client's network (/24, /64) rather than its address, and
why clients and SPF/DKIM-authenticated domains with a good reputation are let through: "my
provider's mail is delayed by hours" is the complaint postgrey users have most.

Modes:

- ``rcpt`` (default): decided per recipient at RCPT, before DATA -- cheap, the message is never
  transferred.  Only the SPF-pass domain can be known then.
- ``content``: decided at end of message, after every other check, and only when the score so
  far falls in ``[content_min_score, content_max_score)`` (kept below the reject threshold), as
  rspamd does.  The triplet's recipient is then the sorted list of all recipients.

Every update is one Lua script call (one round trip per recipient) that reads and writes the
triplet and the network counter atomically; both keys share a Redis Cluster hash slot.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from filterd.addrlists import AddressList, NetworkList
from filterd.check import SCORE_SO_FAR, Check, CheckContext, Cost, Finding, Output, Stage
from filterd.keys import Keys, client_network, normalize_sender
from filterd.redisstate import LuaScript, RedisCheckSettings, RedisGuard
from filterd.replies import R451_GREYLIST_DEFERRED, TempFail
from filterd.settings import ConfigError, not_negative, setting
from filterd.transaction import Transaction


def _seconds(value: int) -> str | None:
    return None if value > 0 else "expected a number of seconds greater than zero"


@dataclass(frozen=True)
class GreylistSettings(RedisCheckSettings):
    # Off until turned on: it needs Redis, and delaying new correspondents is a site's policy choice.
    enabled: bool = setting(False, "run this check (needs [redis]; delays first mail from new senders)")
    mode: Literal["rcpt", "content"] = setting(
        "rcpt", '"rcpt": every new triplet at RCPT; "content": only when the score falls in the band'
    )
    delay: int = setting(300, "seconds a new triplet must wait before a retry passes", _seconds)
    retry_window: int = setting(
        2 * 86400, "seconds after the first attempt within which a retry passes", _seconds
    )
    pass_ttl: int = setting(35 * 86400, "seconds a passed triplet is remembered (refreshed on use)", _seconds)
    auto_allowlist: int = setting(
        5, "passes after which a client network skips greylisting (0: never)", not_negative
    )
    allowlist_count_interval: int = setting(
        3600, "a client network's passes count at most once per this many seconds", not_negative
    )
    ipv4_prefix: int = setting(24, "IPv4 prefix length of the client network in the triplet")
    ipv6_prefix: int = setting(64, "IPv6 prefix length of the client network in the triplet")
    client_allow_file: str = setting("", "client IP networks never greylisted, one per line (empty: none)")
    sender_allow_file: str = setting(
        "", "envelope sender addresses or domains never greylisted, one per line (empty: none)"
    )
    recipient_allow_file: str = setting(
        "", "recipient addresses or domains never greylisted (they opted out), one per line (empty: none)"
    )
    skip_trusted_clients: bool = setting(True, "skip clients whose reputation is TRUSTED")
    skip_trusted_auth: bool = setting(
        True, "skip messages whose SPF-pass (at RCPT) or DKIM-pass (content mode) domain is TRUSTED"
    )
    content_min_score: float = setting(4.0, "content mode: greylist at or above this score")
    content_max_score: float = setting(
        math.inf, "content mode: and below this score (never above the reject threshold)"
    )


# KEYS[1]: the triplet; KEYS[2]: the client network's pass counter (same hash slot).
# ARGV: now, delay, retry window, pass TTL, auto-allowlist passes (0: off), count interval.
# Returns {state, network passes, seconds}: seconds is the wait left for "new"/"early" and the
# time since the first attempt for "passed".
_GREYLIST = LuaScript(
    """
local now = tonumber(ARGV[1])
local delay = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local pass_ttl = tonumber(ARGV[4])
local allow_after = tonumber(ARGV[5])
local interval = tonumber(ARGV[6])
local net = redis.call('HMGET', KEYS[2], 'count', 'last')
local count = tonumber(net[1]) or 0
if allow_after > 0 and count >= allow_after then
  redis.call('EXPIRE', KEYS[2], pass_ttl)
  return {'allowlisted', count, 0}
end
local function count_pass()
  local last = tonumber(net[2])
  if last == nil or now - last >= interval then
    count = redis.call('HINCRBY', KEYS[2], 'count', 1)
    redis.call('HSET', KEYS[2], 'last', now)
  end
  redis.call('EXPIRE', KEYS[2], pass_ttl)
end
local t = redis.call('HMGET', KEYS[1], 'first', 'passed')
local first = tonumber(t[1])
if t[2] then
  redis.call('HSET', KEYS[1], 'passed', now)
  redis.call('EXPIRE', KEYS[1], pass_ttl)
  count_pass()
  return {'known', count, 0}
end
if first == nil or now - first > window then
  redis.call('HSET', KEYS[1], 'first', now)
  redis.call('EXPIRE', KEYS[1], window)
  return {'new', count, delay}
end
if now - first < delay then
  return {'early', count, delay - (now - first)}
end
redis.call('HSET', KEYS[1], 'passed', now)
redis.call('EXPIRE', KEYS[1], pass_ttl)
count_pass()
return {'passed', count, now - first}
"""
)

# Site-wide allow-list hits (filterd.checks.lists) and trust markers (filterd.checks.reputation).
_SITE_ALLOWED = ("CLIENT_ALLOWED", "SENDER_ALLOWED")


class Greylist(Check):
    name = "greylist"
    stage = Stage.RCPT
    description = "postgrey-style greylisting of (client network, sender, recipient), shared in Redis"
    symbols = {
        "GREYLIST_PASSED": 0.0,
        "GREYLIST_KNOWN": 0.0,
        "GREYLIST_ALLOWLISTED": 0.0,
        "GREYLIST_SKIPPED": 0.0,
        "GREYLIST_REDIS_ERROR": 0.0,
    }
    Settings = GreylistSettings
    # at RCPT: after the recipient lists and rate limit (a refused recipient is no triplet); in
    # content mode: after every check of end of message, the classifier included (its score
    # counts toward the greylist band)
    requires = (SCORE_SO_FAR,)
    after = ("bayes",)
    cost = Cost.NETWORK
    clock: Callable[[], float] = staticmethod(time.time)

    def __init__(self, ctx: CheckContext[GreylistSettings]) -> None:
        super().__init__(ctx)
        settings = ctx.settings
        key = f"checks.{self.name}"
        if settings.delay >= settings.retry_window:
            raise ConfigError(f"{key}.delay", f"{settings.delay} must be shorter than retry_window")
        if not (0 <= settings.ipv4_prefix <= 32 and 0 <= settings.ipv6_prefix <= 128):
            raise ConfigError(f"{key}.ipv4_prefix", "prefix lengths are 0-32 (IPv4) and 0-128 (IPv6)")
        if settings.content_min_score >= settings.content_max_score:
            raise ConfigError(f"{key}.content_min_score", "must be below content_max_score")
        if settings.mode == "content":
            self.stage = Stage.EOM
        self.clients = NetworkList.load(settings.client_allow_file, f"{key}.client_allow_file")
        self.senders = AddressList.load(settings.sender_allow_file, f"{key}.sender_allow_file")
        self.recipients = AddressList.load(settings.recipient_allow_file, f"{key}.recipient_allow_file")
        self.keys = Keys(ctx.site.key_prefix)
        self.guard = RedisGuard(self.name, "GREYLIST_REDIS_ERROR", settings)

    @property
    def _s(self) -> GreylistSettings:
        assert isinstance(self.settings, GreylistSettings)
        return self.settings

    def run(self, tx: Transaction) -> Iterable[Output]:
        s = self._s
        if s.mode == "content":
            total = self.ctx.score_so_far(tx)
            high = min(s.content_max_score, self.site.reject_score)
            if not s.content_min_score <= total < high:
                return
            rcpts = sorted({r.strip("<>").lower() for r in tx.rcpts})
            rcpt, shown = ",".join(rcpts), f"{len(rcpts)} recipient(s)"
            why = f"score {total} in greylist band [{s.content_min_score:g}, {high:g})"
        else:
            rcpt = tx.current_rcpt.strip("<>").lower()
            shown, why = f"<{rcpt}>", "new triplet"
        skip = self.skip_reason(tx, rcpt if s.mode == "rcpt" else None)
        if skip is not None:
            yield from _once(tx, Finding("GREYLIST_SKIPPED", skip))
            return
        ip = tx.session.client_ip
        assert ip is not None  # skip_reason() covers an unknown client
        network = client_network(ip, s.ipv4_prefix, s.ipv6_prefix)
        sender = normalize_sender(tx.mail_from)
        keys = [self.keys.greylist_triplet(network, sender, rcpt), self.keys.greylist_network(network)]
        args = [
            int(self.clock()),
            s.delay,
            s.retry_window,
            s.pass_ttl,
            s.auto_allowlist,
            s.allowlist_count_interval,
        ]
        ok, result = self.guard.call(lambda: _GREYLIST(self.services.redis, keys, args))
        if not ok:
            yield self.guard.outcome()
            return
        state = result[0].decode() if isinstance(result[0], bytes) else str(result[0])
        passes, seconds = int(result[1]), int(result[2])
        if state == "allowlisted":
            yield from _once(
                tx,
                Finding(
                    "GREYLIST_ALLOWLISTED",
                    f"client network {network} passed greylisting {passes} times: auto-allow-listed",
                ),
            )
        elif state == "known":
            yield from _once(tx, Finding("GREYLIST_KNOWN", f"triplet from {network} passed before"))
        elif state == "passed":
            yield from _once(
                tx, Finding("GREYLIST_PASSED", f"retry from {network} after {_duration(seconds)} passed")
            )
        else:
            wait = _duration(max(seconds, 1))
            if state == "new":
                text = (
                    f"Greylisted: first delivery attempt from your mail server for {shown} is "
                    f"deferred; a retry in {wait} or later will be accepted"
                )
            else:
                text = f"Greylisted: retry for {shown} came too soon; please retry in {wait}"
            yield TempFail(
                R451_GREYLIST_DEFERRED.with_text(text),
                f"greylisted ({why}): {network}, <{sender}>, {shown}, {state}, retry in {wait}",
            )

    def skip_reason(self, tx: Transaction, rcpt: str | None) -> str | None:
        """Why this message (or recipient) is not greylisted, or None."""
        s = self._s
        ip = tx.session.client_ip
        if ip is None:
            return "client address unknown"
        if (net := self.clients.match(ip)) is not None:
            return f"client {ip} in greylist allow list ({net})"
        if (entry := self.senders.match(tx.mail_from)) is not None:
            return f"sender <{tx.mail_from}> in greylist allow list ({entry})"
        if rcpt is not None and (entry := self.recipients.match(rcpt)) is not None:
            return f"recipient <{rcpt}> in greylist allow list ({entry})"
        if s.mode == "content" and tx.rcpts and all(self.recipients.match(r) for r in tx.rcpts):
            return "every recipient in greylist allow list"
        symbols = {f.symbol for f in tx.findings}
        for symbol in _SITE_ALLOWED:
            if symbol in symbols:
                return f"{symbol} (site allow list)"
        if s.skip_trusted_clients and "REP_CLIENT_TRUSTED" in symbols:
            return "client reputation is TRUSTED"
        if s.skip_trusted_auth and "REP_AUTH_TRUSTED" in symbols:
            return "authenticated domain reputation is TRUSTED"
        return None


def _once(tx: Transaction, finding: Finding) -> Iterable[Finding]:
    """At RCPT the check runs per recipient: report each symbol once per message."""
    if not any(f.symbol == finding.symbol for f in tx.findings):
        yield finding


def _duration(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds} seconds"
    if seconds < 2 * 3600:
        return f"{round(seconds / 60)} minutes"
    if seconds < 2 * 86400:
        return f"{round(seconds / 3600)} hours"
    return f"{round(seconds / 86400)} days"

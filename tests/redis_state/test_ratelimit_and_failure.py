"""Rate limits, and every Redis check when Redis goes away and comes back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from filterd.replies import TempFail
from filterd.results import Action
from tests.harness.redis import RedisServer
from tests.redis_state.conftest import Clock, build, deliver, symbols

ONLY_RATELIMIT = {
    "greylist": {"enabled": False},
    "reputation": {"enabled": False},
    "ratelimit": {"ip_rate": 6.0, "ip_burst": 3, "user_rate": 1.0, "user_burst": 2},
}


def test_inbound_rate_limit_trips_and_refills(redis_server: Any, prefix: str, clock: Clock) -> None:
    p = build(redis_server.url, prefix, ONLY_RATELIMIT, clock)
    for _ in range(3):
        assert deliver(p)[1].action is Action.ACCEPT
    _, over = deliver(p)
    assert over.action is Action.TEMPFAIL
    assert isinstance(over.decision, TempFail)
    assert str(over.decision.reply) == (
        "451 4.7.1 Too many recipients from [192.0.2.10]: limit 6 per minute; please retry in 10 seconds"
    )
    assert deliver(p, client="192.0.2.11")[1].action is Action.ACCEPT  # per address, not per network
    clock.advance(10)  # 6 a minute: one token back every 10 s
    assert deliver(p)[1].action is Action.ACCEPT
    assert deliver(p)[1].action is Action.TEMPFAIL
    p.close()


def test_outbound_rate_limit_is_per_authenticated_user(redis_server: Any, prefix: str, clock: Clock) -> None:
    p = build(redis_server.url, prefix, ONLY_RATELIMIT, clock)
    for client in ("192.0.2.1", "198.51.100.2"):  # a compromised account sending from two places
        assert deliver(p, client=client, auth_user="bob")[1].action is Action.ACCEPT
    _, over = deliver(p, client="203.0.113.3", auth_user="bob")
    assert over.action is Action.TEMPFAIL
    assert "Too many recipients from user bob: limit 1 per minute" in str(over.decision.reply)  # type: ignore[union-attr]
    assert deliver(p, auth_user="carol")[1].action is Action.ACCEPT
    p.close()


def test_every_recipient_takes_a_token(redis_server: Any, prefix: str, clock: Clock) -> None:
    """A message to 3 recipients costs 3 tokens, not 1: with a burst of 3, the next is refused."""
    p = build(redis_server.url, prefix, ONLY_RATELIMIT, clock)
    three = ("a@ours.test", "b@ours.test", "c@ours.test")
    assert deliver(p, rcpts=three)[1].action is Action.ACCEPT
    _, over = deliver(p, rcpts=("d@ours.test",))
    assert over.action is Action.TEMPFAIL
    clock.advance(10)  # one token back: one recipient, not two -- the other is refused at RCPT
    tx, verdict = deliver(p, rcpts=("e@ours.test", "f@ours.test"))
    assert tx.rcpts == ["e@ours.test"] and verdict.action is Action.ACCEPT
    [(refused, decision)] = tx.refused
    assert refused == "f@ours.test" and isinstance(decision, TempFail)
    p.close()


@pytest.mark.parametrize(
    ("first", "same_bucket", "other_bucket", "shown"),
    [
        # an IPv6 /64 is one site: rotating through its addresses gains nothing
        (
            "2001:db8:1:2::1",
            "2001:db8:1:2:ffff:ffff:ffff:fffe",
            "2001:db8:1:3::1",
            "(network 2001:db8:1:2::/64)",
        ),
        ("192.0.2.10", "192.0.2.10", "192.0.2.11", ""),  # IPv4: per address by default
    ],
)
def test_clients_are_counted_by_network(
    redis_server: Any, prefix: str, clock: Clock, first: str, same_bucket: str, other_bucket: str, shown: str
) -> None:
    p = build(redis_server.url, prefix, ONLY_RATELIMIT, clock)
    assert deliver(p, client=first, rcpts=("a@ours.test", "b@ours.test"))[1].action is Action.ACCEPT
    assert deliver(p, client=same_bucket)[1].action is Action.ACCEPT
    _, over = deliver(p, client=same_bucket)
    assert over.action is Action.TEMPFAIL
    assert f"Too many recipients from [{same_bucket}] {shown}".rstrip() + ":" in str(over.decision.reply)  # type: ignore[union-attr]
    assert deliver(p, client=other_bucket)[1].action is Action.ACCEPT
    p.close()


def test_prefix_lengths_are_configurable(redis_server: Any, prefix: str, clock: Clock) -> None:
    limits = {
        **ONLY_RATELIMIT,
        "ratelimit": {**ONLY_RATELIMIT["ratelimit"], "ipv4_prefix": 24, "ipv6_prefix": 48},
    }
    p = build(redis_server.url, prefix, limits, clock)
    for client in ("192.0.2.1", "192.0.2.2", "192.0.2.3"):
        assert deliver(p, client=client)[1].action is Action.ACCEPT
    assert deliver(p, client="192.0.2.200")[1].action is Action.TEMPFAIL  # the same /24
    assert deliver(p, client="192.0.3.1")[1].action is Action.ACCEPT
    for client in ("2001:db8:1::1", "2001:db8:1:2::1", "2001:db8:1:ffff::1"):
        assert deliver(p, client=client)[1].action is Action.ACCEPT
    assert deliver(p, client="2001:db8:1:abcd::9")[1].action is Action.TEMPFAIL  # the same /48
    p.close()


def test_two_instances_share_one_bucket(redis_server: Any, prefix: str, clock: Clock) -> None:
    mx1 = build(redis_server.url, prefix, ONLY_RATELIMIT, clock)
    mx2 = build(redis_server.url, prefix, ONLY_RATELIMIT, clock)
    results = [deliver(mx, client="192.0.2.99")[1].action for mx in (mx1, mx2, mx1, mx2)]
    assert results == [Action.ACCEPT, Action.ACCEPT, Action.ACCEPT, Action.TEMPFAIL]
    mx1.close()
    mx2.close()


@pytest.fixture
def own_redis(tmp_path: Path) -> Any:
    """A redis-server of this test's own, to stop and start."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


ALL_ON = {"greylist": {"delay": 300, "auto_allowlist": 0}, "reputation": {"min_messages": 1}}


def test_redis_down_fail_open_then_back(own_redis: RedisServer, prefix: str, clock: Clock) -> None:
    p = build(own_redis.url, prefix, ALL_ON, clock)
    assert deliver(p)[1].action is Action.TEMPFAIL  # greylisted: Redis works
    clock.advance(301)
    assert deliver(p)[1].action is Action.ACCEPT

    own_redis.stop()
    _, v = deliver(p, rcpts=("new@ours.test",))  # a new triplet, but Redis is gone: mail flows
    assert v.action is Action.ACCEPT
    s = symbols(v)
    for symbol in ("GREYLIST_REDIS_ERROR", "REPUTATION_REDIS_ERROR", "RATELIMIT_REDIS_ERROR"):
        assert s[symbol] == 0.0
    reason = next(x.reason for x in v.symbols if x.name == "GREYLIST_REDIS_ERROR")
    assert reason.startswith("greylist skipped, Redis unavailable (fail-open): ConnectionError")

    own_redis.start()  # same port, empty (no persistence): scripts must be loaded again
    _, again = deliver(p, rcpts=("new@ours.test",))
    assert again.action is Action.TEMPFAIL  # greylisting works again, by itself
    assert "Greylisted" in str(again.decision.reply)  # type: ignore[union-attr]
    p.close()


def test_redis_down_fail_closed_tempfails(own_redis: RedisServer, prefix: str, clock: Clock) -> None:
    checks = {
        "greylist": {"on_error": "closed"},
        "reputation": {"enabled": False},
        "ratelimit": {"enabled": False},
    }
    p = build(own_redis.url, prefix, checks, clock)
    own_redis.stop()
    _, v = deliver(p)
    assert v.action is Action.TEMPFAIL
    assert str(v.decision.reply).startswith("451 4.3.0")  # type: ignore[union-attr]
    assert "greylist: Redis unavailable (fail-closed)" in v.decision.reason  # type: ignore[union-attr]
    own_redis.start()
    _, back = deliver(p)
    assert back.action is Action.TEMPFAIL and "Greylisted" in str(back.decision.reply)  # type: ignore[union-attr]
    p.close()


def test_back_off_after_an_error(own_redis: RedisServer, prefix: str, clock: Clock) -> None:
    """While backing off the check does not touch Redis: one error, then the policy straight away."""
    checks = {
        "greylist": {"redis_retry_after": 60.0},
        "reputation": {"enabled": False},
        "ratelimit": {"enabled": False},
    }
    p = build(own_redis.url, prefix, checks, clock)
    own_redis.stop()
    assert "GREYLIST_REDIS_ERROR" in symbols(deliver(p)[1])
    own_redis.start()
    # Redis is back, but the check waits out its back-off (the guard runs on the monotonic clock)
    assert "GREYLIST_REDIS_ERROR" in symbols(deliver(p)[1])
    greylist = next(c for c in p.checks if c.name == "greylist")
    greylist.guard.down_until = 0.0  # type: ignore[attr-defined]
    assert deliver(p)[1].action is Action.TEMPFAIL
    p.close()


def test_redis_hung_times_out_into_the_policy(own_redis: RedisServer, prefix: str, clock: Clock) -> None:
    """A Redis that accepts but never answers (SIGSTOP): each check gives up after [redis] timeout."""
    import os
    import signal
    import time

    p = build(
        own_redis.url,
        prefix,
        ALL_ON,
        clock,
        redis={"url": own_redis.url, "key_prefix": prefix, "timeout": 0.2},
    )
    assert deliver(p)[1].action is Action.TEMPFAIL  # connected and working
    assert own_redis.proc is not None
    os.kill(own_redis.proc.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        _, v = deliver(p, rcpts=("other@ours.test",))
        elapsed = time.monotonic() - started
    finally:
        os.kill(own_redis.proc.pid, signal.SIGCONT)
    assert v.action is Action.ACCEPT
    reason = next(x.reason for x in v.symbols if x.name == "GREYLIST_REDIS_ERROR")
    assert "Timeout" in reason
    assert elapsed < 2.0  # ratelimit, reputation, greylist and the verdict update: 0.2 s each at most
    _, back = deliver(p, rcpts=("other@ours.test",))
    assert back.action is Action.TEMPFAIL and "Greylisted" in str(back.decision.reply)  # type: ignore[union-attr]
    p.close()


def test_local_clients_are_exempt(redis_server: Any, prefix: str, clock: Clock) -> None:
    p = build(redis_server.url, prefix, ONLY_RATELIMIT, clock)
    assert all(deliver(p, client="127.0.0.1")[1].action is Action.ACCEPT for _ in range(5))
    p.close()


@pytest.mark.parametrize(("key", "value"), [("ipv4_prefix", 33), ("ipv6_prefix", 129), ("ipv6_prefix", -1)])
def test_prefix_lengths_out_of_range_stop_the_start(
    redis_server: Any, prefix: str, clock: Clock, key: str, value: int
) -> None:
    from filterd.settings import ConfigError

    limits = {**ONLY_RATELIMIT, "ratelimit": {**ONLY_RATELIMIT["ratelimit"], key: value}}
    with pytest.raises(ConfigError, match=f"checks.ratelimit.{key}"):
        build(redis_server.url, prefix, limits, clock)

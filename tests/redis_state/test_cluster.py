"""The Redis checks against a real three-node Redis Cluster (`[redis] cluster = true`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from filterd.keys import Keys
from filterd.reputation import Entity, ReputationSettings, ReputationStore
from filterd.results import Action
from tests.redis_state.cluster import RedisCluster
from tests.redis_state.conftest import Clock, build, deliver, symbols


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    c = RedisCluster(tmp_path_factory.mktemp("cluster"))
    c.start()
    yield c
    c.stop()


def cluster_pipeline(cluster: RedisCluster, prefix: str, clock: Clock, **checks: Any) -> Any:
    p = build(
        cluster.url,
        prefix,
        {
            "greylist": {"auto_allowlist": 2, "allowlist_count_interval": 0, "skip_trusted_clients": False},
            **checks,
        },
        clock,
        redis={"url": cluster.url, "key_prefix": prefix, "cluster": True},
    )
    from redis.cluster import RedisCluster as Client

    assert isinstance(p.services.redis, Client)
    return p


def test_greylist_reputation_and_rate_limit_on_a_cluster(
    cluster: RedisCluster, prefix: str, clock: Clock
) -> None:
    p = cluster_pipeline(cluster, prefix, clock, reputation={"min_messages": 2})
    # greylisting: a script over two keys, which must share a slot (hash tag)
    assert deliver(p)[1].action is Action.TEMPFAIL
    clock.advance(301)
    _, passed = deliver(p)
    assert passed.action is Action.ACCEPT and "GREYLIST_PASSED" in symbols(passed)
    # auto-allow-list after two passes of the network
    deliver(p, rcpts=("second@ours.test",))
    clock.advance(301)
    deliver(p, rcpts=("second@ours.test",))
    _, allowed = deliver(p, rcpts=("third@ours.test",), sender="other@sender.test")
    assert "GREYLIST_ALLOWLISTED" in symbols(allowed)
    # reputation: reads and updates spread over the nodes (entities hash to different slots)
    _, rep = deliver(p, learn=False)
    assert symbols(rep)["REP_IP_GOOD"] < 0 and "REP_HELO_GOOD" in symbols(rep)
    # a correction, as filterctl train makes it
    store = ReputationStore(p.services.redis, Keys(prefix), ReputationSettings(min_messages=2))
    mid = "<x@sender.test>"
    store.record([Entity("ip", "198.51.100.1"), Entity("from", "x.test")], "ham", clock.now, [mid])
    assert store.retrain(mid, "spam", clock.now) == "moved"
    assert store.read([Entity("ip", "198.51.100.1")], clock.now)[0].spam == 1
    p.close()


def test_rate_limit_on_a_cluster(cluster: RedisCluster, prefix: str, clock: Clock) -> None:
    p = cluster_pipeline(
        cluster,
        prefix,
        clock,
        greylist={"enabled": False},
        reputation={"enabled": False},
        ratelimit={"ip_rate": 1.0, "ip_burst": 2},
    )
    actions = [deliver(p, client="192.0.2.50")[1].action for _ in range(3)]
    assert actions == [Action.ACCEPT, Action.ACCEPT, Action.TEMPFAIL]
    p.close()


def test_cluster_unreachable_is_the_checks_policy(prefix: str, clock: Clock, tmp_path: Path) -> None:
    dead = RedisCluster(tmp_path)  # never started: no node answers
    p = build(
        dead.url,
        prefix,
        {},
        clock,
        redis={"url": dead.url, "key_prefix": prefix, "cluster": True, "timeout": 0.2},
    )
    _, v = deliver(p)
    assert v.action is Action.ACCEPT
    assert {"GREYLIST_REDIS_ERROR", "REPUTATION_REDIS_ERROR", "RATELIMIT_REDIS_ERROR"} <= set(symbols(v))
    assert "CHECK_ERROR" not in symbols(v)
    p.close()

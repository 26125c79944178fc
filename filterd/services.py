"""The outside services checks talk to, made once per pipeline and handed to every check.

Checks never open their own connections: they ask `Services` (so one Redis pool serves every
check in a worker), and a unit test can hand in a fake.  Clients are created on first use, so a
configuration that enables no Redis-backed check never connects to Redis.
"""

from __future__ import annotations

import contextlib
from functools import cached_property
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from filterd.breaker import breaker_for
from filterd.redisstate import BreakerRedis

if TYPE_CHECKING:
    from filterd.clamd import ClamdPool
    from filterd.config import Config
    from filterd.dns import Resolver
    from filterd.sqllookup import SqlLookup


class Services:
    def __init__(self, config: Config, **given: Any) -> None:
        """`given` replaces a client by name (e.g. ``redis=fakeredis``), for tests."""
        self.config = config
        for name, client in given.items():
            setattr(self, name, client)

    @cached_property
    def redis(self) -> Any:
        """A redis-py client (plain, Sentinel-managed or Cluster, per ``[redis]``), connecting lazily."""
        import redis

        s = self.config.redis
        options: dict[str, Any] = {
            "socket_timeout": s.timeout,
            "socket_connect_timeout": s.timeout,
            "health_check_interval": 30,
        }
        if s.password:
            options["password"] = s.password
        if s.sentinels:
            from redis.sentinel import Sentinel

            hosts = [(h.rsplit(":", 1)[0], int(h.rsplit(":", 1)[1])) for h in s.sentinels]
            client = Sentinel(hosts, **options).master_for(s.sentinel_service, **options)
            name = f"Redis master {s.sentinel_service} (Sentinel)"
        elif s.cluster:
            from redis.cluster import RedisCluster

            # no breaker: the cluster client tracks its nodes itself (and callers check its type)
            return RedisCluster.from_url(s.url, **options)
        else:
            # retry_on_timeout off: on the mail path a slow Redis must fail fast into the check's policy
            client = redis.Redis.from_url(s.url, **options)
            name = f"Redis {_server_of(s.url)}"
        return BreakerRedis(client, breaker_for(name, self.config.breaker))

    def clamd(
        self, sockets: tuple[str, ...], timeout: float, connect_timeout: float, retry_after: float
    ) -> ClamdPool:
        """A clamd client for `sockets`, each behind its circuit breaker (``[breaker]``)."""
        from filterd.clamd import ClamdPool

        return ClamdPool(sockets, timeout, connect_timeout, retry_after, breaker=self.config.breaker)

    @property
    def longest_wait(self) -> float:
        """Seconds one call to a backend may wait: half of [milter] heartbeat_timeout.  A callback
        that waits longer than the heartbeat timeout is taken for a hung worker, which is killed
        with every session it holds."""
        return self.config.milter.heartbeat_timeout / 2

    @cached_property
    def resolver(self) -> Resolver:
        """The one DNS resolver (``[dns]``); pyspf and dkimpy are pointed at it too."""
        from filterd.dns import Resolver

        resolver = Resolver(self.config.dns, self.config.breaker)
        resolver.install_as_default()
        return resolver

    @cached_property
    def sql(self) -> SqlLookup | None:
        """PostfixAdmin's tables (``[sql]``), first read now; None when [sql] is off."""
        from filterd.sqllookup import open_lookup

        return open_lookup(self.config.sql, self.config.network.local_domains)

    def close(self) -> None:
        client = self.__dict__.get("redis")
        if client is not None:
            with contextlib.suppress(Exception):  # a broken connection must not stop a reload
                client.close()


def _server_of(url: str) -> str:
    """host:port/db of a redis:// URL, without the password, to name its breaker in logs."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    return f"{parts.hostname or '127.0.0.1'}:{parts.port or 6379}{parts.path or '/0'}"

"""The outside services checks talk to, made once per pipeline and handed to every check.

Checks never open their own connections: they ask `Services` (so one Redis pool serves every
check in a worker), and a unit test can hand in a fake.  Clients are created on first use, so a
configuration that enables no Redis-backed check never connects to Redis.
"""

from __future__ import annotations

import contextlib
from functools import cached_property
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from filterd.config import Config
    from filterd.dns import Resolver


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
            return Sentinel(hosts, **options).master_for(s.sentinel_service, **options)
        if s.cluster:
            from redis.cluster import RedisCluster

            return RedisCluster.from_url(s.url, **options)
        # retry_on_timeout off: on the mail path a slow Redis must fail fast into the check's policy
        return redis.Redis.from_url(s.url, **options)

    @cached_property
    def resolver(self) -> Resolver:
        """The one DNS resolver (``[dns]``); pyspf and dkimpy are pointed at it too."""
        from filterd.dns import Resolver

        resolver = Resolver(self.config.dns)
        resolver.install_as_default()
        return resolver

    def close(self) -> None:
        client = self.__dict__.get("redis")
        if client is not None:
            with contextlib.suppress(Exception):  # a broken connection must not stop a reload
                client.close()

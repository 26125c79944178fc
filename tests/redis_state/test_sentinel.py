"""The Redis checks through Redis Sentinel (`[redis] sentinels`): the client asks the sentinel
for the master and keeps its state there.  (A failover itself is Sentinel's and redis-py's
business and is not exercised here.)"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from filterd.results import Action
from tests.harness.net import free_port, port_open, wait_for
from tests.harness.redis import RedisServer
from tests.redis_state.conftest import Clock, build, deliver


class Sentinel:
    def __init__(self, workdir: Path, master_port: int) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.master_port = master_port
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "sentinel.conf"
        conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.workdir}\n"
            f"sentinel monitor mymaster 127.0.0.1 {self.master_port} 1\n"
        )
        exe = shutil.which("redis-server")
        assert exe is not None
        self.proc = subprocess.Popen(
            [exe, str(conf), "--sentinel", "--logfile", str(self.workdir / "sentinel.log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: port_open(self.port), 10, "redis sentinel")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


@pytest.fixture
def sentinel_setup(tmp_path: Path) -> Iterator[tuple[RedisServer, Sentinel]]:
    master = RedisServer(tmp_path / "master")
    master.start()
    sentinel = Sentinel(tmp_path / "sentinel", master.port)
    sentinel.start()
    yield master, sentinel
    sentinel.stop()
    master.stop()


def test_checks_work_through_sentinel(
    sentinel_setup: tuple[RedisServer, Sentinel], prefix: str, clock: Clock
) -> None:
    master, sentinel = sentinel_setup
    redis = {"url": "redis://ignored:1/0", "key_prefix": prefix, "sentinels": [f"127.0.0.1:{sentinel.port}"]}
    p = build(master.url, prefix, {"greylist": {"auto_allowlist": 0}}, clock, redis=redis)
    assert deliver(p)[1].action is Action.TEMPFAIL
    clock.advance(301)
    assert deliver(p)[1].action is Action.ACCEPT
    # the state is in the master the sentinel watches
    import redis as redis_py

    direct = redis_py.Redis(port=master.port)
    assert any(k.startswith(prefix.encode() + b"gl:") for k in direct.scan_iter(match=f"{prefix}*"))
    direct.close()
    p.close()

"""A three-node Redis Cluster on loopback (no replicas), for tests of the cluster client path."""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

from tests.harness.net import port_open, wait_for


def _free_pair() -> int:
    """A port P with P and P + 10000 (the cluster bus) both free, below 55536."""
    for _ in range(200):
        p = random.randint(20000, 45000)
        if not port_open(p) and not port_open(p + 10000):
            return p
    raise RuntimeError("no free port pair for a cluster node")


class RedisCluster:
    def __init__(self, workdir: Path, nodes: int = 3) -> None:
        self.workdir = workdir
        self.ports = [_free_pair() for _ in range(nodes)]
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        for port in self.ports:
            d = self.workdir / str(port)
            d.mkdir(parents=True, exist_ok=True)
            self.procs.append(
                subprocess.Popen(
                    [
                        exe,
                        *("--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
                        *("--cluster-enabled", "yes", "--cluster-config-file", str(d / "nodes.conf")),
                        *("--dir", str(d), "--logfile", str(d / "redis.log")),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        for port in self.ports:
            wait_for(lambda port=port: port_open(port), 10, f"cluster node on {port}")
        nodes = [f"127.0.0.1:{p}" for p in self.ports]
        subprocess.run(
            ["redis-cli", "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
        )
        wait_for(self._ok, 20, "cluster state ok")

    def _ok(self) -> bool:
        out = subprocess.run(
            ["redis-cli", "-p", str(self.ports[0]), "cluster", "info"], capture_output=True, text=True
        ).stdout
        return "cluster_state:ok" in out

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.wait(timeout=10)
        self.procs = []

"""A private redis-server on a free loopback port (or a unix socket), no persistence.

The session fixture runs without a password, as before; `RedisServer(password=..., unix_socket=True)`
runs one as the quick start and contrib/redis/filterd-redis.conf do: AUTH required, and no TCP
port at all, only a unix socket of mode 0600 (the test's user alone can connect).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.harness.net import free_port, port_open, wait_for


def redis_argv(port: int, workdir: Path, password: str = "", unix_socket: Path | None = None) -> list[str]:
    """redis-server on 127.0.0.1:`port` (0: no TCP), no persistence, its log in `workdir`;
    with `password`, AUTH is required (requirepass); with `unix_socket`, it listens there, mode 0600."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    extra: list[str] = []
    if password:
        extra += ["--requirepass", password]
    if unix_socket is not None:
        extra += ["--unixsocket", str(unix_socket), "--unixsocketperm", "600"]
    return [
        exe,
        *extra,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(workdir),
        "--logfile",
        str(workdir / "redis.log"),
    ]


class RedisServer:
    def __init__(self, workdir: Path, password: str = "", unix_socket: bool = False) -> None:
        self.workdir = workdir
        self.password = password
        self.socket_path = workdir / "redis.sock" if unix_socket else None
        self.port = 0 if unix_socket else free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The URL for [redis] url (the password goes in [redis] password, not here)."""
        if self.socket_path is not None:
            return f"unix://{self.socket_path}?db=0"
        return f"redis://127.0.0.1:{self.port}/0"

    def _listening(self) -> bool:
        if self.socket_path is None:
            return port_open(self.port)
        return self.socket_path.exists()

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            redis_argv(self.port, self.workdir, self.password, self.socket_path),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self._listening, 10, f"redis-server on {self.socket_path or self.port}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None

"""rspamd 3.4 as the bench's peer: a private instance with the modules comparable to filterd's full
pipeline (the configuration is in bench/rspamd/, a comment per module saying which filterd check it
matches), its own two Redis servers, the bench's clamd and local DNS server.

It runs as a child of the bench (`rspamd -f`), never as the system service, from the stock
/etc/rspamd/rspamd.conf with LOCAL_CONFDIR pointed at a private copy of bench/rspamd/ whose
placeholders (@NAME@) are filled in: ports, sockets.  Its workers drop to the _rspamd user, as the
packaged service runs.  One Redis holds the Bayes tokens (trained once, before the rounds, on
corpus messages outside the sample); the other holds everything the bench empties between rounds
(greylist, ratelimit, the antivirus result cache, history).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

from tests.harness.net import free_port, port_open, wait_for
from tests.harness.redis import RedisServer

CONFIG = Path(__file__).resolve().parent / "rspamd"
STOCK = Path("/etc/rspamd/rspamd.conf")
USER = "_rspamd"
# the rspamd binary; the tests point it at a missing file to see the bench run without the peer
RSPAMD = os.environ.get("FILTERD_BENCH_RSPAMD", "rspamd")


def unavailable() -> str | None:
    """Why the peer cannot run here, or None."""
    if shutil.which(RSPAMD) is None or not STOCK.exists():
        return "rspamd is not installed (Debian: apt-get install rspamd; see scripts/install --bench)"
    if shutil.which("rspamc") is None:
        return "rspamc (package rspamd) is missing"
    return None


class RspamdPeer:
    def __init__(self, workdir: Path, dns_port: int, clamd_socket: Path) -> None:
        self.dir = workdir
        self.socket_path = workdir / "proxy.sock"
        self.dns_port = dns_port
        self.clamd_socket = clamd_socket
        self.normal_port = free_port()
        self.controller_port = free_port()
        self.state_redis = RedisServer(workdir / "redis-state")
        self.bayes_redis = RedisServer(workdir / "redis-bayes")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def milter(self) -> str:
        return f"unix:{self.socket_path}"

    @property
    def log_path(self) -> Path:
        return self.dir / "log" / "rspamd.log"

    def write_config(self) -> None:
        values = {
            "DNS_PORT": str(self.dns_port),
            "STATE_REDIS_PORT": str(self.state_redis.port),
            "BAYES_REDIS_PORT": str(self.bayes_redis.port),
            "CLAMD_SOCKET": str(self.clamd_socket),
            "PROXY_SOCKET": str(self.socket_path),
            "NORMAL_PORT": str(self.normal_port),
            "CONTROLLER_PORT": str(self.controller_port),
        }
        for source in CONFIG.rglob("*"):
            if source.is_dir():
                continue
            target = self.dir / "conf" / source.relative_to(CONFIG)
            target.parent.mkdir(parents=True, exist_ok=True)
            text = source.read_text()
            for name, value in values.items():
                text = text.replace(f"@{name}@", value)
            target.write_text(text)
        for name in ("run", "db", "log"):
            (self.dir / name).mkdir(parents=True, exist_ok=True)
            shutil.chown(self.dir / name, USER, USER)

    def start(self) -> None:
        """Start the Redis servers and rspamd, once; later rounds use restart()."""
        self.state_redis.start()
        self.bayes_redis.start()
        self.write_config()
        self._spawn()

    def _spawn(self) -> None:
        if self.socket_path.exists():
            self.socket_path.unlink()
        argv = [
            RSPAMD,
            "-f",
            "-u",
            USER,
            "-g",
            USER,
            "-c",
            str(STOCK),
            f"--var=LOCAL_CONFDIR={self.dir / 'conf'}",
            f"--var=RUNDIR={self.dir / 'run'}",
            f"--var=DBDIR={self.dir / 'db'}",
            f"--var=LOGDIR={self.dir / 'log'}",
        ]
        with (self.dir / "stderr.log").open("ab") as err:
            self.proc = subprocess.Popen(argv, stdout=err, stderr=err)
        proc = self.proc
        wait_for(
            lambda: (
                proc.poll() is not None
                or (
                    self.socket_path.exists()
                    and port_open(self.normal_port)
                    and port_open(self.controller_port)
                )
            ),
            60,
            "rspamd to listen",
        )
        if proc.poll() is not None:
            raise RuntimeError(f"rspamd exited with {proc.returncode}: see {self.dir / 'stderr.log'}")

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
            self.proc = None

    def restart(self) -> None:
        """A fresh rspamd: its in-process caches (DKIM keys, SPF records) start empty."""
        self.stop()
        self._spawn()

    def close(self) -> None:
        self.stop()
        self.state_redis.stop()
        self.bayes_redis.stop()

    def train(self, ham: list[Path], spam: list[Path]) -> None:
        """Teach rspamd's Bayes the given messages through the controller."""
        for command, files in (("learn_ham", ham), ("learn_spam", spam)):
            result = subprocess.run(
                ["rspamc", "-h", f"127.0.0.1:{self.controller_port}", "-t", "60", command, *map(str, files)],
                capture_output=True,
                text=True,
                timeout=600,
            )
            if result.returncode != 0:
                raise RuntimeError(f"rspamc {command} failed: {result.stderr[-2000:]}")

    def learned(self) -> str:
        """How many messages each Bayes class learned, from the model's own Redis."""

        def redis(*args: str) -> str:
            return subprocess.run(
                ["redis-cli", "-p", str(self.bayes_redis.port), *args],
                capture_output=True,
                text=True,
                timeout=60,
            ).stdout

        # each class's set names the per-user hashes ("RS" without users) that count its learns
        counts = []
        for symbol, learns in (("BAYES_HAM", "learns_ham"), ("BAYES_SPAM", "learns_spam")):
            total = 0
            for name in redis("smembers", f"{symbol}_keys").split():
                value = redis("hget", name, learns).strip()
                total += int(value) if value.isdigit() else 0
            counts.append(f"{learns}={total}")
        return ", ".join(counts)

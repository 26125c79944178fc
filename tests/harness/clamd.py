"""A private clamd on a unix socket and a free loopback TCP port, loading only tests/clamav/.

clamd runs in the foreground as a child of the test process, with its own DatabaseDirectory,
TemporaryDirectory, log and pid file, so nothing is shared with a system clamd.  No `User` line:
clamd then keeps the uid it was started with (root in CI, the developer otherwise), which can
read the temp dir; a `User clamav` line would need the files to be readable by that user.

`pause()` (SIGSTOP) makes clamd accept connections but never answer -- how a test makes clamd
"too slow"; `stop()` and `start()` make it unreachable and bring it back.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

from filterd.scancache import write_secret
from tests.harness.net import free_port, wait_for

SIGNATURES = Path(__file__).resolve().parent.parent / "clamav"
CONTRIB_CLAMD_CONF = Path(__file__).resolve().parents[2] / "contrib" / "clamd" / "clamd.conf"
# Settings of the shipped snippet a private test clamd must not take: system paths, and the socket
# group (chown to group clamav fails for a developer who is not root and not in it).
_NOT_FOR_TESTS = {"LocalSocket", "LocalSocketGroup", "LocalSocketMode", "TCPSocket", "TCPAddr", "User"}


def contrib_settings() -> dict[str, str]:
    """The settings of contrib/clamd/clamd.conf, so the tests run clamd as the docs tell admins to."""
    settings: dict[str, str] = {}
    for line in CONTRIB_CLAMD_CONF.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            if key not in _NOT_FOR_TESTS:
                settings[key] = value.strip()
    return settings


@functools.cache
def cache_key_file() -> str:
    """A signing key for the antivirus result cache ([checks.antivirus] cache_key_file), mode 0600,
    one per test run.  filterd runs as the test's user, so a 0700 directory is fine."""
    workdir = tempfile.mkdtemp(prefix="filterd-avkey-")
    atexit.register(shutil.rmtree, workdir, True)
    path = Path(workdir) / "av-cache.key"
    write_secret(path)
    return str(path)


class ClamdServer:
    def __init__(self, workdir: Path, options: dict[str, str] | None = None) -> None:
        """`options` overrides or adds clamd.conf lines, e.g. {"StreamMaxLength": "1K"}."""
        self.workdir = workdir
        self.options = options or {}
        self.port = free_port()
        self.socket_path = workdir / "clamd.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def unix_address(self) -> str:
        """The socket in filterd's config syntax."""
        return f"unix:{self.socket_path}"

    @property
    def tcp_address(self) -> str:
        return f"inet:{self.port}@127.0.0.1"

    def write_config(self) -> Path:
        db = self.workdir / "db"
        tmp = self.workdir / "tmp"
        db.mkdir(parents=True, exist_ok=True)
        tmp.mkdir(exist_ok=True)
        for sig in SIGNATURES.iterdir():
            if sig.suffix in (".hdb", ".ndb"):
                shutil.copy(sig, db / sig.name)
        conf = self.workdir / "clamd.conf"
        settings = {
            **contrib_settings(),
            "DatabaseDirectory": str(db),
            "LocalSocket": str(self.socket_path),
            "FixStaleSocket": "yes",
            "TCPSocket": str(self.port),
            "TCPAddr": "127.0.0.1",
            "Foreground": "yes",
            "LogFile": str(self.workdir / "clamd.log"),
            "PidFile": str(self.workdir / "clamd.pid"),
            "TemporaryDirectory": str(tmp),
            "SelfCheck": "0",
            # as in contrib (asserted here so a test clamd never answers OK past its limits);
            # a test that needs the old behaviour passes {"AlertExceedsMax": "no"}
            "AlertExceedsMax": "yes",
            **self.options,
        }
        conf.write_text("".join(f"{key} {value}\n" for key, value in settings.items()))
        return conf

    def start(self) -> None:
        exe = shutil.which("clamd") or "/usr/sbin/clamd"
        if not Path(exe).exists():
            raise RuntimeError("clamd is not installed (apt-get install clamav-daemon)")
        conf = self.write_config()
        self.proc = subprocess.Popen(
            [exe, "--foreground", "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self.answers_ping, 60, f"clamd on {self.socket_path}")

    def answers_ping(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            log = self.workdir / "clamd.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"clamd exited with {self.proc.returncode}:\n{tail}")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(1)
                s.connect(str(self.socket_path))
                s.sendall(b"zPING\0")
                return s.recv(64).startswith(b"PONG")
        except OSError:
            return False

    def pause(self) -> None:
        """Stop clamd (SIGSTOP): connections are accepted by the kernel but never answered."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGCONT)  # a paused clamd cannot handle SIGTERM
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

"""filterd itself, run as `python -m filterd` with a test configuration, as an admin would run it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from filterd.settings import toml_value
from tests.harness.net import wait_for

ROOT = Path(__file__).resolve().parents[2]


def write_toml(path: Path, data: dict[str, Any]) -> None:
    """Write a configuration: top-level tables of scalars and lists, and [checks.NAME] tables."""
    lines: list[str] = []

    def key(k: str) -> str:  # a key that is not a bare key (a domain name, say) is quoted
        return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else toml_value(k)

    def table(name: str, values: dict[str, Any]) -> None:
        scalars = {k: v for k, v in values.items() if not isinstance(v, dict)}
        lines.append(f"[{name}]")
        lines.extend(f"{key(k)} = {toml_value(v)}" for k, v in scalars.items())
        lines.append("")
        for k, v in values.items():
            if isinstance(v, dict):
                table(f"{name}.{key(k)}", v)

    for name, values in data.items():
        table(name, values)
    path.write_text("\n".join(lines))


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class Filterd:
    def __init__(self, workdir: Path, socket_path: Path) -> None:
        self.dir = workdir
        self.socket_path = socket_path
        self.config_path = workdir / "filterd.toml"
        self.log_path = workdir / "filterd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def configure(self, config: dict[str, Any]) -> None:
        base = {
            "milter": {"socket": f"unix:{self.socket_path}", "socket_group": "postfix", "workers": 2},
            "log": {"destination": "stderr"},  # the tests read filterd's log from its stderr (self.log)
            # on by default; off here so the stack tests' exact scores stay those of the checks they
            # test (tests/test_e2e_bayes.py turns it on)
            "checks": {"bayes": {"enabled": False}},
        }
        write_toml(self.config_path, merge(base, config))

    def spawn(self) -> subprocess.Popen[bytes]:
        """Start the filterd process and return at once (its output goes to the log)."""
        if self.socket_path.exists():
            self.socket_path.unlink()
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "filterd", "--config", str(self.config_path)],
            stdout=log,
            stderr=log,
            env=env,
            cwd=ROOT,
        )
        log.close()
        return self.proc

    def start(self, timeout: float = 20.0) -> None:
        """Start filterd and wait until it says it listens (unix or inet socket alike)."""
        offset = len(self.log())
        proc = self.spawn()
        wait_for(
            lambda: "listening on" in self.log()[offset:] or proc.poll() is not None,
            timeout,
            "filterd to listen",
        )
        if proc.poll() is not None:
            raise RuntimeError(f"filterd exited with {proc.returncode}:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(timeout=10)
        self._kill_orphans()
        self.proc = None
        return code

    def kill(self) -> None:
        """SIGKILL the parent and its workers at once: filterd dies without cleaning up."""
        if self.proc is None:
            return
        self._kill_orphans(signal.SIGKILL)
        self.proc.kill()
        self.proc.wait(timeout=10)
        self.proc = None

    def _kill_orphans(self, sig: int = signal.SIGKILL) -> None:
        """Workers whose parent is gone (SIGKILLed) would keep the socket: end them too."""
        out = subprocess.run(
            ["pgrep", "-f", f"filterd --config {self.config_path}"], capture_output=True, text=True
        )
        for pid in out.stdout.split():
            try:
                os.kill(int(pid), sig)
            except (ProcessLookupError, ValueError):
                pass

    def reload(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

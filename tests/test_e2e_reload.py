"""End to end through Postfix: a reload that turns every check on, and a hung worker, lose no mail.

Every message sent is accounted for: delivered exactly once at the sink, or refused with a 4xx
or 5xx that the client saw (and then never delivered)."""

from __future__ import annotations

import os
import signal
import smtplib
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.harness.clamd import ClamdServer
from tests.harness.filterd import write_toml
from tests.harness.redis import RedisServer
from tests.harness.stack import Stack, make_message

pytestmark = pytest.mark.stack

ROOT = Path(__file__).resolve().parent.parent


def every_check_on(stack: Stack, clamd: ClamdServer, redis: RedisServer) -> dict[str, object]:
    """The stack's configuration with every check a new user might turn on: bayes with the
    shipped model, antivirus against clamd, the Redis checks against redis."""
    return {
        **stack.base_config,
        "milter": {"socket": f"unix:{stack.filterd.socket_path}", "socket_group": "postfix", "workers": 2},
        "redis": {"url": redis.url, "key_prefix": f"reload{uuid.uuid4().hex[:8]}:"},
        "checks": {
            "bayes": {"enabled": True, "model": str(ROOT / "models" / "bayes.npz")},
            "antivirus": {"enabled": True, "sockets": [clamd.unix_address], "timeout": 5.0},
            "ratelimit": {"enabled": True, "exempt_networks": []},
            "reputation": {"enabled": True},
            "client_dns": {"enabled": True},
            "sender_dns": {"enabled": True},
        },
    }


class Outcomes:
    """What the client saw for each message it sent, by marker."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.accepted: list[str] = []
        self.refused: dict[str, int] = {}
        self.errors: list[BaseException] = []

    def send(self, port: int, n: int, per_session: int) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", port, local_hostname="client.example.org", timeout=120) as smtp:
                for i in range(per_session):
                    msg, marker = make_message(f"stream {n}.{i}")
                    try:
                        smtp.sendmail("alice@example.org", ["bob@example.net"], msg)
                    except smtplib.SMTPResponseException as exc:
                        with self.lock:
                            self.refused[marker] = exc.smtp_code
                        smtp.rset()
                        continue
                    with self.lock:
                        self.accepted.append(marker)
        except BaseException as exc:  # a dropped connection: its message is not accounted for
            with self.lock:
                self.errors.append(exc)


def assert_accounted_for(stack: Stack, outcomes: Outcomes, total: int) -> None:
    assert outcomes.errors == []
    assert len(outcomes.accepted) + len(outcomes.refused) == total
    assert all(400 <= code < 600 for code in outcomes.refused.values())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(stack.sink.count(m) == 0 for m in outcomes.accepted):
        time.sleep(0.2)
    assert [stack.sink.count(m) for m in outcomes.accepted] == [1] * len(outcomes.accepted)
    assert [stack.sink.count(m) for m in outcomes.refused] == [0] * len(outcomes.refused)


def test_sighup_turning_every_check_on_loses_no_mail(
    stack: Stack, clamd_server: ClamdServer, redis_server: RedisServer
) -> None:
    with stack.configured({}) as filterd:
        offset = len(filterd.log())
        outcomes = Outcomes()
        sessions = [
            threading.Thread(target=outcomes.send, args=(stack.postfix.port, n, 2)) for n in range(20)
        ]
        for t in sessions[:6]:
            t.start()
        write_toml(filterd.config_path, every_check_on(stack, clamd_server, redis_server))
        filterd.reload()
        for t in sessions[6:10]:  # while the parent validates the new configuration
            t.start()
        deadline = time.monotonic() + 60
        while "validated" not in filterd.log()[offset:] and time.monotonic() < deadline:
            time.sleep(0.05)
        for t in sessions[10:]:  # while the workers build their new pipelines
            t.start()
            time.sleep(0.05)
        for t in sessions:
            t.join(timeout=180)
        log = filterd.log()[offset:]
        assert "validated" in log
        assert_accounted_for(stack, outcomes, 40)
        # the new checks really run: a message now is scored by bayes in either worker
        for _ in range(4):
            msg, marker = make_message("after the reload")
            stack.send(msg)
            assert "BAYES" in stack.sink.find(marker).header("X-Spam-Report")[0]
        log = filterd.log()[offset:]
        assert "exited unexpectedly" not in log and "heartbeat" not in log, log


def _workers(parent: int) -> list[int]:
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    return [int(pid) for pid in children]


def test_a_stopped_worker_is_detected_and_replaced_and_mail_flows_again(stack: Stack) -> None:
    config = {"milter": {"workers": 1, "heartbeat_timeout": 3.0}}
    with stack.configured(config) as filterd:
        assert filterd.proc is not None
        offset = len(filterd.log())
        msg, marker = make_message("before the hang")
        stack.send(msg)
        stack.sink.find(marker)
        (worker,) = _workers(filterd.proc.pid)
        os.kill(worker, signal.SIGSTOP)  # the only worker: nothing flows until it is replaced
        started = time.monotonic()
        msg, marker = make_message("while hung")
        stack.send(msg)  # waits in the socket's backlog until the new worker takes it
        stack.sink.find(marker)
        elapsed = time.monotonic() - started
        assert elapsed < 15, f"mail flowed again only after {elapsed:.1f} s"
        log = filterd.log()[offset:]
        assert f"worker {worker} made no progress" in log
        (replacement,) = _workers(filterd.proc.pid)
        assert replacement != worker
        assert not Path(f"/proc/{worker}").exists()

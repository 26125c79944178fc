"""End to end through Postfix and filterd: the smaller holes of the attacker review stay closed."""

from __future__ import annotations

import json
import math
import shutil
import smtplib
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner

from filterd.cli.filterctl import cli
from tests.harness.stack import Stack, make_message

ROOT = Path(__file__).resolve().parents[1]
# the distribution's interpreter: the test's own may live where uid nobody cannot execute it
SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin") or sys.executable

pytestmark = pytest.mark.stack

SPAMMY = (
    "Dear friend,\r\nYou have been selected to receive a FREE credit card merchant account with no setup "
    "fees! Accept credit cards TODAY and increase your sales. Click here to apply now:\r\n"
    "http://www.merchant-offer.example.biz/apply\r\nTo be removed from our mailing list reply with REMOVE.\r\n"
)


def test_a_rejected_message_stores_no_bayes_signature(stack: Stack, redis_server) -> None:
    """Rejected mail is never in a mailbox: no signature key for it in Redis.  Delivered mail keeps one."""
    prefix = f"e2e-sig-{uuid.uuid4().hex[:8]}:"
    client = redis.Redis.from_url(redis_server.url)
    bayes = {"enabled": True, "storage": "redis", "signature": True}  # signatures are opt-in
    base = {"redis": {"url": redis_server.url, "key_prefix": prefix}, "checks": {"bayes": bayes}}
    rejecting = {**base, "actions": {"reject": 3.0, "add_header": math.inf}}
    with stack.configured(rejecting):
        msg, marker = make_message("Accept credit cards today", SPAMMY)
        with pytest.raises(smtplib.SMTPDataError) as refused:
            stack.send(msg)
        assert refused.value.smtp_code == 550
    assert list(client.scan_iter(f"{prefix}bayes:sig:*")) == []  # filterd stopped: its queue was sent
    with stack.configured(base):
        msg, marker = make_message("Accept credit cards today", SPAMMY)
        assert stack.send(msg) == {}
        [sig] = stack.sink.find(marker).header("X-Filterd-Signature")
    assert [k.decode() for k in client.scan_iter(f"{prefix}bayes:sig:*")] == [f"{prefix}bayes:sig:{sig}"]
    client.close()


def _filterctl(config: Path, *args: str) -> Any:
    return CliRunner().invoke(cli, ["--config", str(config), *args], catch_exceptions=False)


def _without_date(msg: bytes) -> bytes:
    return b"\r\n".join(line for line in msg.split(b"\r\n") if not line.startswith(b"Date:"))


def test_recipient_allow_list_applies_only_when_every_recipient_is_on_it(stack: Stack) -> None:
    """A message scored 16 (reject at 15): to the allow-listed recipient alone it is delivered
    (16 - 20); to it and an ordinary recipient it is rejected for both, as spam to bob must be.
    A clean message to the mix reaches both, without RCPT_ALLOWED in the report."""
    allow = stack.dir / f"rcpt-allow-{uuid.uuid4().hex[:6]}"
    allow.write_text("postmaster@example.net\nabuse@example.net\n")
    config = {
        "checks": {"recipient_lists": {"allow_file": str(allow)}},
        "scores": {"MISSING_DATE": 16.0},
    }
    with stack.configured(config):
        spam, marker = make_message("to the allowed only")
        assert stack.send(_without_date(spam), rcpts=["postmaster@example.net", "abuse@example.net"]) == {}
        got = stack.sink.find(marker)
        assert sorted(got.rcpts) == ["abuse@example.net", "postmaster@example.net"]
        report = " ".join(got.header("X-Spam-Report"))
        assert "RCPT_ALLOWED" in report and "MISSING_DATE" in report

        spam, marker = make_message("to a mix")
        with pytest.raises(smtplib.SMTPDataError) as refused:
            stack.send(_without_date(spam), rcpts=["postmaster@example.net", "bob@example.net"])
        assert refused.value.smtp_code == 550

        clean, clean_marker = make_message("clean, to a mix")
        assert stack.send(clean, rcpts=["postmaster@example.net", "bob@example.net"]) == {}
        got = stack.sink.find(clean_marker)
        assert sorted(got.rcpts) == ["bob@example.net", "postmaster@example.net"]
        assert "RCPT_ALLOWED" not in " ".join(got.header("X-Spam-Report"))
    assert stack.sink.count(marker) == 0


# Run as another user: try to hand a message to the re-injection listener, print what happened.
_LOCAL_USER_CLIENT = """
import smtplib, socket, sys
path = sys.argv[1]
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    sock.connect(path)
except OSError as exc:
    print("refused", type(exc).__name__)
    raise SystemExit(0)
class Over(smtplib.SMTP):
    def _get_socket(self, host, port, timeout):
        return sock
with Over(path, 25) as smtp:
    print("sent", smtp.sendmail("evil@attacker.test", ["victim@example.net"], sys.stdin.read()))
"""


def test_a_local_user_cannot_reach_the_reinjection_listener(stack: Stack) -> None:
    """The milter-less listener is a socket in Postfix's private directory: uid nobody cannot
    connect, so it cannot send mail that filterd never sees."""
    msg, marker = make_message("unfiltered, from a local user")
    result = subprocess.run(
        [SYSTEM_PYTHON, "-c", _LOCAL_USER_CLIENT, str(stack.postfix.reinject_socket)],
        input=msg.decode(),
        capture_output=True,
        text=True,
        user="nobody",
        timeout=30,
        check=True,
    )
    assert result.stdout.strip() == "refused PermissionError", result.stdout + result.stderr
    time.sleep(1.0)
    assert stack.sink.count(marker) == 0


def test_no_milterless_tcp_listener_is_shipped() -> None:
    """Every inet smtpd in contrib/postfix/master.cf goes through the milters: a local user can
    connect to any TCP port on 127.0.0.1."""
    services: list[list[str]] = []
    for line in (ROOT / "contrib" / "postfix" / "master.cf").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        if line[0] in " \t":
            services[-1].append(line.strip())
        else:
            services.append([line])
    for service in services:
        fields = service[0].split()
        if fields[1] == "inet" and fields[7] == "smtpd":
            assert "-o smtpd_milters=" not in service, service


def test_release_through_the_private_listener_delivers_exactly_once(stack: Stack, tmp_path: Path) -> None:
    config = {"actions": {"add_header": 2.0, "quarantine": 3.0}, "scores": {"MISSING_DATE": 4.0}}
    with stack.configured(config) as filterd:
        msg, marker = make_message("held, then released")
        stack.send(_without_date(msg))
        time.sleep(1.0)
        assert stack.sink.count(marker) == 0
        rows = [
            json.loads(line)
            for line in _filterctl(filterd.config_path, "quarantine", "list", "--json").output.splitlines()
        ]
        [qid] = [r["id"] for r in rows if marker in (r["subject"] or "")]
        released = _filterctl(filterd.config_path, "quarantine", "release", qid)
        assert released.exit_code == 0, released.output
        assert f"via {stack.postfix.reinject_socket}" in released.output
        got = stack.sink.find(marker)
        assert got.rcpts == ("bob@example.net",)
        again = _filterctl(filterd.config_path, "quarantine", "release", qid)
        assert again.exit_code == 1 and "already released" in again.output
        time.sleep(1.0)
        assert stack.sink.count(marker) == 1

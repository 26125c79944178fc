"""End to end: a hung clamd stalls only the messages being scanned, never unrelated sessions.

Reported: with clamd stopped (SIGSTOP), sessions that had nothing to scan yet waited ~30 s for the
SMTP greeting and ~15 s at MAIL/RCPT, released exactly when the stuck scans timed out.  Measured
here (thread dumps with py-spy, FILTERD_STALL_DUMP): the supervisor's heartbeat took a callback
stuck in a clamd scan for the [checks.antivirus] timeout (30 s by default) as a hung worker once it
passed [milter] heartbeat_timeout (also 30 s by default: a race, hence "3 of 11 runs"), killed the
worker with its sessions, and the replacement spent the whole scan timeout in the antivirus
check's start-up asking the stopped clamd for its VERSION, accepting nothing meanwhile.  Here the
same race is made certain (a heartbeat_timeout below the scan timeout): ten sessions sit in
end-of-data waiting for a hung clamd while other sessions connect, say EHLO, MAIL and RCPT, round
after round; every answer must come fast.
"""

from __future__ import annotations

import os
import secrets
import smtplib
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import avsamples
from tests.harness.clamd import ClamdServer
from tests.harness.net import wait_for
from tests.harness.redis import RedisServer
from tests.harness.stack import Stack

pytestmark = pytest.mark.stack

HEARTBEAT = 8.0  # [milter] heartbeat_timeout
SCAN_TIMEOUT = 10.0  # [checks.antivirus] timeout: above the heartbeat, as 30 s is not below 30 s
WATCH = 20.0  # seconds of unrelated sessions while clamd is stopped
SCANS = 10
PLAIN = 10
FAST = 2.0  # seconds any one SMTP answer of an unrelated session may take


@pytest.fixture(scope="module")
def clamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClamdServer]:
    server = ClamdServer(tmp_path_factory.mktemp("stall-clamd"))
    server.start()
    yield server
    server.stop()


def _scan_session(stack: Stack, results: list[Any]) -> None:
    """A message with an attachment: it waits in end-of-data for the hung clamd."""
    payload = f"attachment {uuid.uuid4()}".encode() * 50
    msg = avsamples.attachment("with attachment", "a.bin", "application/octet-stream", payload)
    started = time.monotonic()
    try:
        with smtplib.SMTP("127.0.0.1", stack.postfix.port, timeout=120) as smtp:
            smtp.sendmail("alice@example.org", ["bob@example.net"], msg)
        results.append(("delivered", time.monotonic() - started))
    except smtplib.SMTPResponseException as exc:
        results.append((exc.smtp_code, time.monotonic() - started))
    except Exception as exc:  # counted: every session must end in an answer
        results.append((repr(exc), time.monotonic() - started))


def _plain_session(stack: Stack, timings: list[dict[str, float]]) -> None:
    """No message: greeting, EHLO, MAIL, RCPT, RSET, QUIT, each answer timed."""
    t: dict[str, float] = {}
    started = time.monotonic()
    smtp = smtplib.SMTP(timeout=120)
    smtp.connect("127.0.0.1", stack.postfix.port)
    t["greeting"] = time.monotonic() - started
    for name, call in (
        ("ehlo", lambda: smtp.ehlo("client.example.org")),
        ("mail", lambda: smtp.mail("carol@example.org")),
        ("rcpt", lambda: smtp.rcpt("dave@example.net")),
        ("rset", lambda: smtp.rset()),
    ):
        step = time.monotonic()
        reply = call()
        t[name] = time.monotonic() - step
        if reply[0] >= 400:  # e.g. 451 4.7.1: Postfix found no milter to talk to
            t[f"{name} refused {reply[0]}"] = float("inf")
            break
    smtp.close()
    timings.append(t)


def _dump_threads(stack: Stack, where: Path) -> None:
    """Stacks of every filterd process (py-spy, when FILTERD_STALL_DUMP names its path)."""
    spy = os.environ.get("FILTERD_STALL_DUMP")
    if not spy:
        return
    pids = subprocess.run(
        ["pgrep", "-f", f"filterd --config {stack.filterd.config_path}"], capture_output=True, text=True
    ).stdout.split()
    for pid in pids:
        out = subprocess.run([spy, "dump", "--native", "--pid", pid], capture_output=True, text=True)
        (where / f"stack-{pid}-{time.time():.0f}.txt").write_text(out.stdout + out.stderr)


def test_hung_clamd_does_not_stall_sessions_that_are_not_scanning(
    stack: Stack, clamd: ClamdServer, redis_server: RedisServer, tmp_path: Path
) -> None:
    config = {
        "redis": {"url": redis_server.url, "key_prefix": f"stall{secrets.token_hex(4)}:"},
        "checks": {
            "antivirus": {
                "enabled": True,
                "sockets": [clamd.unix_address],
                "timeout": SCAN_TIMEOUT,
                "connect_timeout": 1.0,
                "on_unavailable": "tempfail",
                "cache_ttl": 0,
            }
        },
    }
    scans: list[Any] = []
    timings: list[dict[str, float]] = []
    dumps = Path(os.environ.get("FILTERD_STALL_DIR", tmp_path))
    # one worker: the one that holds the stuck scans is the one every session needs
    config["milter"] = {"heartbeat_timeout": HEARTBEAT, "workers": 1}
    start = len(stack.filterd.log())
    with stack.configured(config) as filterd:
        # the pipeline is built (the parent says which clamd it found; workers are forked with it)
        wait_for(
            lambda: filterd.log()[start:].count("antivirus: clamd ClamAV") >= 1,
            30,
            "the pipeline to be built",
        )
        clamd.pause()
        try:
            scanners = [threading.Thread(target=_scan_session, args=(stack, scans)) for _ in range(SCANS)]
            for t in scanners:
                t.start()
            time.sleep(1.0)  # the scans are now waiting in end-of-data
            stopped = time.monotonic()
            while time.monotonic() - stopped < WATCH:
                before = len(timings)
                plain = [threading.Thread(target=_plain_session, args=(stack, timings)) for _ in range(PLAIN)]
                for t in plain:
                    t.start()
                deadline = time.monotonic() + FAST * 2
                while any(t.is_alive() for t in plain) and time.monotonic() < deadline:
                    time.sleep(0.1)
                if any(t.is_alive() for t in plain):
                    _dump_threads(stack, dumps)
                for t in plain:
                    t.join()
                assert len(timings) == before + PLAIN
                time.sleep(0.5)
        finally:
            clamd.resume()
        for t in scanners:
            t.join()
        log = filterd.log()[start:]
    slow = [t for t in timings if max(t.values()) > FAST]
    assert not slow, f"{len(slow)} of {len(timings)} unrelated sessions waited: {slow[:5]}"
    assert "made no progress" not in log  # no worker was taken for hung while it waited for clamd
    # every scan session got an answer: 451 (clamd timed out) after waiting for it
    assert len(scans) == SCANS
    assert all(code == 451 for code, _ in scans), scans
    assert min(took for _, took in scans) > 3.0  # they really did wait for the stopped clamd

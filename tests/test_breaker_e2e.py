"""End to end through Postfix: a hung clamd and a silent DNS server cost each message nothing once
their circuit breaker is open, every message is accounted for, and checking resumes by itself."""

from __future__ import annotations

import secrets
import smtplib
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness import avsamples
from tests.harness.clamd import ClamdServer
from tests.harness.dns import LocalDns
from tests.harness.net import wait_for
from tests.harness.stack import Stack, make_message

pytestmark = pytest.mark.stack

# open long enough that the messages after the first failures all meet it open
BREAKER = {"failures": 2, "window": 60.0, "open_seconds": 10.0, "max_open_seconds": 20.0}
# one worker: each worker process has its own breakers and learns by itself
ONE_WORKER = {"workers": 1}


@pytest.fixture(scope="module")
def clamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClamdServer]:
    server = ClamdServer(tmp_path_factory.mktemp("breaker-clamd"))
    server.start()
    yield server
    server.stop()


def _timed_send(stack: Stack, msg: bytes, sender: str = "alice@example.org") -> tuple[Any, float]:
    """(None, seconds) when accepted; (SMTP code, seconds) when refused."""
    started = time.monotonic()
    try:
        stack.send(msg, sender)
        return None, time.monotonic() - started
    except smtplib.SMTPResponseException as exc:
        return exc.smtp_code, time.monotonic() - started


def antivirus(clamd: ClamdServer, timeout: float, on_unavailable: str) -> dict[str, Any]:
    """The antivirus check on the test clamd, its result cache off (every message is scanned)."""
    return {
        "enabled": True,
        "sockets": [clamd.unix_address],
        "timeout": timeout,
        "connect_timeout": 1.0,
        "on_unavailable": on_unavailable,
        "cache_ttl": 0,
    }


def test_hung_clamd_costs_nothing_once_the_breaker_opens_and_scanning_resumes(
    stack: Stack, clamd: ClamdServer
) -> None:
    timeout = 3.0
    config = {
        "breaker": BREAKER,
        "milter": ONE_WORKER,
        "checks": {"antivirus": antivirus(clamd, timeout, "accept")},  # fail-open: delivered "Not scanned"
    }
    start = len(stack.filterd.log())
    with stack.configured(config) as filterd:
        _worker_found_clamd(filterd, start)
        clamd.pause()
        try:
            sent = []
            for i in range(10):
                msg, marker = make_message(f"hung {i}", body=f"body {uuid.uuid4()}\r\n")
                code, took = _timed_send(stack, msg)
                assert code is None, code  # on_unavailable = accept
                sent.append((marker, took))
        finally:
            clamd.resume()
        # the first messages pay the timeout (and open the breaker), the later ones nothing
        assert all(took >= timeout for _, took in sent[: BREAKER["failures"]]), sent
        assert all(took < timeout / 3 for _, took in sent[BREAKER["failures"] :]), sent
        for marker, _ in sent:  # every one delivered, once, marked as not scanned
            got = stack.sink.find(marker)
            assert got.header("X-Virus-Status") == ["Not scanned (virus scanner unavailable)"]
            assert stack.sink.count(marker) == 1
        # the breaker's state is in the report header of the messages it failed at once
        last = stack.sink.find(sent[-1][0])
        report = " ".join(last.header("X-Spam-Report"))
        assert "CLAM_VIRUS_FAIL" in report and "circuit breaker open for clamd unix:" in report
        assert "circuit breaker open after 2 failures in a row" in filterd.log()[start:]
        # clamd is back: within the back-off a virus is caught again
        resumed = time.monotonic()
        while True:
            eicar, marker = make_message("eicar", body=avsamples.EICAR.decode() + "\r\n")
            code, _ = _timed_send(stack, eicar)
            if code == 554:
                break
            assert code is None
            assert stack.sink.find(marker).header("X-Virus-Status")[0].startswith("Not scanned")
            assert time.monotonic() - resumed < BREAKER["open_seconds"] + timeout + 2
            time.sleep(0.3)
        assert "circuit breaker closed" in filterd.log()[start:]


def _worker_found_clamd(filterd: Any, start: int) -> None:
    """Wait until the antivirus check is built (the parent asks clamd's VERSION once; the workers
    are forked with it), so that the failures the test counts are the messages' own."""
    wait_for(lambda: filterd.log()[start:].count("antivirus: clamd ClamAV") >= 1, 30, "the pipeline")


class SilentableDns:
    """A UDP relay to the local DNS server that can be told to drop every query (a silent server)."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.silent = False
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                query, client = self.sock.recvfrom(4096)
            except OSError:
                return
            if self.silent:
                continue
            threading.Thread(target=self._relay, args=(query, client), daemon=True).start()

    def _relay(self, query: bytes, client: Any) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as up:
            up.settimeout(2)
            up.sendto(query, ("127.0.0.1", self.upstream))
            try:
                reply = up.recv(4096)
            except OSError:
                return
        self.sock.sendto(reply, client)

    def close(self) -> None:
        self.sock.close()


def test_silent_dns_costs_nothing_once_the_breaker_opens_and_lookups_resume(
    stack: Stack, local_dns: LocalDns
) -> None:
    # a new sender domain per message: an answer in the resolver's cache would need no server
    domain = f"breaker{secrets.token_hex(4)}.test"
    for i in range(40):
        local_dns.add(f'd{i}.{domain}. 60 IN TXT "v=spf1 ip4:127.0.0.1 -all"')
    senders = (f"a@d{i}.{domain}" for i in range(40))
    relay = SilentableDns(local_dns.port)
    lookup = 0.5 * 2  # [dns] timeout x attempts: what one lookup of the silent server costs
    config = {
        "breaker": BREAKER,
        "milter": ONE_WORKER,
        "dns": {"nameservers": ["127.0.0.1"], "port": relay.port, "timeout": 0.5, "attempts": 2},
    }
    try:
        with stack.configured(config) as filterd:
            start = len(filterd.log())
            sender = next(senders)
            msg, marker = make_message("dns ok", sender=sender)
            assert _timed_send(stack, msg, sender)[0] is None
            assert "SPF_PASS" in " ".join(stack.sink.find(marker).header("X-Spam-Report"))
            relay.silent = True
            sent = []
            for i in range(10):
                sender = next(senders)
                msg, marker = make_message(f"silent {i}", sender=sender)
                code, took = _timed_send(stack, msg, sender)
                assert code is None, code  # SPF temperror scores; the message goes on
                sent.append((marker, took))
            assert all(took < lookup / 2 for _, took in sent[BREAKER["failures"] :]), sent
            for marker, _ in sent:  # every one delivered, once
                stack.sink.find(marker)
                assert stack.sink.count(marker) == 1
            report = " ".join(stack.sink.find(sent[-1][0]).header("X-Spam-Report"))
            assert "SPF_TEMPERROR" in report and "circuit breaker open for DNS 127.0.0.1" in report
            assert "circuit breaker open after 2 failures in a row" in filterd.log()[start:]
            # the server answers again: within the back-off SPF passes again
            relay.silent = False
            resumed = time.monotonic()
            while True:
                sender = next(senders)
                msg, marker = make_message("dns back", sender=sender)
                assert _timed_send(stack, msg, sender)[0] is None
                if "SPF_PASS" in " ".join(stack.sink.find(marker).header("X-Spam-Report")):
                    break
                assert time.monotonic() - resumed < BREAKER["open_seconds"] + lookup + 2
                time.sleep(0.3)
    finally:
        relay.close()


def test_hung_clamd_fail_closed_tempfails_at_once_and_nothing_is_lost(
    stack: Stack, clamd: ClamdServer
) -> None:
    """on_unavailable = tempfail: once open, each message gets its 451 at once (the log line says
    why), and the client's retries are delivered once each when clamd is back."""
    timeout = 3.0
    config = {
        "breaker": BREAKER,
        "milter": ONE_WORKER,
        "checks": {"antivirus": antivirus(clamd, timeout, "tempfail")},
    }
    sent: dict[str, bytes] = {}
    start = len(stack.filterd.log())
    with stack.configured(config) as filterd:
        _worker_found_clamd(filterd, start)
        clamd.pause()
        try:
            results = []
            for i in range(8):
                msg, marker = make_message(f"closed {i}", body=f"body {uuid.uuid4()}\r\n")
                sent[marker] = msg
                results.append(_timed_send(stack, msg))
        finally:
            clamd.resume()
        assert all(code == 451 for code, _ in results), results
        assert all(took < timeout / 3 for _, took in results[BREAKER["failures"] :]), results
        log = filterd.log()[start:]
        lines = [line for line in log.splitlines() if "action=tempfail" in line]
        assert len(lines) == len(sent)
        assert "reason='clamd unavailable: circuit breaker open for clamd unix:" in lines[-1]
        # the client retries until clamd is scanning again: each message delivered once
        deadline = time.monotonic() + BREAKER["open_seconds"] + timeout + 5
        pending = dict(sent)
        while pending:
            assert time.monotonic() < deadline, f"{len(pending)} still refused"
            for marker, msg in list(pending.items()):
                code, _ = _timed_send(stack, msg)
                if code is None:
                    del pending[marker]
                else:
                    assert code == 451
            time.sleep(0.3)
        for marker in sent:
            got = stack.sink.find(marker)
            assert got.header("X-Virus-Status") == ["Clean"]
            assert stack.sink.count(marker) == 1

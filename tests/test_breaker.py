"""The circuit breaker's state machine, with an injected clock, and each client's use of it."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from filterd import breaker as breaker_mod
from filterd.breaker import Breaker, BreakerOpen, BreakerSettings, State, breaker_for, states
from filterd.clamd import ClamdError, ClamdPool
from filterd.dns import DnsSettings, DnsTempError, Resolver
from filterd.failures import is_dependency_failure
from tests.harness.net import free_port

SETTINGS = BreakerSettings(failures=3, window=10.0, open_seconds=5.0, max_open_seconds=20.0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(autouse=True)
def fresh_registry() -> Iterator[None]:
    saved = dict(breaker_mod._registry)
    breaker_mod._registry.clear()
    yield
    breaker_mod._registry.clear()
    breaker_mod._registry.update(saved)


def test_opens_after_n_failures_in_a_row(clock: Clock) -> None:
    b = Breaker("clamd x", SETTINGS, clock)
    for _ in range(2):
        assert b.refusal() is None
        b.failure("timed out")
    assert b.state is State.CLOSED
    b.failure("timed out")
    assert b.state is State.OPEN
    why = b.refusal()
    assert why is not None and why.startswith("circuit breaker open for clamd x")
    assert "timed out" in why and "next try in 5.0s" in why


def test_a_success_starts_the_count_again(clock: Clock) -> None:
    b = Breaker("b", SETTINGS, clock)
    b.failure("e")
    b.failure("e")
    b.success()
    b.failure("e")
    b.failure("e")
    assert b.state is State.CLOSED


def test_failures_spread_wider_than_the_window_do_not_open(clock: Clock) -> None:
    b = Breaker("b", SETTINGS, clock)
    b.failure("e")
    b.failure("e")
    clock.now += 11  # the streak began more than `window` seconds ago: it starts over
    b.failure("e")
    assert b.state is State.CLOSED
    b.failure("e")
    b.failure("e")
    assert b.state is State.OPEN


def _open(b: Breaker) -> None:
    for _ in range(SETTINGS.failures):
        b.failure("down")


def test_half_open_lets_exactly_one_probe_through(clock: Clock) -> None:
    b = Breaker("b", SETTINGS, clock)
    _open(b)
    clock.now += 4.9
    assert b.refusal() is not None
    clock.now += 0.2
    assert b.state is State.HALF_OPEN
    assert b.refusal() is None  # the probe
    why = b.refusal()
    assert why is not None and "half-open" in why  # everyone else still fails at once
    b.success()
    assert b.state is State.CLOSED
    assert b.refusal() is None


def test_a_failed_probe_doubles_the_back_off_up_to_the_maximum(clock: Clock) -> None:
    b = Breaker("b", SETTINGS, clock)
    _open(b)
    waits = []
    for _ in range(4):
        opened_at = clock.now
        while b.refusal() is not None:
            clock.now += 0.5
        waits.append(clock.now - opened_at)
        b.failure("still down")
        assert b.state is State.OPEN
    assert waits == [5.0, 10.0, 20.0, 20.0]
    # closing resets the back-off
    clock.now += 20
    assert b.refusal() is None
    b.success()
    _open(b)
    clock.now += 5
    assert b.state is State.HALF_OPEN


def test_a_probe_that_never_reports_frees_its_slot_after_the_window(clock: Clock) -> None:
    b = Breaker("b", SETTINGS, clock)
    _open(b)
    clock.now += 5
    assert b.refusal() is None  # the probe's caller dies without a word
    assert b.refusal() is not None
    clock.now += SETTINGS.window + 1
    assert b.refusal() is None


def test_release_gives_the_probe_back(clock: Clock) -> None:
    b = Breaker("b", SETTINGS, clock)
    _open(b)
    clock.now += 5
    assert b.refusal() is None
    b.release()
    assert b.refusal() is None


def test_disabled_breaker_never_refuses(clock: Clock) -> None:
    b = Breaker("b", BreakerSettings(enabled=False), clock)
    for _ in range(10):
        b.failure("e")
    assert b.refusal() is None


def test_state_changes_are_logged_once(clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    b = Breaker("clamd y", SETTINGS, clock)
    with caplog.at_level(logging.INFO, logger="filterd.breaker"):
        _open(b)
        b.failure("late")  # already open: not logged again
        clock.now += 5
        assert b.refusal() is None
        b.success()
        b.success()
    records = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert len(records) == 2, records
    assert records[0][0] == "WARNING" and "clamd y: circuit breaker open after 3 failures" in records[0][1]
    assert records[1][0] == "INFO" and "closed" in records[1][1]


def test_registry_lists_every_breaker_with_its_state(clock: Clock) -> None:
    a = breaker_for("clamd a", SETTINGS)
    assert breaker_for("clamd a", BreakerSettings(failures=1)) is a  # a reload keeps the state
    assert a.settings.failures == 1
    breaker_for("DNS 127.0.0.1", SETTINGS)
    a.failure("refused")
    got = {s["name"]: s for s in states()}
    assert set(got) == {"clamd a", "DNS 127.0.0.1"}
    assert got["clamd a"]["state"] == "open" and got["clamd a"]["last_error"] == "refused"
    assert got["clamd a"]["opened"] == 1
    assert got["DNS 127.0.0.1"]["state"] == "closed"


def test_thread_safe_one_probe_among_many_threads(clock: Clock) -> None:
    b = Breaker("b", SETTINGS, clock)
    _open(b)
    clock.now += 5
    let_through = []
    barrier = threading.Barrier(16)

    def ask() -> None:
        barrier.wait()
        if b.refusal() is None:
            let_through.append(1)

    threads = [threading.Thread(target=ask) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(let_through) == 1


# -- the clients: a real socket that accepts and never answers, and one that answers nothing ----


@pytest.fixture
def silent_tcp() -> Iterator[int]:
    """A TCP listener that never accepts: connects succeed (the backlog), nothing is answered."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(50)
    yield srv.getsockname()[1]
    srv.close()


def test_clamd_pool_fails_fast_once_open_and_says_so(silent_tcp: int) -> None:
    settings = BreakerSettings(failures=2, open_seconds=30.0)
    pool = ClamdPool((f"inet:{silent_tcp}@127.0.0.1",), 0.3, 0.3, 1.0, breaker=settings)
    for _ in range(2):
        with pytest.raises(ClamdError):
            pool.scan(b"x")
    started = time.monotonic()
    with pytest.raises(ClamdError) as info:
        pool.scan(b"x")
    assert time.monotonic() - started < 0.05
    assert isinstance(info.value, BreakerOpen)
    assert is_dependency_failure(info.value)  # so each check's on_error policy applies unchanged
    assert "circuit breaker open for clamd inet:" in str(info.value)


def test_clamd_pool_moves_past_an_open_breaker_to_the_next_socket(silent_tcp: int) -> None:
    dead = f"inet:{free_port()}@127.0.0.1"  # refused
    settings = BreakerSettings(failures=1, open_seconds=30.0)
    pool = ClamdPool((dead, f"inet:{silent_tcp}@127.0.0.1"), 0.3, 0.3, 0.0, breaker=settings)
    with pytest.raises(ClamdError):
        pool.scan(b"x")  # both fail once: both open
    with pytest.raises(ClamdError) as info:
        pool.scan(b"x")
    assert str(info.value).count("circuit breaker open") == 2


def test_dns_resolver_opens_on_a_silent_server_and_fails_fast() -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        port = silent.getsockname()[1]
        res = Resolver(
            DnsSettings(nameservers=("127.0.0.1",), port=port, timeout=0.2, attempts=1),
            BreakerSettings(failures=2, open_seconds=30.0),
        )
        for _ in range(2):
            with pytest.raises(DnsTempError):
                res.txt("example.test")
        started = time.monotonic()
        with pytest.raises(DnsTempError) as info:
            res.txt("other.example.test")
        assert time.monotonic() - started < 0.05
        assert "circuit breaker open for DNS 127.0.0.1" in str(info.value)
        # dnspython's own entry point (pyspf's) is guarded too, with an error pyspf reads as temperror
        import dns.resolver

        with pytest.raises(dns.resolver.NoNameservers):
            res.dnspython.resolve("example.test", "TXT")
    finally:
        silent.close()


def test_dns_a_silent_remote_name_does_not_open_the_breaker(local_dns: Any) -> None:
    """A sender's domain whose servers never answer times out, but our server answers: not a failure."""
    local_dns.make_silent("silent-remote.test")
    res = Resolver(
        DnsSettings(nameservers=("127.0.0.1",), port=local_dns.port, timeout=0.2, attempts=1),
        BreakerSettings(failures=2, open_seconds=30.0),
    )
    for _ in range(4):
        with pytest.raises(DnsTempError) as info:
            res.txt("silent-remote.test")
        assert "circuit breaker" not in str(info.value)
    assert res.dnspython.breaker is not None and res.dnspython.breaker.state is State.CLOSED

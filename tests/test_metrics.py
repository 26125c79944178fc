"""Prometheus metrics: what a message records, what a worker adds up, and the real daemon's /metrics.

The unit tests record into an in-memory registry (this test process never sets
PROMETHEUS_MULTIPROC_DIR); the end-to-end test runs filterd with two workers in multiprocess mode
behind the real Postfix and reads /metrics over HTTP.
"""

from __future__ import annotations

import email.utils
import os
import secrets
import signal
import smtplib
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from filterd import metrics
from filterd.breaker import BreakerSettings, breaker_for, forget_all
from filterd.check import Check, Finding, Output, Stage
from filterd.config import config_warnings, parse_config
from filterd.driver import SmtpContext, scan
from filterd.metrics import Metrics, QuarantineCollector
from filterd.pipeline import Pipeline, context_for
from filterd.quarantine.store import QuarantineSettings, QuarantineStore
from filterd.redisstate import RedisCheckSettings, RedisGuard
from filterd.results import Action, Verdict
from filterd.services import Services
from filterd.settings import ConfigError
from filterd.transaction import Session, Transaction
from tests.harness.clamd import ClamdServer, cache_key_file
from tests.harness.net import free_port, run_sessions, wait_for
from tests.harness.redis import RedisServer
from tests.harness.stack import Stack, make_message

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
CLEAN = (
    b"From: a@example.org\r\nTo: b@example.net\r\nSubject: hi\r\n"
    + f"Date: {email.utils.formatdate()}\r\n".encode()
    + b"Message-ID: <1@example.org>\r\n\r\nhello\r\n"
)


class Scripted(Check):
    """A test check: yields `outputs`, or raises when `fail`."""

    stage = Stage.EOM

    def __init__(self, name: str, outputs: list[Output], fail: bool = False, on_error: str = "open") -> None:
        config = parse_config({})
        settings = config.check_settings("header_sanity").__class__(on_error=on_error)
        super().__init__(context_for(config, "header_sanity", Services(config), settings))
        self.name = name  # type: ignore[misc]
        self.outputs, self.fail = outputs, fail

    def run(self, tx: Transaction) -> Iterable[Output]:
        if self.fail:
            raise ConnectionError("backend unreachable")
        return list(self.outputs)


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Metrics, CollectorRegistry]]:
    """This process's metrics on: what the driver records lands in an in-memory registry."""
    registry = CollectorRegistry()
    m = Metrics(registry)
    monkeypatch.setattr(metrics, "_metrics", m)
    yield m, registry


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    metrics.flush()  # what the messages recorded since the last flush
    got = registry.get_sample_value(name, labels)
    return 0.0 if got is None else got


def pipeline(*checks: Check, **config: Any) -> Pipeline:
    cfg = parse_config(config)
    return Pipeline(cfg, checks, Services(cfg))


# -- what one message records ------------------------------------------------------------------


def test_a_scanned_message_records_its_action_symbols_and_check_times(
    recorded: tuple[Metrics, CollectorRegistry],
) -> None:
    _, registry = recorded
    p = pipeline(
        Scripted("first", [Finding("ALPHA", "a", 1.0), Finding("BETA", "b", 2.0)]),
        Scripted("second", [Finding("ALPHA", "again", 1.0)]),
    )
    for _ in range(3):
        scan(
            p,
            CLEAN,
            SmtpContext(client_addr="192.0.2.1", mail_from="a@example.org", rcpts=("b@example.net",)),
        )
    assert value(registry, "filterd_messages_total", direction="inbound", action="accept") == 3
    assert value(registry, "filterd_symbols_total", symbol="ALPHA") == 6
    assert value(registry, "filterd_symbols_total", symbol="BETA") == 3
    for check in ("first", "second"):
        assert value(registry, "filterd_check_cpu_seconds_count", check=check) == 3
        assert value(registry, "filterd_check_cpu_seconds_bucket", check=check, le="1.0") == 3
    assert value(registry, "filterd_stage_seconds_count", stage="eom") == 3
    assert value(registry, "filterd_stage_seconds_count", stage="connect") == 0  # the connection's


def test_the_batched_histograms_equal_observing_one_message_at_a_time(
    recorded: tuple[Metrics, CollectorRegistry],
) -> None:
    """`flush` adds to prometheus_client's histogram internals: they must give what observe() does."""
    m, registry = recorded
    reference = Histogram("reference", "r", buckets=metrics.CHECK_BUCKETS, registry=CollectorRegistry())
    times = [0.0, 0.00005, 0.0001, 0.0001000001, 0.003, 0.003, 0.7, 1.0, 1.5, 42.0]
    for seconds in times:
        tx = Transaction.start(Session())
        tx.check_cpu["timed"] = seconds
        m.record_message(tx, Verdict(0.0, 5.0, Action.ACCEPT, []))
        reference.observe(seconds)
    m.flush()
    expected = {
        s.labels.get("le"): s.value for s in reference.collect()[0].samples if s.name != "reference_created"
    }
    got = {
        s.labels.get("le"): s.value
        for s in m.check_cpu.collect()[0].samples
        if s.labels.get("check") == "timed" and not s.name.endswith("_created")
    }
    assert got == expected
    assert value(registry, "filterd_check_cpu_seconds_bucket", check="timed", le="+Inf") == len(times)


def test_a_rejected_message_counts_under_reject(recorded: tuple[Metrics, CollectorRegistry]) -> None:
    _, registry = recorded
    p = pipeline(Scripted("spammy", [Finding("HUGE", "h", 100.0)]))
    scan(p, CLEAN, SmtpContext(mail_from="a@example.org", rcpts=("b@example.net",)))
    assert value(registry, "filterd_messages_total", direction="inbound", action="reject") == 1
    assert value(registry, "filterd_messages_total", direction="inbound", action="accept") == 0


def test_check_errors_are_counted_per_check_and_policy(recorded: tuple[Metrics, CollectorRegistry]) -> None:
    _, registry = recorded
    fail_open = pipeline(Scripted("flaky", [], fail=True, on_error="open"))
    scan(fail_open, CLEAN)
    scan(fail_open, CLEAN)
    fail_closed = pipeline(Scripted("strict", [], fail=True, on_error="closed"))
    _, verdict = scan(fail_closed, CLEAN)
    assert verdict.action.value == "tempfail"  # a dependency failure: 4xx
    assert value(registry, "filterd_check_errors_total", check="flaky", policy="open") == 2
    assert value(registry, "filterd_check_errors_total", check="strict", policy="closed") == 1
    assert value(registry, "filterd_symbols_total", symbol="CHECK_ERROR") == 2
    assert value(registry, "filterd_messages_total", direction="inbound", action="tempfail") == 1


def test_a_redis_outage_counts_as_an_error_of_the_check_under_its_policy(
    recorded: tuple[Metrics, CollectorRegistry],
) -> None:
    """A Redis-backed check handles its outage itself (RedisGuard): counted all the same."""
    _, registry = recorded
    outcomes = {}
    for policy in ("open", "closed"):
        guard = RedisGuard("greylist", "GREYLIST_REDIS_ERROR", RedisCheckSettings(on_error=policy))
        guard.failed(ConnectionError("connection refused"))
        outcomes[policy] = guard.outcome()
    scan(pipeline(Scripted("greylist", [outcomes["open"]])), CLEAN)
    _, verdict = scan(pipeline(Scripted("greylist", [outcomes["closed"]])), CLEAN)
    assert verdict.action.value == "tempfail"
    assert value(registry, "filterd_check_errors_total", check="greylist", policy="open") == 1
    assert value(registry, "filterd_check_errors_total", check="greylist", policy="closed") == 1
    assert value(registry, "filterd_symbols_total", symbol="GREYLIST_REDIS_ERROR") == 1


def test_a_refusal_at_mail_from_is_recorded_where_it_is_given(
    recorded: tuple[Metrics, CollectorRegistry], tmp_path: Path
) -> None:
    _, registry = recorded
    deny = tmp_path / "deny.txt"
    deny.write_text("192.0.2.0/24\n")
    cfg = parse_config({"checks": {"client_lists": {"deny_file": str(deny)}}})
    p = Pipeline.from_config(cfg)
    try:
        _, verdict = scan(p, CLEAN, SmtpContext(client_addr="192.0.2.9", mail_from="a@example.org"))
    finally:
        p.close()
    assert verdict.action.value == "reject"
    assert value(registry, "filterd_envelope_refusals_total", stage="mail_from", action="reject") == 1
    assert value(registry, "filterd_messages_total", direction="inbound", action="reject") == 0


def test_with_metrics_off_the_hook_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "_metrics", None)
    _, verdict = scan(pipeline(Scripted("first", [])), CLEAN)
    assert verdict.action.value == "accept"  # and no registry to write to: nothing raised


def test_a_recording_failure_never_reaches_the_mail(monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken(Metrics):
        def record_message(self, tx: Transaction, verdict: Any) -> None:
            raise RuntimeError("disk full")

    monkeypatch.setattr(metrics, "_metrics", Broken(CollectorRegistry()))
    _, verdict = scan(pipeline(Scripted("first", [])), CLEAN)
    assert verdict.action.value == "accept"


# -- what a worker adds up once a second -------------------------------------------------------


def test_backend_calls_failures_and_breaker_state_are_added_as_they_grow(
    recorded: tuple[Metrics, CollectorRegistry],
) -> None:
    m, registry = recorded
    forget_all()
    try:
        breaker = breaker_for("clamd unix:/test/clamd.sock", BreakerSettings(failures=2))
        for _ in range(5):
            breaker.refusal()
            breaker.success()
        m.sync_process(None)
        labels = {"kind": "clamd", "backend": "clamd unix:/test/clamd.sock"}
        assert value(registry, "filterd_backend_calls_total", **labels) == 5
        assert value(registry, "filterd_breaker_state", state="closed", **labels) == 1
        breaker.failure("refused")
        breaker.failure("refused")  # the second in a row opens it
        m.sync_process(None)
        assert value(registry, "filterd_backend_calls_total", **labels) == 7
        assert value(registry, "filterd_backend_failures_total", **labels) == 2
        assert value(registry, "filterd_breaker_opened_total", **labels) == 1
        assert value(registry, "filterd_breaker_state", state="open", **labels) == 1
        assert value(registry, "filterd_breaker_state", state="closed", **labels) == 0
        m.sync_process(None)  # nothing new: nothing added twice
        assert value(registry, "filterd_backend_calls_total", **labels) == 7
    finally:
        forget_all()


def test_dns_lookups_and_cache_hits_come_from_the_resolvers_cache(
    recorded: tuple[Metrics, CollectorRegistry], monkeypatch: pytest.MonkeyPatch
) -> None:
    import dns.resolver

    m, registry = recorded
    cache = dns.resolver.LRUCache(10)
    resolver = dns.resolver.Resolver(configure=False)
    resolver.cache = cache
    monkeypatch.setattr(dns.resolver, "default_resolver", resolver)
    key = (dns.name.from_text("example.org."), dns.rdatatype.TXT, dns.rdataclass.IN)
    cache.get(key)  # a miss
    m.sync_process(None)
    assert value(registry, "filterd_dns_lookups_total") == 1
    assert value(registry, "filterd_dns_cache_hits_total") == 0
    cache.statistics.hits += 3  # as three answers from the cache would
    cache.get(key)
    m.sync_process(None)
    assert value(registry, "filterd_dns_lookups_total") == 5
    assert value(registry, "filterd_dns_cache_hits_total") == 3


def test_quarantine_size_is_read_at_scrape_time(tmp_path: Path) -> None:
    settings = QuarantineSettings(directory=str(tmp_path / "q"))
    registry = CollectorRegistry()
    registry.register(QuarantineCollector(lambda: settings))
    assert value(registry, "filterd_quarantine_messages") == 0  # no directory yet
    store = QuarantineStore(settings)
    store.put(b"Subject: one\r\n\r\nbody\r\n", [], {})
    store.put(b"Subject: two\r\n\r\nlonger body\r\n", [], {})
    (tmp_path / "q" / "notes.json").write_text("{}")  # not an entry
    assert value(registry, "filterd_quarantine_messages") == 2
    sizes = sum(p.stat().st_size for p in (tmp_path / "q").glob("*.eml"))
    assert value(registry, "filterd_quarantine_bytes") == sizes > 0


START_AND_EXIT = """
import logging, os, socket, sys
from pathlib import Path
from filterd import metrics
from filterd.config import MetricsSettings
from filterd.quarantine.store import QuarantineSettings

logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(message)s")
directory, port = Path(sys.argv[1]), int(sys.argv[2])
taken = socket.socket()
taken.bind(("127.0.0.1", port))
taken.listen()
settings = MetricsSettings(enabled=True, listen=f"127.0.0.1:{port}", multiproc_dir=str(directory))
metrics.start(settings, lambda: QuarantineSettings())
assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(directory)
# a worker's live gauge, in a file of its own (the pid is made up), then the worker exits
m = metrics._metrics
child = os.fork()
if child == 0:
    m.bayes_learned.labels("spam").set(5)
    os._exit(0)
os.waitpid(child, 0)
assert (directory / f"gauge_livemax_{child}.db").exists()
metrics.worker_exited(child, replaced=False, hung=True)
assert not (directory / f"gauge_livemax_{child}.db").exists()
print("restarts", m.worker_restarts.labels("hung")._value.get())
"""


def test_start_without_its_port_still_counts_and_a_dead_workers_gauges_go(tmp_path: Path) -> None:
    """The port taken: logged, filterd goes on (mail matters more).  A worker's exit drops its
    live gauges and counts a restart.  In a process of its own: start() sets the environment."""
    directory = tmp_path / "mp"
    directory.mkdir()
    (directory / "counter_999.db").write_bytes(b"old")
    (directory / "keep.txt").write_text("not ours")
    port = free_port()
    done = subprocess.run(
        [sys.executable, "-c", START_AND_EXIT, str(directory), str(port)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert done.returncode == 0, done.stderr
    assert f"metrics not served: cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "restarts 1.0" in done.stdout
    assert not (directory / "counter_999.db").exists()  # an earlier run's counts: gone
    assert (directory / "keep.txt").exists()  # anything else is left alone


def test_metrics_settings_are_validated() -> None:
    assert parse_config({}).metrics.enabled is False
    assert parse_config({}).metrics.listen == "127.0.0.1:9143"
    assert parse_config({"metrics": {"listen": "[::1]:9100"}}).metrics.listen == "[::1]:9100"
    for bad in ("localhost:9143", "127.0.0.1", "127.0.0.1:70000", ":9143"):
        with pytest.raises(ConfigError, match=r"metrics\.listen"):
            parse_config({"metrics": {"listen": bad}})
    with pytest.raises(ConfigError, match=r"metrics\.multiproc_dir"):
        parse_config({"metrics": {"multiproc_dir": "run/metrics"}})
    # an address off loopback is allowed, with a warning (filterctl config check)
    warned = config_warnings(parse_config({"metrics": {"enabled": True, "listen": "0.0.0.0:9143"}}))
    assert [w.key for w in warned] == ["metrics.listen"]
    assert not config_warnings(parse_config({"metrics": {"enabled": True, "listen": "[::1]:9143"}}))


# -- the real daemon: two workers, Postfix in front, /metrics scraped over HTTP ----------------


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def worker_messages(directory: Path) -> dict[int, float]:
    """Messages counted in each process's own file: pid -> count."""
    out: dict[int, float] = {}
    for path in directory.glob("counter_*.db"):
        pid = int(path.stem.split("_")[1])
        for family in MultiProcessCollector.merge([str(path)]):
            if family.name == "filterd_messages":
                out[pid] = sum(s.value for s in family.samples if s.name.endswith("_total"))
    return out


@pytest.mark.stack
def test_two_workers_counts_add_up_at_the_parents_endpoint(
    stack: Stack, redis_server: RedisServer, clamd_server: ClamdServer
) -> None:
    port = free_port()
    directory = stack.dir / "metrics"
    directory.mkdir(exist_ok=True)
    (directory / "counter_1.db").write_bytes(b"left by an earlier run")  # emptied at start
    config = {
        "metrics": {"enabled": True, "listen": f"127.0.0.1:{port}", "multiproc_dir": str(directory)},
        # clamd scans every message and keeps its results in Redis: both backends are called
        "redis": {"url": redis_server.url, "key_prefix": f"metrics{secrets.token_hex(4)}:"},
        "checks": {
            "antivirus": {
                "enabled": True,
                "sockets": [clamd_server.unix_address],
                "cache_key_file": cache_key_file(),
            }
        },
        # a message without a Date header is quarantined
        "actions": {"quarantine": 5.0},
        "scores": {"MISSING_DATE": 6.0},
    }
    with stack.configured(config) as filterd:
        assert not (directory / "counter_1.db").exists()
        assert f"metrics served at http://127.0.0.1:{port}/metrics" in filterd.log()
        before = scrape(port)
        assert sample(before, "filterd_worker_restarts_total", reason="crashed") == 0

        # Clean messages from several SMTP sessions at once, until both workers have served some
        # (the kernel chooses which worker accepts a connection).
        sent = 0
        markers: list[str] = []

        def session(count: int) -> None:
            for _ in range(count):
                msg, marker = make_message("metrics")
                stack.send(msg)
                markers.append(marker)

        for _ in range(6):
            run_sessions(session, [3, 3, 3, 3])
            sent += 12
            time.sleep(metrics.SYNC_INTERVAL + 0.3)  # the workers' counts are written once a second
            if len([c for c in worker_messages(directory).values() if c > 0]) >= 2:
                break
        for marker in markers:
            stack.sink.find(marker)
        gtube, _ = make_message("gtube", body=f"This is the GTUBE test.\r\n\r\n{GTUBE}\r\n")
        with pytest.raises(smtplib.SMTPDataError):
            stack.send(gtube)

        def counted() -> bool:
            samples = scrape(port)
            return (
                sample(samples, "filterd_messages_total", direction="inbound", action="accept") == sent
                and sample(samples, "filterd_messages_total", direction="inbound", action="reject") == 1
            )

        wait_for(counted, 10, "the messages to be counted")
        samples = scrape(port)
        assert sample(samples, "filterd_messages_total", direction="inbound", action="accept") == sent
        assert sample(samples, "filterd_messages_total", direction="inbound", action="reject") == 1
        assert sample(samples, "filterd_symbols_total", symbol="GTUBE") == 1
        assert sample(samples, "filterd_check_cpu_seconds_count", check="rules") == sent + 1
        assert sample(samples, "filterd_stage_seconds_count", stage="eom") == sent + 1

        # each worker's own numbers, written by its metrics thread: the SPF/DKIM/DMARC lookups
        # went through its resolver and the DNS breaker, which both workers see closed
        wait_for(
            lambda: (
                sum(
                    v
                    for (name, labels), v in scrape(port).items()
                    if name == "filterd_breaker_state"
                    and ("state", "closed") in labels
                    and ("kind", "dns") in labels
                )
                == 2
            ),
            10,
            "both workers' DNS breaker state",
        )
        samples = scrape(port)
        assert sample(samples, "filterd_dns_lookups_total") > 0
        dns_calls = [v for (name, labels), v in samples.items() if name == "filterd_backend_calls_total"]
        assert dns_calls and sum(dns_calls) > 0

        # each worker counted in its own file, and the endpoint shows their sum
        per_worker = worker_messages(directory)
        serving = {pid: count for pid, count in per_worker.items() if count > 0}
        assert len(serving) == 2, per_worker
        assert sum(serving.values()) == sent + 1

        kinds = {
            dict(labels)["kind"]: v
            for (name, labels), v in samples.items()
            if name == "filterd_backend_calls_total"
        }
        assert kinds.get("clamd", 0) > 0 and kinds.get("redis", 0) > 0, kinds

        # a quarantined message: counted by action, and the quarantine's size read at scrape time
        undated, _ = make_message("undated")
        stack.send(b"\r\n".join(line for line in undated.split(b"\r\n") if not line.startswith(b"Date:")))
        wait_for(
            lambda: (
                sample(scrape(port), "filterd_messages_total", direction="inbound", action="quarantine") == 1
            ),
            10,
            "the quarantined message to be counted",
        )
        stored = len(list(stack.quarantine_dir.glob("*.json")))
        assert stored >= 1
        assert sample(scrape(port), "filterd_quarantine_messages") == stored

        # a worker killed: the parent starts another, counts a restart, and the dead one's
        # messages still count
        victim = max(serving, key=lambda pid: serving[pid])
        os.kill(victim, signal.SIGKILL)
        wait_for(
            lambda: sample(scrape(port), "filterd_worker_restarts_total", reason="crashed") == 1,
            15,
            "the restart to be counted",
        )
        assert sample(scrape(port), "filterd_messages_total", direction="inbound", action="accept") == sent

        # a reload replaces both workers: the messages they took just before still count (a
        # stopping worker writes its last counts), and a replaced worker is no restart
        for _ in range(3):
            msg, marker = make_message("before the reload")
            stack.send(msg)
        filterd.reload()
        wait_for(
            lambda: filterd.log().count("replaced by the reload, finished") >= 2,
            30,
            "the old workers to exit",
        )
        wait_for(
            lambda: (
                sample(scrape(port), "filterd_messages_total", direction="inbound", action="accept")
                == sent + 3
            ),
            10,
            "the last messages of the replaced workers to be counted:\n"
            + "\n".join(filterd.log().splitlines()[-40:]),
        )
        after = scrape(port)
        assert sample(after, "filterd_messages_total", direction="inbound", action="accept") == sent + 3
        assert sample(after, "filterd_worker_restarts_total", reason="crashed") == 1

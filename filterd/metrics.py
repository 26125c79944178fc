"""Prometheus metrics: what filterd did, counted in every worker and served by the parent.

filterd forks workers (filterd.daemon), and each counts in its own memory, so the counters go
through prometheus_client's multiprocess mode: every process writes its values into its own
memory-mapped file in ``[metrics] multiproc_dir``, and the parent, which serves ``/metrics``, adds
up the files of all of them -- the live workers, the ones a reload replaced, the ones that died
(a dead worker's counts still count; its gauges go, `worker_exited`).  prometheus_client decides
at its import whether it writes files (PROMETHEUS_MULTIPROC_DIR set) or keeps values in memory, so
`start` sets the variable, empties the directory of an earlier run, and only then imports it.
Nothing else in filterd imports prometheus_client; with ``[metrics] enabled = false`` nothing does.

Where the numbers come from, and what each costs:

- per message, one call when its verdict is carried out (`message_done`, from the driver): its
  direction and action, its symbols, the CPU time of each check (`Transaction.check_cpu`), the
  wall time of each stage (`Transaction.timings`), and the errors of checks (CHECK_ERROR is a
  fail-open; a decision "check X failed (fail-closed...)" a fail-closed).  Added up in plain
  dicts, and written to the metrics files once a second by the worker's metrics thread, and by
  the worker once more before it exits (`flush`): a multiprocess increment costs ten times a
  dict addition (`Metrics.record_message`).  A refusal at MAIL FROM or RCPT is recorded where
  it is given (`refused`).
- per worker, once a second (`worker_started` starts a thread): what the process as a whole
  counts -- the DNS resolver's cache (lookups, hits), each backend's calls and failures and its
  circuit breaker (filterd.breaker keeps the counts; only the increase since the last look is
  added), and the Bayes model's learned counts.  Off the mail path; a scrape may lag by a second.
- in the parent, at scrape time: the quarantine's size (a directory listing).
- in the parent, when a worker exits: worker restarts.

The parent serves with prometheus_client's own HTTP server, in a thread.  The parent forks
workers while that thread runs, so: the thread starts with the signals the parent waits for
blocked (else the kernel may deliver SIGTERM or SIGCHLD to it, where no one waits for them); it
takes none of the locks a worker uses (it reads files; the quarantine listing logs nothing); and
a worker closes its inherited copy of the listening socket (`worker_started`), so that only the
parent holds the port.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filterd.results import Stage, Verdict

if TYPE_CHECKING:
    from filterd.config import MetricsSettings
    from filterd.pipeline import Pipeline
    from filterd.quarantine.store import QuarantineSettings
    from filterd.transaction import Transaction

log = logging.getLogger("filterd.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
SYNC_INTERVAL = 1.0  # seconds between two looks at a worker's process-wide counters

# Seconds, sized for milliseconds: most checks take well under one; a slow regex or a big
# message tens.  Stage times include waiting for DNS, Redis and clamd: up to seconds.
CHECK_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# The reason texts of a failed check, by its on_error policy: filterd.pipeline's for an exception
# (CHECK_ERROR, or a refusal), filterd.redisstate.RedisGuard's for a Redis-backed check's outage
# (<CHECK>_REDIS_ERROR, or a 4xx)
_FAIL_OPEN = re.compile(r"(\S+) skipped(?: \(fail-open\)|, Redis unavailable \(fail-open\))")
_FAIL_CLOSED = re.compile(r"(?:check (\S+) failed|(\S+): Redis unavailable) \(fail-closed")
# The stages timed per message, with their labels.  CONNECT and HELO belong to the connection:
# every message on it carries their time, so they are left out.
_MESSAGE_STAGES = {stage: stage.label for stage in (Stage.MAIL_FROM, Stage.RCPT, Stage.HEADERS, Stage.EOM)}
_SIGNALS = {signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGCHLD}  # filterd.daemon's
RESTART_REASONS = ("crashed", "hung")


class Metrics:
    """Every metric filterd records, registered in `registry` (a throw-away one in multiprocess
    mode: the parent serves the files, not this registry)."""

    def __init__(self, registry: Any) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        def counter(name: str, help: str, labels: Iterable[str] = ()) -> Any:
            return Counter(name, help, list(labels), registry=registry)

        self.messages = counter(
            "filterd_messages",
            "messages whose verdict was carried out at end of message, by direction and action",
            ("direction", "action"),
        )
        self.refusals = counter(
            "filterd_envelope_refusals",
            "refusals given at MAIL FROM (the message ends) or RCPT (that recipient only)",
            ("stage", "action"),
        )
        self.symbols = counter("filterd_symbols", "symbols in the verdicts of messages", ("symbol",))
        self.check_errors = counter(
            "filterd_check_errors",
            "checks that raised on a message, by the on_error policy applied (open: skipped; closed: refused)",
            ("check", "policy"),
        )
        self.check_cpu = Histogram(
            "filterd_check_cpu_seconds",
            "CPU time one check spent on one message (checks from MAIL FROM on, finishers included)",
            ["check"],
            buckets=CHECK_BUCKETS,
            registry=registry,
        )
        self.stage_time = Histogram(
            "filterd_stage_seconds",
            "wall time of one SMTP stage's checks on one message, waiting for DNS/Redis/clamd included",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=registry,
        )
        self.dns_lookups = counter(
            "filterd_dns_lookups", "lookups through the DNS resolver (cache hits included)"
        )
        self.dns_cache_hits = counter("filterd_dns_cache_hits", "lookups answered from the resolver's cache")
        self.backend_calls = counter(
            "filterd_backend_calls",
            "calls that reached a backend: Redis round trips, clamd commands, DNS resolutions "
            "(its cache hits included)",
            ("kind", "backend"),
        )
        self.backend_failures = counter(
            "filterd_backend_failures",
            "calls a backend did not answer (connection refused, timeout), as its circuit breaker counts them",
            ("kind", "backend"),
        )
        self.breaker_opened = counter(
            "filterd_breaker_opened", "times a backend's circuit breaker opened", ("kind", "backend")
        )
        self.breaker_state = Gauge(
            "filterd_breaker_state",
            "live workers whose breaker for the backend is in this state (closed, open, half-open)",
            ["kind", "backend", "state"],
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.bayes_learned = Gauge(
            "filterd_bayes_learned",
            "messages the Bayes model has learned, by class (the most any live worker has loaded)",
            ["class"],
            multiprocess_mode="livemax",
            registry=registry,
        )
        self.worker_restarts = counter(
            "filterd_worker_restarts", "workers started again after one crashed or hung", ("reason",)
        )
        for reason in RESTART_REASONS:  # shown as 0 from the start, so rate() works at the first one
            self.worker_restarts.labels(reason)
        self._children: dict[tuple[Any, ...], Any] = {}
        self._seen: dict[tuple[str, ...], float] = {}  # process-wide counts at the last sync
        self._sync_lock = threading.Lock()
        # What the messages recorded since the last flush: counts by (metric, *labels), and per
        # histogram child [sum, count in bucket 0, 1, ..., +Inf].  See `record_message`.
        self._pending_lock = threading.Lock()
        self._counts: dict[tuple[Any, ...], int] = {}
        self._observed: dict[tuple[Any, ...], list[float]] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    # -- per message (the mail path: keep it cheap) --------------------------------------------

    def record_message(self, tx: Transaction, verdict: Verdict) -> None:
        """A message's verdict was carried out.

        Added up here in plain dicts, written to the metrics by `flush` (about once a second):
        in multiprocess mode each increment of a metric is a lock, a getpid() and a write into
        the memory-mapped file (1.5 us; 2.5 us a histogram observation), some 30 of them a
        message, while a dict addition is a tenth of that and a flush writes each changed
        value once, however many messages changed it."""
        cpu, timings = tx.check_cpu, tx.timings
        with self._pending_lock:
            counts, observed = self._counts, self._observed
            # _value_, not .value: a plain attribute, where .value is a descriptor call
            key: tuple[Any, ...] = (self.messages, tx.direction._value_, verdict.action._value_)
            counts[key] = counts.get(key, 0) + 1
            for symbol in verdict.symbols:
                key = (self.symbols, symbol.name)
                counts[key] = counts.get(key, 0) + 1
                if symbol.name == "CHECK_ERROR" or symbol.name.endswith("_REDIS_ERROR"):
                    self._check_error(symbol.reason, _FAIL_OPEN, "open")
            for check, seconds in cpu.items():
                row = observed.get((self.check_cpu, check))
                if row is None:
                    row = observed[(self.check_cpu, check)] = [0.0] * (len(CHECK_BUCKETS) + 2)
                row[0] += seconds
                row[1 + bisect.bisect_left(CHECK_BUCKETS, seconds)] += 1  # le: seconds <= bound
            for stage, seconds in timings.items():
                label = _MESSAGE_STAGES.get(stage)
                if label is not None:
                    row = observed.get((self.stage_time, label))
                    if row is None:
                        row = observed[(self.stage_time, label)] = [0.0] * (len(STAGE_BUCKETS) + 2)
                    row[0] += seconds
                    row[1 + bisect.bisect_left(STAGE_BUCKETS, seconds)] += 1
            if verdict.decision is not None:
                self._check_error(verdict.decision.reason, _FAIL_CLOSED, "closed")

    def record_refusal(self, stage: Stage, verdict: Verdict) -> None:
        """A refusal given at MAIL FROM or RCPT."""
        with self._pending_lock:
            key = (self.refusals, stage.label, verdict.action._value_)
            self._counts[key] = self._counts.get(key, 0) + 1
            if verdict.decision is not None:
                self._check_error(verdict.decision.reason, _FAIL_CLOSED, "closed")

    def _check_error(self, reason: str, pattern: re.Pattern[str], policy: str) -> None:
        m = pattern.match(reason)
        if m is not None:
            key = (self.check_errors, m.group(1) or m.group(2), policy)
            self._counts[key] = self._counts.get(key, 0) + 1

    def flush(self) -> None:
        """Write what the messages recorded since the last flush into the metrics."""
        with self._pending_lock:
            counts, observed = self._counts, self._observed
            if not counts and not observed:
                return
            self._counts, self._observed = {}, {}
        for (metric, *labels), n in counts.items():
            self._child(metric, *labels).inc(n)
        for (metric, *labels), row in observed.items():
            # a histogram takes one observation at a time: its sum and buckets are added to
            # directly (tests/test_metrics.py checks the result equals observe()'s)
            child = self._child(metric, *labels)
            child._sum.inc(row[0])
            for bucket, observations in zip(child._buckets, row[1:], strict=True):
                if observations:
                    bucket.inc(observations)

    # -- per worker, off the mail path ---------------------------------------------------------

    def sync_process(self, pipeline: Pipeline | None) -> None:
        """Write the messages' pending counts; add what this process counted since the last
        call: DNS cache, backends, Bayes."""
        self.flush()
        with self._sync_lock:
            self._sync_dns()
            self._sync_breakers()
            if pipeline is not None:
                self._sync_bayes(pipeline)

    def _increase(self, key: tuple[str, ...], value: float) -> float:
        """How much a process-wide count grew since the last look (all of it at the first)."""
        before = self._seen.get(key, 0.0)
        self._seen[key] = value
        return value - before if value >= before else value  # smaller: a new object, counting anew

    def _sync_dns(self) -> None:
        import dns.resolver

        cache = getattr(dns.resolver.default_resolver, "cache", None)
        if cache is None or not hasattr(cache, "get_statistics_snapshot"):
            return  # no resolver made yet in this worker (no check has looked anything up)
        stats = cache.get_statistics_snapshot()
        hits = self._increase(("dns", "hits", str(id(cache))), stats.hits)
        misses = self._increase(("dns", "misses", str(id(cache))), stats.misses)
        if hits + misses:
            self.dns_lookups.inc(hits + misses)
        if hits:
            self.dns_cache_hits.inc(hits)

    def _sync_breakers(self) -> None:
        from filterd.breaker import State, states

        for state in states():
            name = state["name"]
            kind = name.split(" ", 1)[0].lower()  # "Redis ...", "clamd ...", "DNS ..."
            answered = self._increase(("answered", name), state["answered"])
            failed = self._increase(("failed", name), state["failed"])
            opened = self._increase(("opened", name), state["opened"])
            if answered + failed:
                self._child(self.backend_calls, kind, name).inc(answered + failed)
            if failed:
                self._child(self.backend_failures, kind, name).inc(failed)
            if opened:
                self._child(self.breaker_opened, kind, name).inc(opened)
            for value in State:
                self._child(self.breaker_state, kind, name, value.value).set(
                    1 if state["state"] == value.value else 0
                )

    def _sync_bayes(self, pipeline: Pipeline) -> None:
        for check in pipeline.checks:
            if check.name != "bayes":
                continue
            model = getattr(getattr(check, "holder", None), "model", None)
            if model is not None:
                self._child(self.bayes_learned, "spam").set(model.nspam)
                self._child(self.bayes_learned, "ham").set(model.nham)


class QuarantineCollector:
    """The quarantine's size, read when scraped (the parent's current configuration)."""

    def __init__(self, settings: Callable[[], QuarantineSettings]) -> None:
        # imported here, not at scrape time: the scraping thread then takes no import lock
        from prometheus_client.core import GaugeMetricFamily

        from filterd.quarantine.store import ID_PATTERN

        self.settings = settings
        self.gauge, self.id_pattern = GaugeMetricFamily, ID_PATTERN

    def collect(self) -> Iterator[Any]:
        GaugeMetricFamily, ID_PATTERN = self.gauge, self.id_pattern
        settings = self.settings()
        if settings.mode != "store":
            return
        count = size = 0
        # not made yet, or unreadable: an empty quarantine
        with contextlib.suppress(OSError), os.scandir(settings.directory) as entries:
            for entry in entries:
                stem, dot, suffix = entry.name.rpartition(".")
                if not dot or not ID_PATTERN.fullmatch(stem):
                    continue
                if suffix == "json":
                    count += 1
                elif suffix == "eml":
                    with contextlib.suppress(OSError):
                        size += entry.stat(follow_symlinks=False).st_size
        yield GaugeMetricFamily(
            "filterd_quarantine_messages", "messages in the quarantine (released ones included)", value=count
        )
        yield GaugeMetricFamily("filterd_quarantine_bytes", "bytes of the quarantined messages", value=size)


# -- the process's metrics: None when [metrics] is off --------------------------------------------

_metrics: Metrics | None = None
_server: Any = None  # the parent's HTTP server (a worker closes its inherited socket)


def start(settings: MetricsSettings, quarantine: Callable[[], QuarantineSettings]) -> None:
    """In the parent, before anything imports prometheus_client and before the first fork:
    prepare the multiprocess directory, make the metrics, serve /metrics.

    A directory that cannot be made leaves metrics off, and an address that cannot be bound
    leaves them unserved: logged as errors, mail goes on either way."""
    global _metrics, _server
    if not settings.enabled:
        return
    directory = Path(settings.multiproc_dir)
    try:
        directory.mkdir(mode=0o750, parents=True, exist_ok=True)
        for old in directory.glob("*.db"):  # an earlier run's counts: counters start again at 0
            old.unlink()
    except OSError as exc:
        log.error("metrics off: cannot prepare %s: %s", directory, exc)
        return
    os.environ[MULTIPROC_ENV] = str(directory)
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    _metrics = Metrics(CollectorRegistry(auto_describe=False))
    served = CollectorRegistry()
    MultiProcessCollector(served, path=str(directory))
    served.register(QuarantineCollector(quarantine))
    host, _, port = settings.listen.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    # the thread (and each request's, made by it) must not take the signals the parent awaits
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    try:
        _server, _ = start_http_server(int(port), host, registry=served)
    except OSError as exc:
        log.error("metrics not served: cannot listen on %s: %s", settings.listen, exc)
        return
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    log.info("metrics served at http://%s/metrics", settings.listen)


def message_done(tx: Transaction, verdict: Verdict) -> None:
    """The driver carried out a message's verdict."""
    metrics = _metrics
    if metrics is None:
        return
    try:
        metrics.record_message(tx, verdict)
    except Exception:  # a counter must never change what happens to the mail
        log.exception("%s: recording the metrics failed", tx.queue_id or "NOQUEUE")


def refused(stage: Stage, tx: Transaction, verdict: Verdict) -> None:
    """The driver gave a refusal at MAIL FROM or RCPT."""
    metrics = _metrics
    if metrics is None:
        return
    try:
        metrics.record_refusal(stage, verdict)
    except Exception:
        log.exception("%s: recording the metrics failed", tx.queue_id or "NOQUEUE")


def worker_started(pipeline: Pipeline) -> None:
    """In a new worker: let go of the parent's HTTP socket, count the process-wide numbers."""
    metrics = _metrics
    if metrics is None:
        return
    if _server is not None:
        with contextlib.suppress(OSError):
            _server.socket.close()  # this process's copy only: the parent goes on serving

    def run() -> None:
        while True:
            try:
                metrics.sync_process(pipeline)
            except Exception:
                log.exception("collecting the worker's metrics failed")
            time.sleep(SYNC_INTERVAL)

    threading.Thread(target=run, name="metrics", daemon=True).start()


def flush() -> None:
    """A worker about to exit writes the counts of its last messages (`Metrics.flush`)."""
    metrics = _metrics
    if metrics is None:
        return
    try:
        metrics.flush()
    except Exception:
        log.exception("writing the last metrics failed")


def worker_exited(pid: int, replaced: bool, hung: bool) -> None:
    """In the parent, once a worker is reaped: drop its live gauges; count a restart (a worker
    that crashed or hung is started again; one `replaced` by a reload or a stop is not)."""
    if _metrics is None:
        return
    from prometheus_client.multiprocess import mark_process_dead

    with contextlib.suppress(OSError):
        mark_process_dead(pid)
    if not replaced:
        _metrics.worker_restarts.labels("hung" if hung else "crashed").inc()

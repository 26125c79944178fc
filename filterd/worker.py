"""The worker process: its pipeline, its heartbeat to the parent, and its drain when told to stop.

The milter adapter (filterd.milter) only translates libmilter callbacks; what belongs to the
process as a whole lives here: the pipeline every connection of this worker uses (`holder`, the
one the parent built before forking: see filterd.daemon), the callbacks in progress (`busy`) that
the heartbeat reports to the parent, and the drain watcher that ends the worker once it is told
to stop and its work is done.  The daemon forks, supervises and signals; `serve` is the rest of
a worker's life.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import threading
import time
from collections.abc import Callable
from typing import Any

from filterd import metrics, stats
from filterd.pipeline import Pipeline

log = logging.getLogger("filterd")


class PipelineHolder:
    """The worker's pipeline: built once by the parent before it forked this worker.

    A worker never builds or rebuilds a pipeline.  On a reload the parent builds the new one and
    starts new workers with it; the old workers stop accepting and finish with the pipeline they
    have (see filterd.daemon), so a message in flight always keeps the pipeline it started with.
    """

    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline
        self._lock = threading.Lock()
        self.active = 0  # messages between MAIL FROM and their end, for a graceful stop

    def current(self) -> Pipeline:
        return self._pipeline

    def close(self) -> None:
        """Close the pipeline: at the worker's exit, after the last message."""
        try:
            self._pipeline.close()
        except Exception:  # exiting anyway: say why, never hang the exit
            log.exception("closing the pipeline at exit failed")

    def message_started(self) -> None:
        with self._lock:
            self.active += 1

    def message_ended(self) -> None:
        with self._lock:
            self.active -= 1


holder: PipelineHolder | None = None  # set by `serve` (or a test) before libmilter starts


# Callbacks in progress in this worker: key -> when it started (time.monotonic()).
busy: dict[int, float] = {}


def start_heartbeat(beat: Callable[[float], None], interval: float = 1.0) -> threading.Thread:
    """Tell the parent, every `interval` seconds, since when this worker has been making progress.

    `beat` receives the start of the oldest callback still running (now when none is): the
    parent replaces a worker whose value lags more than [milter] heartbeat_timeout behind.  The
    beat comes from a Python thread, so it also stops when the GIL is never released (a C
    extension stuck holding it) or the process is stopped -- every way a worker can hang."""

    def run() -> None:
        while True:
            now = time.monotonic()
            try:
                oldest = min(busy.values(), default=now)
            except RuntimeError:  # the dict changed while read: the next beat reads it again
                oldest = now
            beat(min(oldest, now))
            time.sleep(interval)

    thread = threading.Thread(target=run, name="heartbeat", daemon=True)
    thread.start()
    return thread


def start_drain_watcher(
    should_stop: Callable[[], bool],
    grace: float,
    on_stop: Callable[[], None] = lambda: None,
    sessions_open: Callable[[], int] = lambda: 0,
) -> threading.Thread:
    """Exit the worker once told to stop and its work is done (or `grace` ran out).

    Its work: the messages in flight, and the connections `sessions_open` counts (the daemon
    counts them for a worker replaced by a reload, so that an SMTP session between two messages
    is not cut; a stopping filterd counts none).  `on_stop` runs once, as soon as the stop is
    seen: the daemon stops accepting connections there.

    The worker must not return from libmilter's main loop to stop: after that pymilter cannot run
    callbacks for connections still open, and their messages would hang (see filterd.daemon).
    """

    def busy_with_something() -> bool:
        if holder is not None and holder.active > 0:
            return True
        try:
            return sessions_open() > 0
        except Exception:  # cannot tell: the messages in flight alone decide
            log.exception("counting the open connections failed")
            return False

    def watch() -> None:
        while not should_stop():
            time.sleep(0.1)
        try:
            on_stop()
        except Exception:  # still drain and exit: a worker told to stop must not linger
            log.exception("stopping to accept connections failed")
        # what was counted so far is written now: a drain that outlasts the grace is killed
        metrics.flush()
        deadline = time.monotonic() + grace
        while busy_with_something() and time.monotonic() < deadline:
            time.sleep(0.05)
        # the counts of the last messages first, before closing the checks, which may be slow
        metrics.flush()
        stats.flush()  # the verdicts still queued for Redis, within stats.FLUSH_TIMEOUT
        if holder is not None:
            holder.close()  # what the checks still hold to send (queued Bayes signatures) goes now
        logging.shutdown()
        os._exit(0)

    thread = threading.Thread(target=watch, name="drain-watcher", daemon=True)
    thread.start()
    return thread


def open_sessions(address: str | tuple[Any, ...] | None) -> int:
    """Connections this process accepted on the listening socket `address` and still holds.

    Counted from /proc/self/fd: an accepted socket has the listening socket's local address, and
    the listening socket itself (still listening, or swapped for a socket nothing reaches by
    `_stop_accepting`) is left out.  Connections to Redis, clamd or DNS have other addresses."""
    if address is None:
        return 0
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            fd = int(name)
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            sock = socket.socket(fileno=os.dup(fd))
        except (OSError, ValueError):
            continue
        with sock:
            try:
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                    continue
                if sock.getsockname() == address:
                    count += 1
            except OSError:
                continue
    return count


def serve(
    pipeline: Pipeline,
    beat: Callable[[float], None],
    should_stop: Callable[[], bool],
    on_stop: Callable[[], None],
    grace: float,
    sessions_open: Callable[[], int] = lambda: 0,
) -> int:
    """Serve libmilter's connections with `pipeline` until told to stop (the drain watcher exits).

    `pipeline` is the one the parent built before forking this process: serving starts at once,
    and nothing is read from disk here (a model or rule file broken on disk since the parent read
    it cannot stop a replacement worker).  The parent made no connection while building it (the
    services connect on first use), so each worker opens its own Redis, clamd and DNS sockets;
    its locks were free at the fork, the parent having no other thread."""
    import milter

    global holder
    holder = PipelineHolder(pipeline)
    start_heartbeat(beat)
    start_drain_watcher(should_stop, grace, on_stop, sessions_open)
    metrics.worker_started(pipeline)
    milter.main()
    return 0

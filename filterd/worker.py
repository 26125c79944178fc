"""The worker process: its pipeline, its heartbeat to the parent, and its drain when told to stop.

The milter adapter (filterd.milter) only translates libmilter callbacks; what belongs to the
process as a whole lives here: the pipeline every connection of this worker uses (`holder`), the
callbacks in progress (`busy`) that the heartbeat reports to the parent, and the drain watcher
that ends the worker once it is told to stop and its messages in flight are done.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

from filterd.pipeline import Pipeline

log = logging.getLogger("filterd")


class PipelineHolder:
    """The worker's current pipeline, rebuilt when the daemon's reload generation moves on.

    The daemon (the parent process) validates a new configuration on SIGHUP and only then bumps a
    shared counter; each worker notices at the next MAIL FROM and builds its own pipeline.  A
    message already in flight keeps the pipeline it started with.
    """

    def __init__(self, build: Callable[[], Pipeline], generation: Callable[[], int] = lambda: 0) -> None:
        self._build = build
        self._generation = generation
        self._lock = threading.Lock()
        self._seen = generation()
        self._pipeline = build()
        self.active = 0  # messages between MAIL FROM and their end, for a graceful stop

    def current(self) -> Pipeline:
        gen = self._generation()
        if gen != self._seen:
            with self._lock:
                if gen != self._seen:
                    try:
                        new = self._build()
                    except Exception as exc:  # keep serving with the old pipeline
                        log.error("reload failed, keeping the previous configuration: %s", exc)
                        self._seen = gen
                        return self._pipeline
                    old, self._pipeline, self._seen = self._pipeline, new, gen
                    log.info("configuration reloaded (generation %d)", gen)
                    threading.Timer(60, old.close).start()  # let messages in flight finish with it
        return self._pipeline

    def close(self) -> None:
        """Close the current pipeline: at the worker's exit, after the last message."""
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


holder: PipelineHolder | None = None  # set by the worker before libmilter starts


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
    should_stop: Callable[[], bool], grace: float, on_stop: Callable[[], None] = lambda: None
) -> threading.Thread:
    """Exit the worker once told to stop and its messages in flight are done (or `grace` ran out).

    `on_stop` runs once, as soon as the stop is seen: the daemon stops accepting connections there.

    The worker must not return from libmilter's main loop to stop: after that pymilter cannot run
    callbacks for connections still open, and their messages would hang (see filterd.daemon).
    """

    def watch() -> None:
        while not should_stop():
            time.sleep(0.1)
        try:
            on_stop()
        except Exception:  # still drain and exit: a worker told to stop must not linger
            log.exception("stopping to accept connections failed")
        deadline = time.monotonic() + grace
        while holder is not None and holder.active > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        if holder is not None:
            holder.close()  # what the checks still hold to send (queued Bayes signatures) goes now
        logging.shutdown()
        os._exit(0)

    thread = threading.Thread(target=watch, name="drain-watcher", daemon=True)
    thread.start()
    return thread

"""Circuit breakers: a backend that keeps failing is not asked again for a while.

Without one, a hung clamd, a silent DNS server or a stopped Redis costs every message the full
timeout (a hung clamd took filterd from hundreds of messages a second to 0.7).  A breaker sits in
front of each backend address, in each worker process (no shared state: each worker learns for
itself, within a few messages):

- **closed**: calls go through.  `failures` failures in a row, all within `window` seconds,
  open it (a success in between starts the count again).
- **open**: calls fail at once, for `open_seconds`.  The client raises the error the backend's
  own failure raises (a `ClamdError`, a DNS timeout, a Redis `ConnectionError`, each also a
  `BreakerOpen`), so each check's on_error / on_unavailable policy applies as it did, only
  without the wait.  The error's text says the breaker is open: it lands in the finding's
  reason, so in the report header and the log line.
- **half-open**: after the back-off, one call (the probe) goes through while the others still
  fail at once.  Success closes the breaker; failure opens it again for twice as long, up to
  `max_open_seconds`.

What counts as a failure is the client's to say, and each says "the server is not answering",
never "this message is hard": a clamd that times out on one message but answers PING is busy
with that message, a DNS lookup that times out while the server answers a question of our own
was about a slow remote domain.  Otherwise a sender could open the breaker on purpose (a zip
bomb, a domain with silent name servers) and have every other message skip the check.

Opening is logged once as a warning, closing as info; `states()` lists every breaker of this
process, for a metrics endpoint.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from filterd.settings import positive, setting

log = logging.getLogger("filterd.breaker")


@dataclass(frozen=True)
class BreakerSettings:
    enabled: bool = setting(
        True, "stop asking a backend (clamd, DNS server, Redis) that keeps failing, for a while"
    )
    failures: int = setting(3, "failures in a row that open a backend's breaker", positive)
    window: float = setting(
        30.0, "seconds within which those failures must fall (older ones are forgotten)", positive
    )
    open_seconds: float = setting(
        5.0,
        "seconds an open breaker fails calls at once before one call probes the backend again",
        positive,
    )
    max_open_seconds: float = setting(
        60.0,
        "each failed probe doubles the back-off, up to this many seconds (never below open_seconds)",
        positive,
    )


class State(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class BreakerOpen(Exception):
    """Mixed into each client's own error class: the call was not made, the breaker is open."""


class Breaker:
    """One backend address's breaker.  Thread-safe; `clock` is injectable for tests."""

    def __init__(
        self,
        name: str,
        settings: BreakerSettings,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.settings = settings
        self.clock = clock
        self._lock = threading.Lock()
        self._state = State.CLOSED
        self._streak = 0  # failures in a row
        self._streak_started = 0.0
        self._backoff = settings.open_seconds
        self._open_until = 0.0
        self._probe_out = False  # half-open: the one probe is in flight
        self._probe_started = 0.0
        self.last_error = ""
        self.opened = 0  # times it opened (a counter for metrics)
        # calls that reached the backend and how they ended, for metrics (filterd.metrics)
        self.answered = 0
        self.failed = 0

    @property
    def state(self) -> State:
        with self._lock:
            return self._current()

    def _current(self) -> State:
        if self._state is State.OPEN and self.clock() >= self._open_until:
            self._state = State.HALF_OPEN
            self._probe_out = False
        return self._state

    def refusal(self) -> str | None:
        """None when a call may go ahead (counting it as the probe when half-open); else why not.

        A caller that is let through must report `success()` or `failure()` afterwards."""
        if not self.settings.enabled:
            return None
        with self._lock:
            state = self._current()
            if state is State.CLOSED:
                return None
            now = self.clock()
            # a probe that never reported (its caller died) frees the slot after `window`
            if state is State.HALF_OPEN and (
                not self._probe_out or now - self._probe_started > self.settings.window
            ):
                self._probe_out, self._probe_started = True, now
                return None
            if state is State.HALF_OPEN:
                return f"circuit breaker half-open for {self.name} (a probe is in flight; last error: {self.last_error})"
            left = self._open_until - now
            return (
                f"circuit breaker open for {self.name} after {self._streak} failures "
                f"(last: {self.last_error}); next try in {left:.1f}s"
            )

    def success(self) -> None:
        with self._lock:
            self.answered += 1
            was = self._current()
            self._state = State.CLOSED
            self._streak = 0
            self._probe_out = False
            self._backoff = self.settings.open_seconds
        if was is not State.CLOSED:
            log.info("%s: circuit breaker closed: the backend answers again", self.name)

    def release(self) -> None:
        """A call that was let through ended without saying anything about the backend."""
        with self._lock:
            self._probe_out = False

    def failure(self, error: str) -> None:
        """Record one failure of the backend (`error` says what happened, for the messages)."""
        with self._lock:
            self.failed += 1
        if not self.settings.enabled:
            return
        now = self.clock()
        with self._lock:
            self.last_error = error
            state = self._current()
            if state is State.HALF_OPEN:
                # the probe failed: back off longer
                ceiling = max(self.settings.max_open_seconds, self.settings.open_seconds)
                self._backoff = min(self._backoff * 2, ceiling)
                self._open(now)
                reopened = True
            elif state is State.OPEN:
                return  # a call let through before it opened, failing late: already counted
            else:
                if self._streak == 0 or now - self._streak_started > self.settings.window:
                    self._streak, self._streak_started = 0, now
                self._streak += 1
                if self._streak < self.settings.failures:
                    return
                self._open(now)
                reopened = False
            backoff = self._backoff
        if reopened:
            log.info(
                "%s: circuit breaker stays open: the probe failed (%s); next probe in %.0fs",
                self.name,
                error,
                backoff,
            )
        else:
            log.warning(
                "%s: circuit breaker open after %d failures in a row (last: %s): calls fail at once "
                "for %.0fs, then one call probes it",
                self.name,
                self.settings.failures,
                error,
                backoff,
            )

    def _open(self, now: float) -> None:
        self._state = State.OPEN
        self._open_until = now + self._backoff
        self._probe_out = False
        self.opened += 1

    def snapshot(self) -> dict[str, Any]:
        """This breaker's state, for metrics and `filterctl`."""
        with self._lock:
            state = self._current()
            return {
                "name": self.name,
                "state": state.value,
                "failures_in_a_row": self._streak,
                "opened": self.opened,
                "answered": self.answered,
                "failed": self.failed,
                "open_for": max(0.0, self._open_until - self.clock()) if state is State.OPEN else 0.0,
                "last_error": self.last_error,
            }

    def _after_fork(self) -> None:
        self._lock = threading.Lock()  # a lock held by another thread at fork time stays held


_registry: dict[str, Breaker] = {}
_registry_lock = threading.Lock()


def breaker_for(name: str, settings: BreakerSettings) -> Breaker:
    """The breaker of backend `name` ("clamd unix:/run/clamav/clamd.ctl", "DNS 192.0.2.53:53", ...)
    in this process, made on first use.  Built again with the same name (a reload), it keeps its
    state and takes the new settings."""
    with _registry_lock:
        breaker = _registry.get(name)
        if breaker is None:
            breaker = _registry[name] = Breaker(name, settings)
        else:
            breaker.settings = settings
        return breaker


def states() -> list[dict[str, Any]]:
    """Every breaker of this process and its state (for the metrics endpoint)."""
    with _registry_lock:
        breakers = list(_registry.values())
    return [b.snapshot() for b in breakers]


def forget_all() -> None:
    """Drop every breaker of this process (tests that reuse one backend address start clean)."""
    with _registry_lock:
        _registry.clear()


def _reinit_after_fork() -> None:
    global _registry_lock
    _registry_lock = threading.Lock()
    for breaker in _registry.values():
        breaker._after_fork()


os.register_at_fork(after_in_child=_reinit_after_fork)

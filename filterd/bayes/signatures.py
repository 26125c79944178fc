"""Signature writes off the mail path: a background thread stores them in Redis, in batches.

Storing a classified message's signature was one SET per message, made while the milter waited: a
Redis round trip plus redis-py's per-command work, about as much CPU as classifying the message
(bench/bayes_bench.py).  The id in the header is chosen before anything is stored, so the message
need not wait: `SignatureWriter.submit` queues the SET and returns; a thread sends what queued up
in `BATCH_DELAY` as one pipeline (one round trip for many messages).

A signature is queued only once the message's verdict says it is delivered (`PerMessage` keeps
it from the check's run to `after_verdict`): see filterd.checks.bayes.

What this gives up: a signature whose write fails (Redis down, or the process killed before the
queue drained) is lost, and `filterctl train --signature` then says it is unknown.  A failure is
logged and reported to `on_error`, which the bayes check uses to stop adding signature headers
until Redis is back.  With `on_error = "closed"` the check writes synchronously instead, so a
message is never accepted with a signature that was not stored.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

log = logging.getLogger("filterd.bayes")

MAX_BATCH = 500  # SETs per pipeline
# After the first signature of a batch, wait this long for more: one round trip then carries all
# the messages of the moment (redis-py's cost per pipeline is several times its cost per command).
BATCH_DELAY = 0.05
_STOP = ("", b"", 0)
T = TypeVar("T")


@dataclass(frozen=True)
class PendingSignature:
    """A signature waiting for its message's verdict; `stored` when it was already written."""

    key: str
    value: bytes
    ttl: int
    stored: bool


class PerMessage(Generic[T]):
    """A value kept for one message (a transaction object) from a check's run to its verdict.

    One check object serves every message of a process, from several milter threads, so the value
    cannot live on the check.  Entries are found by the transaction itself and go away with it
    (a weak reference): a message whose verdict never comes (an aborted connection, an offline
    scan) leaves nothing behind."""

    def __init__(self) -> None:
        self._items: dict[int, tuple[weakref.ref[Any], T]] = {}
        self._lock = threading.RLock()  # RLock: a weakref callback may run inside a locked section

    def __len__(self) -> int:
        return len(self._items)

    def put(self, owner: object, value: T) -> None:
        key = id(owner)

        def gone(ref: weakref.ref[Any]) -> None:
            with self._lock:
                if self._items.get(key, (None,))[0] is ref:
                    del self._items[key]

        with self._lock:
            self._items[key] = (weakref.ref(owner, gone), value)

    def pop(self, owner: object) -> T | None:
        with self._lock:
            item = self._items.get(id(owner))
            if item is None or item[0]() is not owner:
                return None
            del self._items[id(owner)]
            return item[1]


class SignatureWriter:
    """Queue of (key, value, ttl) SETs, sent by one daemon thread started on first use in each
    process (a forked worker gets its own: threads do not survive fork)."""

    def __init__(self, redis: Callable[[], Any], on_error: Callable[[Exception], None]) -> None:
        self._redis = redis
        self._on_error = on_error
        self._queue: queue.SimpleQueue[tuple[str, bytes, int]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._pending = 0  # queued and not yet sent (or failed)
        self._lock = threading.Lock()
        self.written = 0
        self.lost = 0

    def submit(self, key: str, value: bytes, ttl_seconds: int) -> None:
        if self._thread is None or self._pid != os.getpid():
            self._start()
        with self._lock:
            self._pending += 1
        self._queue.put((key, value, ttl_seconds))

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued so far is sent (or failed); False on timeout."""
        deadline = time.monotonic() + timeout
        while self._pending > 0:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def close(self, timeout: float = 5.0) -> None:
        if self._thread is not None and self._pid == os.getpid():
            self.flush(timeout)
            self._queue.put(_STOP)
            self._thread.join(timeout)
        self._thread = None

    def _start(self) -> None:
        self._queue = queue.SimpleQueue()
        self._pending = 0
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._run, name="bayes-signatures", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import redis

        while True:
            batch = [self._queue.get()]
            if batch[0] != _STOP:
                time.sleep(BATCH_DELAY)
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = _STOP in batch
            batch = [item for item in batch if item != _STOP]
            if batch:
                try:
                    pipe = self._redis().pipeline(transaction=False)
                    for key, value, ttl in batch:
                        pipe.set(key, value, ex=ttl)
                    pipe.execute()
                    self.written += len(batch)
                except (redis.RedisError, OSError) as exc:
                    self.lost += len(batch)
                    log.warning(
                        "bayes: %d signature(s) not stored: %s: %s", len(batch), type(exc).__name__, exc
                    )
                    self._on_error(exc)
                except Exception:  # never let the thread die: later signatures would queue forever
                    self.lost += len(batch)
                    log.exception("bayes: %d signature(s) not stored", len(batch))
                with self._lock:
                    self._pending -= len(batch)
            if stop:
                return

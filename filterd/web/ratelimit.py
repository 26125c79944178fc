"""Failed logins counted per client address, so a password cannot be guessed online.

After `attempts` failures within `window` seconds an address is refused (HTTP 429) until its
oldest failure leaves the window.  Only failures count: a reviewer who logs in often is never
locked out.  An attempt is counted as failed *before* its password is checked (a tenth of a
second of scrypt) and forgiven if it succeeds, so a burst of parallel guesses cannot all slip in
under the limit while the first ones are still being checked.  The counts live in the console's memory (one process: `filterctl web` serves with
threads); a restart forgets them, which costs an attacker a restart the admin would notice.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable

# Addresses remembered at most: a flood from many addresses must not grow the memory without bound.
# Past it the address that failed least recently is forgotten first.
MAX_ADDRESSES = 10_000


class LoginLimiter:
    def __init__(self, attempts: int, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.attempts = attempts
        self.window = window
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def retry_after(self, address: str) -> float:
        """Seconds before `address` may try again; 0 when it may now."""
        with self._lock:
            failures = self._recent(address)
            if len(failures) < self.attempts:
                return 0.0
            return max(0.0, failures[0] + self.window - self._clock())

    def failed(self, address: str) -> None:
        with self._lock:
            failures = self._recent(address)
            failures.append(self._clock())
            self._failures[address] = failures
            self._failures.move_to_end(address)
            while len(self._failures) > MAX_ADDRESSES:
                self._failures.popitem(last=False)

    def forgive(self, address: str) -> None:
        """Take back the latest failure of `address`: the login it was counted for succeeded."""
        with self._lock:
            failures = self._failures.get(address)
            if failures:
                failures.pop()

    def _recent(self, address: str) -> deque[float]:
        failures = self._failures.get(address, deque())
        cutoff = self._clock() - self.window
        while failures and failures[0] <= cutoff:
            failures.popleft()
        return failures

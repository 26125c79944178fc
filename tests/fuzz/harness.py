"""Running one fuzz input: time it, keep the slowest, save what failed so it can be replayed.

Every entry point is called through `exercise()`.  It counts the input, measures its time, and
fails an input slower than `time_bound()` seconds.  An input that raised or was too slow is
written to the failures folder ($FILTERD_FUZZ_OUT, default <tmp>/filterd-fuzz/failures) named by
its digest, so `python -c "..." < file` or a regression test can replay it; hypothesis's own
report shows the shrunk mutation list.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

OUT = Path(os.environ.get("FILTERD_FUZZ_OUT", Path(tempfile.gettempdir()) / "filterd-fuzz"))
FAILURES = OUT / "failures"


def profile_name() -> str:
    """ "ci" (the default: the short run inside pytest) or what FILTERD_FUZZ names ("long", "dev")."""
    return os.environ.get("FILTERD_FUZZ", "ci")


def time_bound() -> float:
    """Seconds one input may take in one entry point before the run fails ($FILTERD_FUZZ_BOUND)."""
    return float(os.environ.get("FILTERD_FUZZ_BOUND", "2.0"))


@dataclass
class EntryStats:
    inputs: int = 0
    seconds: float = 0.0
    slowest: float = 0.0
    slowest_digest: str = ""
    slowest_size: int = 0


@dataclass
class Stats:
    """What the fuzz run did, by entry point (printed at the end of the pytest run)."""

    entries: dict[str, EntryStats] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def record(self, entry: str, seconds: float, data: bytes) -> None:
        s = self.entries.setdefault(entry, EntryStats())
        s.inputs += 1
        s.seconds += seconds
        if seconds > s.slowest:
            s.slowest, s.slowest_size = seconds, len(data)
            s.slowest_digest = save(OUT / "slowest", entry, data)

    def failed(self, what: str) -> None:
        if what not in self.failures:  # hypothesis replays a failing input: count it once
            self.failures.append(what)

    def lines(self) -> list[str]:
        out = [f"fuzz profile {profile_name()!r}, time bound {time_bound():g} s per input"]
        for entry, s in sorted(self.entries.items()):
            out.append(
                f"  {entry:<22} {s.inputs:>6} inputs  {s.seconds:7.1f} s  slowest {s.slowest * 1000:8.1f} ms"
                f"  ({s.slowest_size} bytes, {OUT / 'slowest' / (entry + '-' + s.slowest_digest)})"
            )
        total = sum(s.inputs for s in self.entries.values())
        out.append(f"  {'total':<22} {total:>6} inputs; {len(self.failures)} failing inputs saved")
        out += [f"  failed: {f}" for f in self.failures]
        return out


STATS = Stats()


def save(folder: Path, entry: str, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    if folder.name == "slowest":  # one file per entry point: the slowest so far
        for old in folder.glob(entry + "-*"):
            old.unlink()
    (folder / f"{entry}-{digest}").write_bytes(data)
    return digest


def keep_going() -> bool:
    """$FILTERD_FUZZ_KEEP_GOING=1 (scripts/fuzz): record a failing input and go on to the next,
    instead of stopping the test at the first; the session fails at the end if any failed."""
    return os.environ.get("FILTERD_FUZZ_KEEP_GOING") == "1"


def exercise(entry: str, data: bytes, call: Callable[[], T]) -> T | None:
    """Run `call` on one input of `entry`; raise if it raised or took longer than the bound
    (with `keep_going()`: record it and return None)."""
    started = time.perf_counter()
    try:
        result = call()
    except Exception as exc:
        path = FAILURES / f"{entry}-{save(FAILURES, entry, data)}"
        STATS.failed(f"{entry}: {type(exc).__name__}: {str(exc)[:200]!r} {path}")
        if keep_going():
            STATS.record(entry, time.perf_counter() - started, data)
            return None
        raise
    elapsed = time.perf_counter() - started
    STATS.record(entry, elapsed, data)
    bound = time_bound()
    if elapsed > bound:
        path = FAILURES / f"{entry}-slow-{save(FAILURES, entry + '-slow', data)}"
        STATS.failed(f"{entry}: over the time bound {path}")
        if keep_going():
            return None
        raise AssertionError(
            f"{entry} took {elapsed:.2f} s on one input (bound {bound:g} s), saved as {path}"
        )
    return result


def examples(ci: int) -> int:
    """max_examples for a test that tries `ci` inputs in the short run, scaled for the profile
    ($FILTERD_FUZZ_SCALE, else 1 for "ci", 12 for "long", 0.05 for "dev")."""
    default = {"long": 12.0, "dev": 0.05}.get(profile_name(), 1.0)
    return max(1, int(ci * float(os.environ.get("FILTERD_FUZZ_SCALE", default))))

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def run_sessions(session: Callable[[Any], None], shares: Sequence[Any]) -> None:
    """Run `session(share)` for every share in its own thread, all at once; raise if any failed."""
    errors: list[BaseException] = []

    def guarded(share: Any) -> None:
        try:
            session(share)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(share,)) for share in shares]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} sessions failed, first: {errors[0]!r}")

"""How long mail waits when filterd (re)starts, and what its workers cost in memory.

    nice -n 10 python bench/restart.py [--rounds 3] [--workers 2] [--no-bayes]

filterd runs with its default pipeline plus the Bayes check (the shipped model) behind a private
Postfix from the test harness; SPF/DKIM/DMARC ask a local DNS server.  Measured, median of
`--rounds`:

- restart: SIGTERM to the running filterd, then a new `python -m filterd` at once (what
  `systemctl restart` does); a client keeps sending from the stop on (each refused message -- the
  451 of Postfix's milter_default_action -- is retried at once).  Reported: seconds from the stop
  and from the new process's start until the first message is accepted, and the 4xx seen
  (retrying every 20 ms).
- worker death: every worker SIGKILLed at once; seconds until a message sent right then (it waits
  in the socket's backlog) is delivered.
- memory: RSS and PSS of the parent and each worker after 200 messages (/proc/PID/smaps_rollup).
"""

from __future__ import annotations

import argparse
import os
import signal
import smtplib
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.soak import memory  # noqa: E402
from bench.throughput import process_tree  # noqa: E402
from tests.harness.dns import LocalDns  # noqa: E402
from tests.harness.redis import RedisServer  # noqa: E402
from tests.harness.stack import Stack, make_message  # noqa: E402


def send_until_accepted(stack: Stack, deadline: float) -> tuple[float, int]:
    """Keep sending one message until one is accepted: (when, how many 4xx before)."""
    refused = 0
    while time.monotonic() < deadline:
        msg, _ = make_message("restart")
        try:
            stack.send(msg)
            return time.monotonic(), refused
        except smtplib.SMTPResponseException:
            refused += 1
            time.sleep(0.02)  # a client retrying fast; not so fast that it starves the start
        except OSError:
            time.sleep(0.05)
    raise TimeoutError("no message accepted")


def measure_restart(stack: Stack) -> tuple[float, float, int]:
    filterd = stack.filterd
    assert filterd.proc is not None
    stopped = time.monotonic()
    filterd.stop()
    started = time.monotonic()
    offset = len(filterd.log())
    filterd.spawn()  # no waiting: the clock runs from the stop, and mail is tried at once
    accepted, refused = send_until_accepted(stack, started + 120)
    assert "listening on" in filterd.log()[offset:]
    return accepted - stopped, accepted - started, refused


def measure_worker_death(stack: Stack) -> float:
    assert stack.filterd.proc is not None
    workers = process_tree(stack.filterd.proc.pid)[1:]
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    msg, marker = make_message("after the kill")
    stack.send(msg)
    stack.sink.find(marker, timeout=120)
    return time.monotonic() - killed


def latency(stack: Stack) -> float:
    """Seconds from sending a message to its arrival at the sink, all healthy (the floor of the above)."""
    started = time.monotonic()
    msg, marker = make_message("latency")
    stack.send(msg)
    stack.sink.find(marker)
    return time.monotonic() - started


def warm(stack: Stack, count: int) -> None:
    for _ in range(count):
        stack.send(make_message("warm")[0])
    stack.sink.clear()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-bayes", action="store_true")
    args = parser.parse_args()
    dns = LocalDns()
    dns.start()
    redis_server = RedisServer(Path(os.environ.get("TMPDIR", "/tmp")) / f"restart-redis-{os.getpid()}")
    redis_server.start()
    config: dict[str, object] = {
        "dns": {"nameservers": ["127.0.0.1"], "port": dns.port, "timeout": 0.5},
        "milter": {"workers": args.workers},
        "redis": {"url": redis_server.url, "key_prefix": "restart:"},
    }
    if not args.no_bayes:
        config["checks"] = {"bayes": {"enabled": True}}
    stack = Stack(config)
    restarts: list[tuple[float, float, int]] = []
    deaths: list[float] = []
    floor: list[float] = []
    try:
        stack.start()
        warm(stack, 20)
        for _ in range(args.rounds):
            restarts.append(measure_restart(stack))
            warm(stack, 5)
            floor.extend(latency(stack) for _ in range(3))
            time.sleep(1.5)  # workers that die within a second of their start are replaced a second later
            deaths.append(measure_worker_death(stack))
            time.sleep(1.5)  # the replacements settle before the next round
            warm(stack, 5)
        warm(stack, 200)
        assert stack.filterd.proc is not None
        mem = [(pid, memory(pid)) for pid in process_tree(stack.filterd.proc.pid)]
    finally:
        stack.stop()
        redis_server.stop()
        dns.stop()
    print(f"{args.workers} workers, bayes {'off' if args.no_bayes else 'on'}, median of {args.rounds}:")
    print(
        f"  restart: first message accepted {statistics.median(r[0] for r in restarts):.2f} s after the stop, "
        f"{statistics.median(r[1] for r in restarts):.2f} s after the new start; 4xx seen "
        f"{[r[2] for r in restarts]}; each round {[(round(a, 2), round(b, 2)) for a, b, _ in restarts]}"
    )
    print(
        f"  every worker SIGKILLed: mail flows again after {statistics.median(deaths):.2f} s "
        f"({[round(d, 2) for d in deaths]}); a message takes {statistics.median(floor):.2f} s when all is well"
    )
    for n, (pid, m) in enumerate(mem):
        if m is not None:
            print(
                f"  {'parent' if n == 0 else 'worker'} {pid}: RSS {m[0]:.1f} MiB, PSS {m[1]:.1f} MiB, "
                f"anonymous PSS {m[2]:.1f} MiB"
            )
    workers = [m[1] for _, m in mem[1:] if m is not None]
    print(
        f"  workers' PSS together {sum(workers):.1f} MiB; all processes {sum(m[1] for _, m in mem if m):.1f} MiB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Redis round trips and time per message for greylisting, reputation and rate limits.

Starts a private redis-server on a free port, runs N messages through the pipeline (every stage,
then the after-verdict hook, as the milter does) with only the Redis-backed checks on, and counts
the round trips on the wire: each write of a command or a pipeline to the socket is one.  The
baseline is the same pipeline with the Redis checks off, measured in the same run.

    python bench/redis_checks.py [--messages 2000] [--rcpts 1] [--history-days 30]

Before each case the reputation entities of its messages (client, network, HELO and sender
domain) get --history-days days of counts in every verdict, as a sender known for a month has:
reading them is part of the cost.

Cases:
  greylist-new    every message a new triplet: RCPT gets 451 (rate limit + reputation + greylist)
  greylist-known  every message a known triplet: accepted, and the verdict counted
  greylist-trusted  the client's reputation is TRUSTED: greylisting skipped without a lookup
  no-greylist     rate limit + reputation (+ verdict update), greylisting off
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis

from filterd.config import parse_config, registered_checks
from filterd.driver import SmtpContext, scan
from filterd.keys import Keys
from filterd.pipeline import Pipeline
from filterd.reputation import Entity, ReputationSettings, ReputationStore
from filterd.services import Services
from tests.harness.redis import RedisServer

MESSAGE = (
    b"From: Alice <alice@sender.example>\r\nTo: bob@ours.example\r\nSubject: hello\r\n"
    b"Date: Wed, 25 Nov 2026 10:00:00 +0000\r\nMessage-ID: <%d@sender.example>\r\n\r\nHello Bob.\r\n"
)


VERDICT_MIX = ("ham", "ham", "spam", "virus", "rejected")


class CountingConnection(redis.Connection):
    """A connection that counts its writes: one per command sent alone, one per pipeline."""

    writes = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.writes += 1
        super().send_packed_command(command, check_health)


def pipeline(url: str, prefix: str, redis_checks: bool, greylist: bool, trust: bool = False) -> Pipeline:
    checks: dict[str, dict[str, Any]] = {c.name: {"enabled": False} for c in registered_checks()}
    if redis_checks:
        checks["ratelimit"] = {"enabled": True, "ip_rate": 1e6, "ip_burst": 10**7}
        checks["reputation"] = {"enabled": True}
        checks["greylist"] = {
            "enabled": greylist,
            "delay": 1,
            "auto_allowlist": 0,
            "skip_trusted_clients": trust,
        }
    config = parse_config({"redis": {"url": url, "key_prefix": prefix}, "checks": checks})
    pool = redis.ConnectionPool.from_url(url, connection_class=CountingConnection, socket_timeout=0.5)
    return Pipeline.from_config(config, Services(config, redis=redis.Redis(connection_pool=pool)))


def prefill(p: Pipeline, prefix: str, days: int, verdicts: tuple[str, ...] = VERDICT_MIX) -> None:
    """`days` days of history, `verdicts` on every day, for the bench's sender."""
    store = ReputationStore(p.services.redis, Keys(prefix), ReputationSettings())
    entities = [
        Entity("ip", "192.0.2.10"),
        Entity("net", "192.0.2.0/24"),
        Entity("helo", "sender.example"),
        Entity("from", "sender.example"),
    ]
    now = time.time()
    for d in range(days):
        for verdict in verdicts:
            store.record(entities, verdict, now - d * 86400)


def run(p: Pipeline, n: int, rcpts: int, new_triplets: bool, offset: int) -> tuple[float, float, float, str]:
    """(round trips per message, median ms per message, CPU ms per message, last action).

    With `new_triplets`, message k comes from its own address and goes to its own recipients;
    otherwise every message is the same client, sender and recipients."""
    times = []
    action = ""
    CountingConnection.writes = 0
    cpu = time.process_time()
    for i in range(n):
        k = offset + i if new_triplets else 0
        context = SmtpContext(
            client_addr=f"10.{(k >> 16) & 255}.{(k >> 8) & 255}.{k & 255}" if new_triplets else "192.0.2.10",
            helo="mail.sender.example",
            mail_from="alice@sender.example",
            rcpts=tuple(f"user{j}-{k}@ours.example" for j in range(rcpts)),
        )
        started = time.perf_counter()
        tx, verdict = scan(p, MESSAGE % (offset + i), context)
        p.after_verdict(tx, verdict)
        times.append(time.perf_counter() - started)
        action = verdict.action.value
    cpu_ms = (time.process_time() - cpu) * 1000 / n
    return CountingConnection.writes / n, statistics.median(times) * 1000, cpu_ms, action


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--rcpts", type=int, default=1, help="recipients per message")
    ap.add_argument("--history-days", type=int, default=30, help="days of reputation history (0: none)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp))
        server.start()
        try:
            cases(server.url, args)
        finally:
            server.stop()
    print(
        f"({args.messages} messages per case, {args.rcpts} recipient(s) each, {args.history_days} days of "
        "reputation history, one connection, loopback Redis.  ms/msg is wall time and shows the "
        "machine's load; CPU is this process's, Redis's own not included)"
    )


def cases(url: str, args: argparse.Namespace) -> None:
    n, rcpts = args.messages, args.rcpts
    print(f"{'case':<17} {'round trips/msg':>15} {'ms/msg (median)':>16} {'CPU ms/msg':>11}  action")

    def row(name: str, result: tuple[float, float, float, str]) -> None:
        rt, ms, cpu, action = result
        print(f"{name:<17} {rt:>15.2f} {ms:>16.3f} {cpu:>11.3f}  {action}")

    base = pipeline(url, "bench0:", redis_checks=False, greylist=False)
    row("baseline", run(base, n, rcpts, False, 0))

    grey = pipeline(url, "bench1:", redis_checks=True, greylist=True)
    prefill(grey, "bench1:", args.history_days)
    row("greylist-new", run(grey, n, rcpts, True, 0))
    for _ in range(rcpts + 1):  # scan() stops at the first 451: one recipient a round
        if run(grey, 1, rcpts, False, 10**6)[3] == "accept":
            break
        time.sleep(1.1)
    row("greylist-known", run(grey, n, rcpts, False, 10**6 + 1))

    trusted = pipeline(url, "bench3:", redis_checks=True, greylist=True, trust=True)
    prefill(trusted, "bench3:", max(args.history_days, 10), ("ham",))  # only ham: TRUSTED
    row("greylist-trusted", run(trusted, n, rcpts, False, 2 * 10**6))

    plain = pipeline(url, "bench2:", redis_checks=True, greylist=False)
    prefill(plain, "bench2:", args.history_days)
    row("no-greylist", run(plain, n, rcpts, False, 0))
    for p in (base, grey, trusted, plain):
        p.close()


if __name__ == "__main__":
    main()

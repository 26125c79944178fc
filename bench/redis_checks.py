"""Redis round trips and time per message for greylisting, reputation and rate limits.

Starts a private redis-server on a free port, runs N messages through the pipeline (every stage,
then the after-verdict hook, as the milter does) with only the Redis-backed checks on, and counts
the round trips on the wire: each write of a command or a pipeline to the socket is one.  The
baseline is the same pipeline with the Redis checks off, measured in the same run.

    python bench/redis_checks.py [--messages 2000] [--rcpts 1]

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
from filterd.keys import Keys
from filterd.pipeline import Pipeline, SmtpContext, scan
from filterd.reputation import Entity, ReputationSettings, ReputationStore
from filterd.services import Services
from tests.harness.redis import RedisServer

MESSAGE = (
    b"From: Alice <alice@sender.example>\r\nTo: bob@ours.example\r\nSubject: hello\r\n"
    b"Date: Wed, 25 Nov 2026 10:00:00 +0000\r\nMessage-ID: <%d@sender.example>\r\n\r\nHello Bob.\r\n"
)


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


def run(p: Pipeline, n: int, rcpts: int, new_triplets: bool, offset: int) -> tuple[float, float, str]:
    """(round trips per message, median ms per message, last action).

    With `new_triplets`, message k comes from its own address and goes to its own recipients;
    otherwise every message is the same client, sender and recipients."""
    times = []
    action = ""
    CountingConnection.writes = 0
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
    return CountingConnection.writes / n, statistics.median(times) * 1000, action


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--rcpts", type=int, default=1, help="recipients per message")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp))
        server.start()
        try:
            base = pipeline(server.url, "bench0:", redis_checks=False, greylist=False)
            rt, base_ms, _ = run(base, args.messages, args.rcpts, False, 0)
            print(f"{'case':<16} {'round trips/msg':>16} {'ms/msg (median)':>16} {'x baseline':>11}  action")
            print(f"{'baseline':<16} {rt:>16.2f} {base_ms:>16.3f} {1.0:>11.2f}  no Redis checks")

            grey = pipeline(server.url, "bench1:", redis_checks=True, greylist=True)
            rt, ms, action = run(grey, args.messages, args.rcpts, True, 0)
            print(f"{'greylist-new':<16} {rt:>16.2f} {ms:>16.3f} {ms / base_ms:>11.2f}  {action}")
            for _ in range(args.rcpts + 1):  # scan() stops at the first 451: one recipient a round
                if run(grey, 1, args.rcpts, False, 10**6)[2] == "accept":
                    break
                time.sleep(1.1)
            rt, ms, action = run(grey, args.messages, args.rcpts, False, 10**6 + 1)
            print(f"{'greylist-known':<16} {rt:>16.2f} {ms:>16.3f} {ms / base_ms:>11.2f}  {action}")

            trusted = pipeline(server.url, "bench3:", redis_checks=True, greylist=True, trust=True)
            store = ReputationStore(trusted.services.redis, Keys("bench3:"), ReputationSettings())
            store.record([Entity("ip", "192.0.2.10")] * 20, "ham", time.time())  # 20 ham: trusted
            rt, ms, action = run(trusted, args.messages, args.rcpts, False, 2 * 10**6 + 20)
            print(f"{'greylist-trusted':<16} {rt:>16.2f} {ms:>16.3f} {ms / base_ms:>11.2f}  {action}")

            plain = pipeline(server.url, "bench2:", redis_checks=True, greylist=False)
            rt, ms, action = run(plain, args.messages, args.rcpts, False, 0)
            print(f"{'no-greylist':<16} {rt:>16.2f} {ms:>16.3f} {ms / base_ms:>11.2f}  {action}")
            for p in (base, grey, trusted, plain):
                p.close()
        finally:
            server.stop()
    print(
        f"({args.messages} messages per case, {args.rcpts} recipient(s) each, one connection, loopback Redis)"
    )


if __name__ == "__main__":
    main()

"""What the Redis verdict counters cost on the mail path: filterd's time per message, stats off,
written synchronously (one round trip per verdict, as before the queue), and queued (as now).

    python bench/stats_cost.py [--config foundation|content|FILE] [--messages 2000] [--repeat 3]

Drives the milter path in-process as bench/milter_path.py does (its `drive`), with [stats] counting
into a private redis-server on a free loopback port (TCP, as a Redis on another host would be
reached), or with --unix over a unix socket.  Passes alternate off, sync, queued, off, sync,
queued... in one process, and the best pass of each is compared:

- mail-path CPU: the CPU time of the thread that runs the milter callbacks (`time.thread_time`),
  what delays the replies to Postfix;
- process CPU: the whole process, the queued mode's sender thread included (its writes are
  awaited at the end of the pass), what the worker's core spends;
- wall time of the pass (before the queued mode's last write).

"sync" is the queue's own writing called on the mail path for each verdict on its own: one
round trip per message, as filterd did before the queue.  Then the hook alone is timed on the very
transactions and verdicts of a pass (sync and queued), and Redis's own CPU per message is read from
its INFO.

"foundation" (bench/configs/foundation.toml) has the fewest checks: the cheapest messages, so the
largest share for the counters.  "content" is the default configuration without the checks that
need the network: rules, header heuristics, MIME, HTML.
"""

from __future__ import annotations

import argparse
import gc
import io
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.milter_path import drive, split  # noqa: E402
from bench.throughput import sample  # noqa: E402
from tests.harness.redis import RedisServer  # noqa: E402


def load(config: str, redis_url: str) -> Any:
    import tomllib

    from filterd.config import parse_config
    from filterd.registry import network_checks

    if config == "foundation":
        data = tomllib.loads((ROOT / "bench" / "configs" / "foundation.toml").read_text())
    elif config == "content":
        data = {"checks": {name: {"enabled": False} for name in network_checks()}}
    else:
        data = tomllib.loads(Path(config).read_text())
    return parse_config(
        {**data, "redis": {"url": redis_url, "key_prefix": "bench:"}, "stats": {"enabled": "on"}}
    )


def redis_cpu(client: Any) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="foundation")
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--per-session", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3, help="passes of each side")
    parser.add_argument("--unix", action="store_true", help="reach Redis over a unix socket instead of TCP")
    args = parser.parse_args()

    import redis

    from filterd import milter as filterd_milter
    from filterd import stats
    from filterd import worker as filterd_worker
    from filterd.daemon import _lean_log_records
    from filterd.pipeline import Pipeline

    server = RedisServer(Path(tempfile.mkdtemp(prefix="filterd-stats-bench-")), unix_socket=args.unix)
    server.start()
    try:
        messages = [split(raw) for raw in sample(args.messages)]
        logging.basicConfig(
            stream=io.StringIO(), level=logging.INFO, format="filterd[%(process)d]: %(message)s"
        )
        _lean_log_records()
        pipeline = Pipeline.from_config(load(args.config, server.url))
        filterd_worker.holder = filterd_worker.PipelineHolder(pipeline)
        queued = stats.recorder_for(pipeline)
        assert queued is not None
        direct = redis.Redis.from_url(server.url)

        class Synchronous(stats.StatsRecorder):
            """Each verdict written at once, on the mail path: the cost before the queue."""

            def record(self, tx: Any, verdict: Any, ts: float | None = None) -> bool:
                now = time.time() if ts is None else ts
                self._send([stats.pending(tx, verdict, now)])
                return True

        sync = Synchronous(pipeline.config.stats, "bench:", lambda: pipeline.services.redis)
        modes: dict[str, Any] = {"off": None, "sync": sync, "queued": queued}

        def run(mode: str) -> tuple[float, float, float]:
            """Mail-path CPU, process CPU and wall time per message, in ms, of one pass."""
            stats._recorders[pipeline] = modes[mode]
            gc.collect()
            thread_cpu, cpu, wall = time.thread_time(), time.process_time(), time.perf_counter()
            drive(filterd_milter.FilterdMilter, messages, args.per_session)
            thread_cpu, wall = time.thread_time() - thread_cpu, time.perf_counter() - wall
            assert stats.flush(60)
            n = len(messages)
            return 1000 * thread_cpu / n, 1000 * (time.process_time() - cpu) / n, 1000 * wall / n

        for mode in modes:  # warm up every mode (and connect to Redis)
            run(mode)
        passes: dict[str, list[tuple[float, float, float]]] = {mode: [] for mode in modes}
        for _ in range(args.repeat):
            for mode in modes:
                passes[mode].append(run(mode))
                path, cpu, wall = passes[mode][-1]
                print(
                    f"stats {mode:6}: {path:.4f} ms mail-path CPU, {cpu:.4f} ms process CPU, "
                    f"{wall:.4f} ms wall per message"
                )
        best = {mode: tuple(min(p[i] for p in passes[mode]) for i in range(3)) for mode in modes}
        off = best["off"]
        print(
            f"{args.config} ({len(pipeline.checks)} checks), {len(messages)} messages, best of {args.repeat}:"
        )
        for mode in ("sync", "queued"):
            print(
                f"  {mode:6}: "
                + "; ".join(
                    f"{what} {best[mode][i]:.4f} ms ({1000 * (best[mode][i] - off[i]):+.1f} us, "
                    f"{100 * (best[mode][i] - off[i]) / off[i]:+.1f}%)"
                    for i, what in enumerate(("mail-path CPU", "process CPU", "wall"))
                )
            )
        print(f"  off   : mail-path CPU {off[0]:.4f} ms; process CPU {off[1]:.4f} ms; wall {off[2]:.4f} ms")

        # The hook alone, on the transactions and verdicts of one pass (less noisy than a difference).
        seen: list[tuple[Any, Any]] = []

        class Keeping(stats.StatsRecorder):
            def record(self, tx: Any, verdict: Any, ts: float | None = None) -> bool:
                seen.append((tx, verdict))
                return True

        stats._recorders[pipeline] = Keeping(pipeline.config.stats, "bench:", lambda: None)
        drive(filterd_milter.FilterdMilter, messages, args.per_session)

        def replay(mode: str) -> tuple[float, float, float]:
            stats._recorders[pipeline] = modes[mode]
            before = redis_cpu(direct)
            thread_cpu, cpu = time.thread_time(), time.process_time()
            for tx, verdict in seen:
                stats.record(pipeline, tx, verdict)
            thread_cpu = time.thread_time() - thread_cpu
            assert stats.flush(60)
            n = len(seen)
            return (
                1e6 * thread_cpu / n,
                1e6 * (time.process_time() - cpu) / n,
                1e6 * (redis_cpu(direct) - before) / n,
            )

        for mode in ("sync", "queued"):
            timings = [replay(mode) for _ in range(5)]
            path_us, cpu_us, redis_us = (min(t[i] for t in timings) for i in range(3))
            print(
                f"the hook alone, {mode}, best of 5: {path_us:.1f} us mail-path CPU, {cpu_us:.1f} us "
                f"process CPU per message (= {100 * path_us / (1000 * off[0]):.1f}% / "
                f"{100 * cpu_us / (1000 * off[1]):.1f}% of the CPU filterd spends per message); "
                f"Redis's own CPU {redis_us:.1f} us per message"
            )
        stats._recorders[pipeline] = queued
        for mode in ("sync", "queued"):  # every verdict written: the numbers are of real work
            recorder = modes[mode]
            assert recorder.lost_total == 0 and recorder.counted_total > 0, (mode, recorder.lost_total)
        keys = direct.dbsize()
        history = direct.llen("bench:stats:history")
        print(f"Redis holds {keys} keys; the history list {history} entries")
        pipeline.close()
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

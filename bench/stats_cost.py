"""What the Redis verdict counters cost on the mail path: filterd's time per message, stats on vs off.

    python bench/stats_cost.py [--config foundation|content|FILE] [--messages 2000] [--repeat 3]

Drives the milter path in-process as bench/milter_path.py does (its `drive`), with [stats] counting
into a private redis-server on a free loopback port (TCP, as a Redis on another host would be
reached), or with --unix over a unix socket.  Passes alternate off, on, off, on... in one process, and the
best pass of each side is compared, in CPU time (filterd's own work: building the commands and the
JSON history entry, redis-py's encoding and parsing) and in wall time (that plus waiting for the
one round trip).  Then the hook alone is timed on the very transactions and verdicts of a pass,
and Redis's own CPU per message is read from its INFO.

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
        recorder = stats.recorder_for(pipeline)
        assert recorder is not None
        direct = redis.Redis.from_url(server.url)

        def run(on: bool) -> tuple[float, float]:
            stats._recorders[pipeline] = recorder if on else None
            gc.collect()
            cpu, wall = time.process_time(), time.perf_counter()
            drive(filterd_milter.FilterdMilter, messages, args.per_session)
            n = len(messages)
            return 1000 * (time.process_time() - cpu) / n, 1000 * (time.perf_counter() - wall) / n

        run(True)  # warm up both sides (and connect to Redis)
        run(False)
        passes: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
        for _ in range(args.repeat):
            for on in (False, True):
                passes[on].append(run(on))
                cpu, wall = passes[on][-1]
                print(f"stats {'on ' if on else 'off'}: {cpu:.4f} ms CPU, {wall:.4f} ms wall per message")
        off_cpu, on_cpu = min(p[0] for p in passes[False]), min(p[0] for p in passes[True])
        off_wall, on_wall = min(p[1] for p in passes[False]), min(p[1] for p in passes[True])
        print(
            f"{args.config} ({len(pipeline.checks)} checks), {len(messages)} messages, best of {args.repeat}: "
            f"CPU off {off_cpu:.4f} ms, on {on_cpu:.4f} ms ({1000 * (on_cpu - off_cpu):+.1f} us, "
            f"{100 * (on_cpu - off_cpu) / off_cpu:+.1f}%); wall off {off_wall:.4f} ms, on {on_wall:.4f} ms "
            f"({1000 * (on_wall - off_wall):+.1f} us, {100 * (on_wall - off_wall) / off_wall:+.1f}%)"
        )

        # The hook alone, on the transactions and verdicts of one pass (less noisy than a difference).
        seen: list[tuple[Any, Any]] = []

        class Keeping(stats.StatsRecorder):
            def record(self, tx: Any, verdict: Any, ts: float | None = None) -> bool:
                seen.append((tx, verdict))
                return True

        stats._recorders[pipeline] = Keeping(pipeline.config.stats, "bench:", lambda: None)
        drive(filterd_milter.FilterdMilter, messages, args.per_session)
        stats._recorders[pipeline] = recorder

        def replay() -> tuple[float, float, float]:
            before = redis_cpu(direct)
            cpu, wall = time.process_time(), time.perf_counter()
            for tx, verdict in seen:
                stats.record(pipeline, tx, verdict)
            n = len(seen)
            cpu_us, wall_us = 1e6 * (time.process_time() - cpu) / n, 1e6 * (time.perf_counter() - wall) / n
            return cpu_us, wall_us, 1e6 * (redis_cpu(direct) - before) / n

        timings = [replay() for _ in range(5)]
        cpu_us, wall_us, redis_us = (min(t[i] for t in timings) for i in range(3))
        print(
            f"the hook alone, best of 5: {cpu_us:.1f} us CPU, {wall_us:.1f} us wall per message "
            f"(one pipelined round trip); Redis's own CPU {redis_us:.1f} us per message; "
            f"= {100 * cpu_us / (1000 * off_cpu):.1f}% of the {off_cpu:.4f} ms CPU filterd spends per message"
        )
        keys = direct.dbsize()
        history = direct.llen("bench:stats:history")
        print(f"Redis holds {keys} keys; the history list {history} entries")
        pipeline.close()
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

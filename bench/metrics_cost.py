"""What the Prometheus metrics cost on the mail path: filterd's CPU per message, metrics on vs off.

    python bench/metrics_cost.py [--config foundation|content|FILE] [--messages 2000] [--repeat 3]

Drives the milter path in-process as bench/milter_path.py does (its `drive`), with the metrics in
prometheus_client's multiprocess mode (a temporary PROMETHEUS_MULTIPROC_DIR, set before the import,
as filterd.metrics.start does) -- so each increment writes to the memory-mapped file as in a worker.
Passes alternate off, on, off, on... in one process (same caches, same warmed-up state), and the
best pass of each side is compared: the difference is what `filterd.metrics.message_done` costs.

"foundation" (bench/configs/foundation.toml) has the fewest checks: the cheapest messages, so the
largest share for the metrics.  "content" is the default configuration without the checks that
need the network (DNS, Redis, clamd): rules, header heuristics, MIME, HTML -- about 25 checks a
message, each with its CPU-time histogram.
"""

from __future__ import annotations

import argparse
import gc
import io
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="filterd-metrics-bench-")

from bench.milter_path import drive, split  # noqa: E402
from bench.throughput import sample  # noqa: E402


def load(config: str) -> object:
    from filterd.config import load_config, parse_config
    from filterd.registry import network_checks

    if config == "foundation":
        return load_config(ROOT / "bench" / "configs" / "foundation.toml")
    if config == "content":
        return parse_config({"checks": {name: {"enabled": False} for name in network_checks()}})
    return load_config(config)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="foundation")
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--per-session", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3, help="passes of each side")
    args = parser.parse_args()

    from prometheus_client import CollectorRegistry

    from filterd import metrics
    from filterd import milter as filterd_milter
    from filterd import worker as filterd_worker
    from filterd.daemon import _lean_log_records
    from filterd.pipeline import Pipeline

    messages = [split(raw) for raw in sample(args.messages)]
    logging.basicConfig(stream=io.StringIO(), level=logging.INFO, format="filterd[%(process)d]: %(message)s")
    _lean_log_records()
    pipeline = Pipeline.from_config(load(args.config))  # type: ignore[arg-type]
    filterd_worker.holder = filterd_worker.PipelineHolder(pipeline)
    recorder = metrics.Metrics(CollectorRegistry(auto_describe=False))
    checks = len(pipeline.checks)

    def run(on: bool) -> float:
        metrics._metrics = recorder if on else None
        gc.collect()
        started = time.process_time()
        drive(filterd_milter.FilterdMilter, messages, args.per_session)
        return 1000 * (time.process_time() - started) / len(messages)

    run(True)  # warm up both sides (and create every metric child once)
    run(False)
    passes: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.repeat):
        for on in (False, True):
            passes[on].append(run(on))
            print(f"metrics {'on ' if on else 'off'}: {passes[on][-1]:.4f} ms CPU per message")
    off, on = min(passes[False]), min(passes[True])
    print(
        f"{args.config} ({checks} checks), {len(messages)} messages, best of {args.repeat}: "
        f"off {off:.4f} ms, on {on:.4f} ms, metrics {1000 * (on - off):.1f} us/message "
        f"= {100 * (on - off) / off:+.2f}% of filterd's CPU per message"
    )

    # The difference of two noisy passes is the sum of two errors on a shared machine.  So the
    # hook is also timed alone, on the very transactions and verdicts of a pass: each recorded,
    # then every 1000 (a worker's second at full load) flushed, as its metrics thread would.
    seen: list[tuple[Any, Any]] = []

    class Keeping(metrics.Metrics):
        def record_message(self, tx: Any, verdict: Any) -> None:
            seen.append((tx, verdict))

    metrics._metrics = Keeping(CollectorRegistry(auto_describe=False))
    drive(filterd_milter.FilterdMilter, messages, args.per_session)
    metrics._metrics = recorder

    def replay() -> float:
        started = time.process_time()
        for i, (tx, verdict) in enumerate(seen):
            metrics.message_done(tx, verdict)
            if i % 1000 == 999:
                recorder.flush()
        recorder.flush()
        return 1e6 * (time.process_time() - started) / len(seen)

    hook = min(replay() for _ in range(5))
    print(
        f"the hook alone on those messages (flushes included), best of 5: {hook:.2f} us/message "
        f"= {100 * hook / (1000 * off):.2f}% of the {off:.4f} ms filterd spends per message"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The antivirus result cache on a bulk run of identical messages: scans/s with and without it.

    .venv/bin/python bench/clamav_cache.py [--messages 300] [--rounds 3] [--attachment-kib 64 512] [--json]

A bulk mailing is many copies of one message that differ only in their per-copy headers (To,
Message-ID).  For each attachment size, the same copies go through the antivirus check twice in
one run, against a private clamd (on the test signatures in tests/clamav/) and redis-server:

- without the cache (``cache_ttl = 0``): clamd scans every copy;
- with the cache: clamd scans the first copy, Redis answers the rest.

Rounds alternate between the two and medians are reported (this machine is shared and noisy:
compare the ratio, not the absolute figures).  Reported: checks/s each way and their ratio, the
cache's hits and misses (from its Redis counters, last round) and clamd's CPU time per round.  The check runs in this process, one message at a time, as one
milter worker would.  clamd here loads two test signatures; with the official databases
(~1 GB, millions of signatures) each scan costs clamd far more, so the ratio shown here is a lower
bound of what the cache saves in production.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from filterd.checks.antivirus import Antivirus  # noqa: E402
from filterd.config import parse_config  # noqa: E402
from filterd.scancache import ScanCache  # noqa: E402
from filterd.services import Services  # noqa: E402
from filterd.transaction import Session, Transaction  # noqa: E402
from tests.harness.clamd import ClamdServer, cache_key_file  # noqa: E402
from tests.harness.redis import RedisServer  # noqa: E402


def copies(count: int, attachment_kib: int) -> list[bytes]:
    """`count` copies of one newsletter with a PDF-like attachment; only To and Message-ID differ."""
    payload = base64.encodebytes(os.urandom(attachment_kib * 1024)).replace(b"\n", b"\r\n")
    body = (
        b"--b\r\nContent-Type: text/plain\r\n\r\nThis month's newsletter is attached.\r\n"
        b"--b\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n"
        b'Content-Disposition: attachment; filename="newsletter.pdf"\r\n\r\n' + payload + b"--b--\r\n"
    )
    out = []
    for i in range(count):
        head = (
            f"From: News <news@example.org>\r\nTo: <reader{i}@example.net>\r\n"
            f"Subject: Newsletter\r\nMessage-ID: <{i}.{secrets.token_hex(6)}@example.org>\r\n"
            "Date: Mon, 01 Jan 2024 00:00:00 +0000\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
        ).encode()
        out.append(head + body)
    return out


def clamd_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(clamd: ClamdServer, redis: RedisServer, messages: list[bytes], cache_ttl: int) -> dict[str, Any]:
    prefix = f"bench{secrets.token_hex(4)}:"
    config = parse_config(
        {
            "redis": {"url": redis.url, "key_prefix": prefix},
            "checks": {
                "antivirus": {
                    "enabled": True,
                    "sockets": [clamd.unix_address],
                    "cache_ttl": cache_ttl,
                    "cache_key_file": cache_key_file(),  # no signing key, no cache
                }
            },
        }
    )
    services = Services(config)
    check = Antivirus(config.check_settings("antivirus"), config, services)
    session = Session(client_addr="192.0.2.1")
    assert clamd.proc is not None
    cpu_before = clamd_cpu(clamd.proc.pid)
    started = time.perf_counter()
    for raw in messages:
        tx = Transaction.start(session)
        tx.raw_message = raw
        tx.size = len(raw)
        outputs = list(check.run(tx))
        if not any(getattr(o, "value", None) == "Clean" for o in outputs):
            raise RuntimeError(f"unexpected result: {outputs}")
    elapsed = time.perf_counter() - started
    result: dict[str, Any] = {
        "checks_per_s": round(len(messages) / elapsed, 1),
        "ms_per_check": round(1000 * elapsed / len(messages), 3),
        "clamd_cpu_s": round(clamd_cpu(clamd.proc.pid) - cpu_before, 2),
    }
    if cache_ttl:
        cache = ScanCache(services.redis, prefix, cache_ttl, check.s.cache_headers)
        result.update(cache.counters())
    services.close()
    return result


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median checks/s (its other figures come with it)."""
    return sorted(runs, key=lambda r: r["checks_per_s"])[len(runs) // 2]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=300, help="copies per run")
    parser.add_argument("--rounds", type=int, default=3, help="runs each way; medians are reported")
    parser.add_argument("--attachment-kib", type=int, nargs="+", default=[64, 512], help="attachment sizes")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="filterd-bench-av-"))
    clamd = ClamdServer(workdir / "clamd")
    redis = RedisServer(workdir / "redis")
    report: list[dict[str, Any]] = []
    try:
        clamd.start()
        redis.start()
        for kib in args.attachment_kib:
            messages = copies(args.messages, kib)
            run(clamd, redis, messages[:50], 0)  # warm up clamd and this process
            runs: dict[str, list[dict[str, Any]]] = {"no_cache": [], "cache": []}
            for _ in range(args.rounds):
                runs["no_cache"].append(run(clamd, redis, messages, 0))
                runs["cache"].append(run(clamd, redis, messages, 3600))
            uncached, cached = (median_run(runs[k]) for k in ("no_cache", "cache"))
            report.append(
                {
                    "attachment_kib": kib,
                    "message_bytes": len(messages[0]),
                    "messages": args.messages,
                    "rounds": args.rounds,
                    "no_cache": uncached,
                    "cache": cached,
                    "ratio": round(cached["checks_per_s"] / uncached["checks_per_s"], 2),
                    "rounds_no_cache": [r["checks_per_s"] for r in runs["no_cache"]],
                    "rounds_cache": [r["checks_per_s"] for r in runs["cache"]],
                }
            )
    finally:
        redis.stop()
        clamd.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(
        f"{args.messages} copies of one message (To and Message-ID differ), one check at a time, "
        f"median of {args.rounds} rounds"
    )
    print(
        f"{'attachment':>10} {'no cache/s':>11} {'cache/s':>9} {'ratio':>6} {'hits':>6} {'misses':>6}  clamd CPU s (no cache / cache)"
    )
    for r in report:
        print(
            f"{r['attachment_kib']:>7} KiB {r['no_cache']['checks_per_s']:>11.1f} {r['cache']['checks_per_s']:>9.1f} "
            f"{r['ratio']:>6.2f} {r['cache']['hits']:>6} {r['cache']['misses']:>6}  "
            f"{r['no_cache']['clamd_cpu_s']} / {r['cache']['clamd_cpu_s']}"
        )
        print(f"{'':>10} rounds: no cache {r['rounds_no_cache']}, cache {r['rounds_cache']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

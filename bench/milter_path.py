"""filterd's Python cost per message on the milter path, without libmilter or Postfix.

    python bench/milter_path.py [--config FILE] [--messages 2000] [--per-session 100] [--profile]

Drives `filterd.milter.FilterdMilter` (or, with --trivial, bench/trivial_milter.py's class) the
way pymilter does -- negotiate, connect, HELO, then per message MAIL, RCPT, one call per header,
end of headers, the body in 64 KiB chunks, end of message -- with a stand-in for libmilter's
context that records the modifications.  It prints the CPU time per message in the process, so a
change to the mail path can be measured in seconds and without the noise of the whole stack
(bench/throughput.py measures that).  --profile prints cProfile's top functions.

It leaves out libmilter's own work (the socket, parsing packets, taking the GIL per callback), so
its figure is a lower bound of what bench/throughput.py reports as filterd's CPU per message.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import logging
import pstats
import re
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import Milter  # noqa: E402

from bench.throughput import sample  # noqa: E402

_HEADER = re.compile(rb"^([^:\s]+):(.*)$", re.S)
CHUNK = 65535  # Postfix's milter body chunk


class FakeContext:
    """The few methods of pymilter's milterContext that a milter calls."""

    def __init__(self) -> None:
        self.priv: Any = None
        self.macros = {
            "j": "mx.example.net",
            "{client_name}": "client.example.org",
            "{client_addr}": "192.0.2.10",
            "i": "4ABCDEF123",
        }
        self.changes = 0

    def setpriv(self, priv: Any) -> None:
        self.priv = priv

    def getpriv(self) -> Any:
        return self.priv

    def getsymval(self, name: str) -> str | None:
        return self.macros.get(name)

    def setsymlist(self, stage: int, macros: str) -> None:
        pass

    def addheader(self, name: str, value: str, idx: int = -1) -> None:
        self.changes += 1

    def chgheader(self, name: str, idx: int, value: str | None) -> None:
        self.changes += 1

    def setreply(self, *args: Any) -> None:
        pass

    def quarantine(self, reason: str) -> None:
        pass


def split(raw: bytes) -> tuple[list[tuple[str, bytes]], bytes]:
    """Headers as Postfix hands them over with P_HDR_LEADSPC (value with its leading space, LF folds)."""
    raw = raw.replace(b"\r\n", b"\n")
    head, _, body = raw.partition(b"\n\n")
    headers: list[tuple[str, bytes]] = []
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t") and headers:
            name, value = headers[-1]
            headers[-1] = (name, value + b"\n" + line)
        elif (m := _HEADER.match(line)) is not None:
            headers.append((m.group(1).decode("ascii", "replace"), m.group(2)))
    return headers, body.replace(b"\n", b"\r\n")


def drive(factory: Any, messages: list[tuple[list[tuple[str, bytes]], bytes]], per_session: int) -> int:
    """Run every message through milters made by `factory`, `per_session` messages a connection,
    calling what libmilter would call (filterd's own callbacks, or pymilter's for --trivial)."""
    from filterd import milter as cb

    filterd = factory is cb.FilterdMilter
    changes = 0
    for start in range(0, len(messages), per_session):
        ctx = FakeContext()
        m = factory()
        m._setctx(ctx)
        opts = [Milter.CURR_ACTS, 0x1FFFFF, 0, 0]
        m.negotiate(opts)
        if filterd:
            m.connect("client.example.org", 2, ("192.0.2.10", 40000))
            m.hello("client.example.org")
        for headers, body in messages[start : start + per_session]:
            if filterd:
                cb.on_mail(ctx, b"<sender@example.org>")
                cb.on_rcpt(ctx, b"<rcpt@example.net>")
                for name, value in headers:
                    cb.on_header(ctx, name, value)
                if not m._protocol & Milter.P_NOEOH:  # as Postfix: only when negotiated
                    m.eoh()
                for i in range(0, len(body), CHUNK):
                    cb.on_body(ctx, body[i : i + CHUNK])
                cb.on_eom(ctx)
                cb.on_abort(ctx)
            else:
                for name, value in headers:
                    m.header_bytes(name, value)
                for i in range(0, len(body), CHUNK):
                    m.body(body[i : i + CHUNK])
                m.eom()
                m.abort()
        m.close()
        changes += ctx.changes
    return changes


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=ROOT / "bench" / "configs" / "foundation.toml")
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--per-session", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3, help="passes over the messages")
    parser.add_argument("--trivial", action="store_true", help="drive bench/trivial_milter.py's class")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()

    messages = [split(raw) for raw in sample(args.messages)]
    # the daemon's log line goes to stderr; here to a buffer, at the daemon's default level
    logging.basicConfig(stream=io.StringIO(), level=logging.INFO, format="filterd[%(process)d]: %(message)s")
    if not args.trivial:
        from filterd.daemon import _lean_log_records

        _lean_log_records()  # as the daemon does
    if args.trivial:
        from bench.trivial_milter import Trivial

        factory: Any = Trivial
    else:
        from filterd import milter as filterd_milter
        from filterd import worker as filterd_worker
        from filterd.config import load_config
        from filterd.pipeline import Pipeline

        config_path = args.config
        filterd_worker.holder = filterd_worker.PipelineHolder(Pipeline.from_config(load_config(config_path)))
        factory = filterd_milter.FilterdMilter
    drive(factory, messages[:100], args.per_session)  # warm up
    profiler = cProfile.Profile() if args.profile else None
    per_pass = []
    for _ in range(args.repeat):
        gc_before = sum(s["collections"] for s in gc.get_stats())
        started = time.process_time()
        if profiler:
            profiler.enable()
        drive(factory, messages, args.per_session)
        if profiler:
            profiler.disable()
        per_pass.append(1000 * (time.process_time() - started) / len(messages))
        gcs = sum(s["collections"] for s in gc.get_stats()) - gc_before
        print(f"pass: {per_pass[-1]:.3f} ms CPU per message ({gcs} GC collections)")
    print(f"best: {min(per_pass):.3f} ms CPU per message over {len(messages)} messages")
    if profiler:
        stats = pstats.Stats(profiler)
        stats.sort_stats("tottime").print_stats(30)
        stats.sort_stats("cumulative").print_stats(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())

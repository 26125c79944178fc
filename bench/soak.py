"""Soak: does filterd's memory stay flat under steady mail?  RSS and PSS per process every 30 s.

    nice -n 10 python bench/soak.py [--minutes 30] [--interval 30] [--rate 20] [--sessions 4]
        [--per-session 5] [--workers 2] [--config EXTRA.toml] [--no-bayes] [--json FILE]

What runs: filterd (`python -m filterd`, as an admin runs it) with its default pipeline plus the
Bayes check (the shipped model, its signatures in a private redis-server), behind a private
Postfix from the test harness (tests/harness), relaying to smtp-sink; SPF, DKIM and DMARC ask a
local DNS server.  So every message takes the real path: SMTP client -> Postfix -> milter ->
Postfix -> sink, one SMTP session per `--per-session` messages (connections open and close, as on
an MX).  `--config` merges extra TOML over that (e.g. to turn on more checks).

What it sends: corpus messages (ham and spam of the SpamAssassin public corpus, in
$FILTERD_CORPUS/spamassassin-public, default ../shared/corpus; the corpus is the public one from
https://spamassassin.apache.org/old/publiccorpus/ with a manifest.csv of path,label), round robin,
paced at `--rate` messages a second over `--sessions` concurrent sessions.  A refusal (5xx for
spam, 4xx) is a decision, counted and not retried.

What it prints: every `--interval` seconds one line per filterd process (the parent, each worker)
with its RSS, PSS and anonymous PSS in MiB, read from /proc/PID/smaps_rollup (PSS divides each
shared page among the processes that map it, so the workers' copy-on-write sharing of what the
parent built shows there and not in RSS; anonymous PSS leaves out the shared libraries, whose
share moves with every other process on the machine).  At the end a summary per process: the growth from the first sample to
the last (the whole run), and from the middle sample to the last (the last half: memory that is
still growing then is a leak, not a warm-up), and the messages sent, refused and delivered.  A
worker replaced during the run (its pid changed) is reported as such.

See docs/soak.md for how to read the figures and how to find what grows.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import signal
import smtplib
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.throughput import delivered, process_tree, sample  # noqa: E402
from tests.harness.dns import LocalDns  # noqa: E402
from tests.harness.filterd import Filterd  # noqa: E402
from tests.harness.net import free_port, port_open, wait_for  # noqa: E402
from tests.harness.postfix import Postfix  # noqa: E402
from tests.harness.redis import RedisServer  # noqa: E402
from tests.harness.stack import private_dir  # noqa: E402

MIB = 1024 * 1024


def memory(pid: int) -> tuple[float, float, float] | None:
    """(RSS, PSS, anonymous PSS) of a process in MiB, from /proc/PID/smaps_rollup; None once it
    is gone.  The anonymous part is the process's own data (heap, arrays) shared only with its
    parent or siblings: the PSS of shared libraries also moves with every other process on the
    machine that maps them, so it is noise for a leak hunt."""
    values: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in ("Rss", "Pss", "Pss_Anon"):
                values[name] = int(rest.split()[0]) * 1024
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return None
    if len(values) != 3:
        return None
    return values["Rss"] / MIB, values["Pss"] / MIB, values["Pss_Anon"] / MIB


@dataclass
class Counts:
    sent: int = 0
    refused: int = 0
    errors: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, name: str) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + 1)


class Sender:
    """Corpus messages at a steady rate over a few concurrent SMTP sessions, until stopped."""

    def __init__(
        self, port: int, messages: list[bytes], rate: float, sessions: int, per_session: int
    ) -> None:
        self.port = port
        self.messages = itertools.cycle(messages)
        self.interval = 1.0 / rate
        self.sessions = sessions
        self.per_session = per_session
        self.counts = Counts()
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._next = time.monotonic()
        self._threads = [threading.Thread(target=self._session_loop, daemon=True) for _ in range(sessions)]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def join(self) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(timeout=120)

    def _slot(self) -> bytes:
        """The next message, once its turn in the schedule has come (a global pace, not per session)."""
        with self._lock:
            due = self._next = max(self._next + self.interval, time.monotonic() - 1.0)
            data = next(self.messages)
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        return data

    def _session_loop(self) -> None:
        while not self.stop.is_set():
            try:
                with smtplib.SMTP(
                    "127.0.0.1", self.port, local_hostname="soak.example.org", timeout=120
                ) as smtp:
                    for _ in range(self.per_session):
                        if self.stop.is_set():
                            break
                        data = self._slot()
                        try:
                            smtp.sendmail("soak@example.org", ["rcpt@example.net"], data)
                            self.counts.add("sent")
                        except (
                            smtplib.SMTPDataError,
                            smtplib.SMTPRecipientsRefused,
                            smtplib.SMTPSenderRefused,
                        ):
                            self.counts.add("refused")
                            smtp.rset()
            except (OSError, smtplib.SMTPException):
                self.counts.add("errors")
                time.sleep(1.0)


def growth(first: float, last: float) -> str:
    return f"{last - first:+.1f} MiB ({(last - first) / first * 100:+.1f}%)" if first else "n/a"


def summarize(samples: list[dict[str, Any]]) -> list[str]:
    """Per process role (parent, worker slots by order of appearance): growth over the whole run
    and over the last half, RSS and PSS."""
    lines = []
    first, middle, last = samples[0], samples[len(samples) // 2], samples[-1]
    for role in last["procs"]:
        if role not in first["procs"] or role not in middle["procs"]:
            continue
        a, m, z = first["procs"][role], middle["procs"][role], last["procs"][role]
        replaced = " (replaced during the run)" if a["pid"] != z["pid"] else ""
        lines.append(
            f"{role:9} pid {z['pid']}{replaced}: RSS {a['rss']:.1f} -> {z['rss']:.1f} MiB, whole run "
            f"{growth(a['rss'], z['rss'])}, last half {growth(m['rss'], z['rss'])}; PSS {a['pss']:.1f} -> "
            f"{z['pss']:.1f} MiB, whole run {growth(a['pss'], z['pss'])}, last half {growth(m['pss'], z['pss'])}; "
            f"anonymous PSS {a['anon']:.1f} -> {z['anon']:.1f} MiB, whole run {growth(a['anon'], z['anon'])}, "
            f"last half {growth(m['anon'], z['anon'])}"
        )
    for kind, label in (("pss", "PSS"), ("anon", "anonymous PSS")):
        total = [sum(p[kind] for p in s["procs"].values()) for s in (first, middle, last)]
        lines.append(
            f"all       {label} {total[0]:.1f} -> {total[2]:.1f} MiB, whole run {growth(total[0], total[2])}, "
            f"last half {growth(total[1], total[2])}"
        )
    return lines


def snapshot(parent: int, started: float, sender: Sender, postfix: Postfix) -> dict[str, Any]:
    procs: dict[str, dict[str, float]] = {}
    pids = process_tree(parent)
    for n, pid in enumerate(pids):
        mem = memory(pid)
        if mem is not None:
            procs["parent" if n == 0 else f"worker{n}"] = {
                "pid": pid,
                "rss": mem[0],
                "pss": mem[1],
                "anon": mem[2],
            }
    c = sender.counts
    return {
        "t": round(time.monotonic() - started, 1),
        "sent": c.sent,
        "refused": c.refused,
        "errors": c.errors,
        "delivered": delivered(postfix),
        "procs": procs,
    }


def print_sample(s: dict[str, Any]) -> None:
    procs = "  ".join(
        f"{role} {p['pid']}: rss {p['rss']:.1f} pss {p['pss']:.1f} anon {p['anon']:.1f}"
        for role, p in s["procs"].items()
    )
    print(
        f"t={s['t']:7.0f}s sent={s['sent']} refused={s['refused']} errors={s['errors']} "
        f"delivered={s['delivered']} | {procs}",
        flush=True,
    )


def _interrupt(signo: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between memory samples")
    parser.add_argument("--rate", type=float, default=20.0, help="messages a second")
    parser.add_argument("--sessions", type=int, default=4, help="concurrent SMTP sessions")
    parser.add_argument("--per-session", type=int, default=5, help="messages per SMTP session")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--messages", type=int, default=1000, help="distinct corpus messages, sent round robin"
    )
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds of mail before the first sample")
    parser.add_argument("--config", type=Path, help="extra filterd configuration (TOML) appended")
    parser.add_argument("--no-bayes", action="store_true", help="the default pipeline only")
    parser.add_argument("--json", type=Path, help="also write every sample here")
    args = parser.parse_args()
    sink_binary = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
    if not Path(sink_binary).exists():
        sys.exit("smtp-sink (Debian package postfix) is needed")

    messages = sample(args.messages)
    # a run started in the background ignores SIGINT: SIGTERM stops it early, cleaning up as at its end
    signal.signal(signal.SIGTERM, _interrupt)
    workdir = private_dir("filterd-soak-")
    dns = LocalDns()
    redis_server = RedisServer(workdir / "redis")
    sink_port = free_port()
    sink = subprocess.Popen(
        [sink_binary, "-u", "nobody", f"127.0.0.1:{sink_port}", "1000"], stdout=subprocess.DEVNULL
    )
    filterd = Filterd(workdir, workdir / "filterd.sock")
    postfix = Postfix(workdir / "postfix", f"unix:{filterd.socket_path}", sink_port)
    samples: list[dict[str, Any]] = []
    sender: Sender | None = None
    try:
        wait_for(lambda: port_open(sink_port), 10, "smtp-sink")
        dns.start()
        redis_server.start()
        config: dict[str, Any] = {
            "milter": {"workers": args.workers},
            "dns": {"nameservers": ["127.0.0.1"], "port": dns.port},
            "redis": {"url": redis_server.url, "key_prefix": "soak:"},
        }
        if not args.no_bayes:
            config["checks"] = {"bayes": {"enabled": True}}
        filterd.configure(config)
        if args.config:
            filterd.config_path.write_text(filterd.config_path.read_text() + "\n" + args.config.read_text())
        filterd.start()
        postfix.start()
        assert filterd.proc is not None
        parent = filterd.proc.pid
        sender = Sender(postfix.port, messages, args.rate, args.sessions, args.per_session)
        started = time.monotonic()
        sender.start()
        print(
            f"soak: {args.minutes:g} min at {args.rate:g} msg/s, {args.sessions} sessions, "
            f"{args.workers} workers, bayes {'off' if args.no_bayes else 'on'}; warm-up {args.warmup:g} s",
            flush=True,
        )
        try:
            time.sleep(args.warmup)
            end = time.monotonic() + args.minutes * 60
            while True:
                s = snapshot(parent, started, sender, postfix)
                samples.append(s)
                print_sample(s)
                if time.monotonic() + args.interval > end + 1:
                    break
                time.sleep(args.interval)
                if filterd.proc.poll() is not None:
                    print("filterd exited", flush=True)
                    break
        except KeyboardInterrupt:
            print("stopped early", flush=True)
    finally:
        if sender is not None:
            sender.join()
        postfix.stop()
        filterd.stop()
        sink.terminate()
        sink.wait()
        dns.stop()
        redis_server.stop()
        log = filterd.log()
        shutil.rmtree(workdir, ignore_errors=True)
    if len(samples) >= 2:
        print("summary (first sample after warm-up -> last; middle -> last):")
        for line in summarize(samples):
            print("  " + line)
    errors = [line for line in log.splitlines() if " ERROR " in line or "Traceback" in line]
    print(f"filterd logged {len(errors)} error lines" + (f", first: {errors[0]}" if errors else ""))
    if args.json:
        args.json.write_text(json.dumps(samples, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Throughput of the whole mail path, with and without filterd (and a peer), side by side in one run.

    .venv/bin/python bench/throughput.py [--messages 2000] [--sessions 20] [--rounds 6]
        [--profile default|foundation|full] [--peer rspamd] [--auth] [--redis] [--clamd]
        [--greylist off|rcpt|content] [--warm-caches] [--json FILE]

A fixed sample of real messages from the SpamAssassin public corpus (ham and spam, chosen by a hash
of the file name) is sent by --sessions concurrent SMTP sessions into private Postfix instances that
relay to smtp-sink: one with no milter (the baseline), one wired to filterd over a unix socket and,
with --peer rspamd, one wired to a private rspamd (bench/peer_rspamd.py, configured from
bench/rspamd/).  Each round sends the sample through every path; the order of the paths changes
from round to round (each path goes first as often as the others), and each round's rate is
compared with the same round's no-milter rate, since this machine drifts: compare the ratios, not
the absolute figures.  docs/bench.md says how to read the report.

What keeps it honest:
- every message keeps its own headers and MIME structure; its envelope sender is its From address,
  whose domain the local DNS server publishes SPF (pass for 127.0.0.1) and DMARC for; recipients
  vary over 50 addresses (bench/corpus_mail.py).  --auth puts two DKIM signatures (RSA, Ed25519) of
  the From domain on top of the original headers, so SPF, DKIM and DMARC all run and pass;
- before each round every cache is emptied: filterd and rspamd are restarted (their in-process DNS,
  DKIM-key and SPF caches), the Redis state of both (scan cache, greylist, rate limits, reputation)
  is flushed, and clamd runs with its own cache of clean files off, so that a path run after another
  does not find the parts already scanned.  A short warm-up on other messages, from a domain of its
  own, follows each restart.  --warm-caches keeps everything across rounds (the old measurement);
- greylisting, when on, sees a new triplet per sender and recipient, and every reply is counted:
  sent, 4xx, 5xx, delivered (at the sink), per path;
- memory is PSS (/proc/PID/smaps_rollup) summed over all the filter's processes, so pages its
  forked workers share count once; CPU is utime + stime of each process from /proc/PID/stat, for
  the filter and for each service it uses (its Redis, clamd, the DNS server, a process of its own).

Profiles: "default" is filterd as shipped (Bayes included), plus what --redis and --clamd turn on;
"foundation" is bench/configs/foundation.toml; "full" is bench/configs/full.toml (Bayes, antivirus,
reputation, rate limits, content-gated greylisting), which implies --redis and --clamd and is the
configuration rspamd's modules are chosen to match.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import smtplib
import statistics
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import peer_rspamd  # noqa: E402
from bench.corpus_mail import Mail, SenderDomains, crlf, load, split_sample  # noqa: E402
from bench.pss import cpu_seconds, process_tree, pss_mib  # noqa: E402
from tests.harness.clamd import ClamdServer, cache_key_file  # noqa: E402
from tests.harness.filterd import Filterd, merge  # noqa: E402
from tests.harness.net import free_port, port_open, run_sessions, wait_for  # noqa: E402
from tests.harness.postfix import Postfix  # noqa: E402
from tests.harness.redis import RedisServer  # noqa: E402
from tests.harness.stack import private_dir  # noqa: E402

CORPUS = Path(os.environ.get("FILTERD_CORPUS", ROOT.parent / "shared" / "corpus")) / "spamassassin-public"
CONFIGS = ROOT / "bench" / "configs"
_TIME = re.compile(r" time=(\S+)")
WARM_DOMAIN = "warm.bench.test"  # the warm-up mail's domain: it fills no cache the sample uses
WARM_COUNT = 40
TRAIN_PER_CLASS = 250  # rspamd's Bayes answers after 200 learned messages of each class


def sample(count: int) -> list[bytes]:
    """`count` corpus files as they are, half ham and half spam, chosen by a hash of the path: the
    sample of bench/milter_load.py, milter_path.py and soak.py (this bench sends the same messages,
    prepared by bench/corpus_mail.py)."""
    return [(CORPUS / path).read_bytes() for path, _ in split_sample(CORPUS, count, 0)[0]]


# ---------------------------------------------------------------------------------------------
# sending and counting


@dataclass
class Counts:
    sent: int = 0
    accepted: int = 0  # 250 at end of DATA
    tempfail: int = 0  # 4xx at MAIL, RCPT or DATA (or the connection dropped)
    reject: int = 0  # 5xx

    def add(self, other: Counts) -> None:
        self.sent += other.sent
        self.accepted += other.accepted
        self.tempfail += other.tempfail
        self.reject += other.reject


def _refusal_code(exc: smtplib.SMTPException) -> int:
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return min(code for code, _ in exc.recipients.values())
    return int(getattr(exc, "smtp_code", 451))


def send_all(port: int, mails: list[Mail], sessions: int) -> Counts:
    """Send every message over `sessions` concurrent SMTP sessions; count the replies."""
    shares = [mails[i::sessions] for i in range(sessions)]
    counts = [Counts() for _ in range(sessions)]

    def session(n: int) -> None:
        c = counts[n]
        smtp = smtplib.SMTP("127.0.0.1", port, timeout=120)
        try:
            for mail in shares[n]:
                c.sent += 1
                try:
                    smtp.sendmail(mail.sender, [mail.rcpt], mail.data)
                    c.accepted += 1
                except smtplib.SMTPServerDisconnected:  # a 421: counted, and a new session
                    c.tempfail += 1
                    smtp = smtplib.SMTP("127.0.0.1", port, timeout=120)
                except (
                    smtplib.SMTPDataError,
                    smtplib.SMTPRecipientsRefused,
                    smtplib.SMTPSenderRefused,
                ) as exc:
                    if _refusal_code(exc) >= 500:
                        c.reject += 1
                    else:
                        c.tempfail += 1
                    try:
                        smtp.rset()
                    except smtplib.SMTPServerDisconnected:  # a 421 closes the session
                        smtp = smtplib.SMTP("127.0.0.1", port, timeout=120)
        finally:
            try:
                smtp.quit()
            except smtplib.SMTPException:
                pass

    run_sessions(session, range(sessions))
    total = Counts()
    for c in counts:
        total.add(c)
    return total


_seen: dict[Path, tuple[int, int]] = {}  # maillog -> (bytes read, deliveries counted)


def delivered(postfix: Postfix) -> int:
    """Deliveries logged so far.  Only the new part of the log is read at each poll: re-reading a
    log of megabytes every 20 ms would cost the bench more CPU in later rounds than in earlier ones."""
    offset, count = _seen.get(postfix.maillog, (0, 0))
    try:
        with postfix.maillog.open("rb") as log:
            log.seek(offset)
            chunk = log.read()
    except FileNotFoundError:
        return 0
    complete = chunk.rfind(b"\n") + 1  # count whole lines only
    count += chunk[:complete].count(b"status=sent")
    _seen[postfix.maillog] = (offset + complete, count)
    return count


def machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def redis_reads(port: int) -> int:
    """The server's count of read events: one per request or pipeline a client sends."""
    out = subprocess.run(
        ["redis-cli", "-p", str(port), "info", "stats"], capture_output=True, text=True, check=True
    ).stdout
    return int(re.search(r"total_reads_processed:(\d+)", out).group(1))  # type: ignore[union-attr]


def flush_redis(port: int) -> None:
    subprocess.run(["redis-cli", "-p", str(port), "flushall"], capture_output=True, check=True, timeout=30)


class PssSampler:
    """The highest summed PSS of a process tree, sampled once a second while a path runs."""

    def __init__(self, roots: Callable[[], list[int]]) -> None:
        self.roots = roots
        self.peak = 0.0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        pids = [p for root in self.roots() for p in process_tree(root)]
        self.peak = max(self.peak, pss_mib(pids))

    def _run(self) -> None:
        while not self.stop.wait(1.0):
            self._sample()

    def __enter__(self) -> PssSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self._sample()  # and once at the end, when the round's traffic has grown every cache


# ---------------------------------------------------------------------------------------------
# the paths


@dataclass
class MailPath:
    name: str
    label: str
    postfix: Postfix
    filter_roots: Callable[[], list[int]] = lambda: []  # the filter's top processes (children follow)
    services: dict[str, Callable[[], list[int]]] = field(default_factory=dict)
    redis_ports: list[int] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)
    counts: Counts = field(default_factory=Counts)
    delivered: int = 0
    cpu: dict[str, list[float]] = field(default_factory=dict)  # "filter" and each service, by round
    pss: dict[str, float] = field(default_factory=dict)  # highest over rounds
    redis_reads: int = 0
    busy: list[float] = field(default_factory=list)
    clamd_log: Path | None = None
    scans: list[int] = field(default_factory=list)  # clamd scans in each round (its log lines)


def clamd_scans(log: Path | None) -> int:
    """Scans clamd logged so far (LogClean: one line per scan, clean or not)."""
    if log is None or not log.exists():
        return 0
    text = log.read_bytes()
    return text.count(b": OK\n") + text.count(b" FOUND\n")


def run_path(path: MailPath, mails: list[Mail], sessions: int) -> None:
    """One round of one path: messages/s from the first SMTP connection until the sink has every
    accepted message; the CPU, PSS and Redis round trips it cost."""
    groups: dict[str, Callable[[], list[int]]] = {"filter": path.filter_roots, **path.services}

    def pids_of(group: str) -> list[int]:
        return [p for root in groups[group]() for p in process_tree(root)]

    cpu_before = {g: cpu_seconds(pids_of(g)) for g in groups}
    reads_before = sum(redis_reads(p) for p in path.redis_ports)
    scans_before = clamd_scans(path.clamd_log)
    before = delivered(path.postfix)
    busy0, total0 = machine_busy()
    started = time.perf_counter()
    with PssSampler(path.filter_roots) as sampler:
        counts = send_all(path.postfix.port, mails, sessions)
        wait_for(
            lambda: delivered(path.postfix) >= before + counts.accepted,
            600,
            f"the {path.name} path's accepted messages at the sink",
            0.02,
        )
        elapsed = time.perf_counter() - started
    busy1, total1 = machine_busy()
    path.rates.append(len(mails) / elapsed)
    path.counts.add(counts)
    path.delivered += delivered(path.postfix) - before
    path.busy.append(round((busy1 - busy0) / max(1, total1 - total0), 2))
    if path.clamd_log is not None:
        path.scans.append(clamd_scans(path.clamd_log) - scans_before)
    for g in groups:
        path.cpu.setdefault(g, []).append(cpu_seconds(pids_of(g)) - cpu_before[g])
    # each reading of INFO is one read event of our own
    path.redis_reads += sum(redis_reads(p) for p in path.redis_ports) - reads_before - len(path.redis_ports)
    if path.filter_roots():
        path.pss["filter"] = max(path.pss.get("filter", 0.0), sampler.peak)
    for name in path.services:
        path.pss[name] = max(path.pss.get(name, 0.0), pss_mib(pids_of(name)))


def orders(count: int, rounds: int) -> list[list[int]]:
    """The order of the paths in each round: first every rotation (each path goes first once),
    then every rotation reversed; with 3 paths, 6 rounds run all 6 orders."""
    base = list(range(count))
    rotations = [base[i:] + base[:i] for i in range(count)]
    plan = rotations + [r[::-1] for r in rotations]
    unique = [list(o) for o in dict.fromkeys(tuple(o) for o in plan)]
    return [unique[n % len(unique)] for n in range(rounds)]


# ---------------------------------------------------------------------------------------------
# configuration


def filterd_config(
    args: argparse.Namespace, dns_port: int, redis_url: str | None, clamd: ClamdServer | None
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "dns": {"nameservers": ["127.0.0.1"], "port": dns_port},
        "milter": {"workers": args.workers},  # 0: filterd's default, one per core
        "checks": {"bayes": {"enabled": True}},  # on as shipped (the test harness turns it off)
    }
    if args.profile in ("foundation", "full"):
        config = merge(config, tomllib.loads((CONFIGS / f"{args.profile}.toml").read_text()))
    if args.redis and args.profile != "full":
        config = merge(config, tomllib.loads((CONFIGS / "full.toml").read_text()))
        config["checks"].pop("antivirus")
    if args.config:
        config = merge(config, tomllib.loads(args.config.read_text()))
    if redis_url is not None:
        config["redis"] = {"url": redis_url, "key_prefix": "bench:"}
    if args.redis:
        greylist = {"enabled": args.greylist != "off"}
        if args.greylist != "off":
            greylist["mode"] = args.greylist
        config["checks"]["greylist"] = greylist
    if clamd is not None:
        config["checks"]["antivirus"] = {
            "enabled": True,
            "sockets": [clamd.unix_address],
            "cache_key_file": cache_key_file(),  # the result cache is off without a signing key
        }
    return config


class DnsProcess:
    """bench/dns_server.py serving `zone`, as a child process (its CPU is read from /proc)."""

    def __init__(self, workdir: Path, zone: str) -> None:
        self.zone_file = workdir / "zone.txt"
        self.port_file = workdir / "dns.port"
        self.zone_file.write_text(zone)
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "dns_server.py"), str(self.zone_file), str(self.port_file)]
        )
        wait_for(lambda: self.port_file.exists() and self.port_file.read_text() != "", 20, "the DNS server")
        self.port = int(self.port_file.read_text())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def warm_mails(domains: SenderDomains, others: list[Mail], sign: bool) -> list[Mail]:
    """Warm-up mail: bodies of messages outside the sample, From the warm-up domain only."""
    out = []
    for n, mail in enumerate(others[:WARM_COUNT]):
        body = mail.data.split(b"\r\n\r\n", 1)[-1]
        head = (
            f"From: Warm <warm{n}@{WARM_DOMAIN}>\r\nTo: {mail.rcpt}\r\nSubject: warm-up {n}\r\n"
            f"Message-ID: <warm{n}.{time.time()}@{WARM_DOMAIN}>\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=us-ascii\r\n\r\n"
        ).encode()
        raw = head + body
        signed = domains.sign(raw, WARM_DOMAIN) if sign else None
        out.append(Mail(f"warm{n}@{WARM_DOMAIN}", mail.rcpt, signed or raw, mail.label))
    return out


def pipeline_times_ms(log: str) -> list[float]:
    times = []
    for m in _TIME.finditer(log):
        stages = [
            float(part.split(":")[1].removesuffix("ms")) for part in m.group(1).split(",") if ":" in part
        ]
        times.append(sum(stages))
    return times


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


# ---------------------------------------------------------------------------------------------
# the report


def path_report(path: MailPath, baseline: MailPath, per_path: int) -> dict[str, Any]:
    ratios = [round(r / b, 3) for r, b in zip(path.rates, baseline.rates, strict=True)]
    out: dict[str, Any] = {
        "label": path.label,
        "msgs_per_s": round(statistics.median(path.rates), 1),
        "ratio_to_no_milter": round(statistics.median(ratios), 3),
        "rounds_msgs_per_s": [round(r, 1) for r in path.rates],
        "rounds_ratio": ratios,
        "cpu_ms_per_msg": {g: round(1000 * sum(v) / per_path, 3) for g, v in path.cpu.items()},
        "rounds_cpu_ms_per_msg": {
            g: [round(1000 * c / (per_path / len(path.rates)), 3) for c in v] for g, v in path.cpu.items()
        },
        "pss_mib": {k: round(v, 1) for k, v in path.pss.items()},
        "counts": {
            "sent": path.counts.sent,
            "accepted": path.counts.accepted,
            "delivered": path.delivered,
            "tempfail_4xx": path.counts.tempfail,
            "reject_5xx": path.counts.reject,
        },
        "machine_busy_by_round": path.busy,
    }
    if path.clamd_log is not None:
        out["clamd_scans_by_round"] = path.scans
    if path.redis_ports:
        out["redis_round_trips_per_msg"] = round(path.redis_reads / per_path, 2)
    return out


def print_table(report: dict[str, Any]) -> None:
    paths = report["paths"]
    print(
        f"{report['messages']} corpus messages ({report['case']}), {report['sessions']} sessions, "
        f"{report['rounds']} rounds, profile {report['profile']}, greylist {report['greylist']}, "
        f"caches {'kept across rounds' if report['warm_caches'] else 'emptied before each round'}"
    )
    print("msgs/s and ratio: medians over rounds (ratio: each round's rate over its own no-milter rate)")
    head = (
        f"{'path':<20}{'msgs/s':>8}{'ratio':>7}{'filter':>8}{'redis':>7}{'clamd':>7}{'dns':>7}"
        f"{'PSS MiB':>9}{'sent':>7}{'deliv':>7}{'4xx':>6}{'5xx':>6}"
    )
    print(head)
    print(f"{'':<35}{'---- CPU ms/msg ----':>29}")
    for name, p in paths.items():
        cpu = p["cpu_ms_per_msg"]

        def ms(key: str, cpu: dict[str, float] = cpu) -> str:
            return f"{cpu[key]:.2f}" if key in cpu else "-"

        pss = p["pss_mib"].get("filter")
        c = p["counts"]
        print(
            f"{name:<20}{p['msgs_per_s']:>8.1f}{p['ratio_to_no_milter']:>7.3f}"
            f"{ms('filter') if name != 'no_milter' else '-':>8}{ms('redis'):>7}{ms('clamd'):>7}{ms('dns'):>7}"
            f"{(f'{pss:.0f}' if pss else '-'):>9}{c['sent']:>7}{c['delivered']:>7}"
            f"{c['tempfail_4xx']:>6}{c['reject_5xx']:>6}"
        )
    for name, p in paths.items():
        print(f"  {name}: {p['label']}; rounds msgs/s {p['rounds_msgs_per_s']}, ratio {p['rounds_ratio']}")
        if "clamd_scans_by_round" in p:
            print(f"    clamd scans by round: {p['clamd_scans_by_round']} (of {report['messages']} messages)")
        if p["rounds_cpu_ms_per_msg"].get("filter") and name != "no_milter":
            print(f"    filter CPU ms/msg by round: {p['rounds_cpu_ms_per_msg']['filter']}")
        if "redis_round_trips_per_msg" in p:
            print(f"    Redis round trips per message: {p['redis_round_trips_per_msg']}")
        if p["pss_mib"]:
            print(f"    PSS (highest, MiB): {p['pss_mib']}")
    if "filterd_over_rspamd" in report:
        f = report["filterd_over_rspamd"]
        print(
            f"filterd / rspamd msgs/s: median {f['median']} (range {f['min']}-{f['max']}; rounds {f['rounds']})"
        )
    if "filterd" in paths:
        print(
            f"time inside filterd's pipeline per message: p50 {report['pipeline_ms_p50']} ms, "
            f"p99 {report['pipeline_ms_p99']} ms"
        )
    for note in report["notes"]:
        print(f"note: {note}")


# ---------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=6, help="6 runs every order of 3 paths")
    parser.add_argument("--profile", choices=("default", "foundation", "full"), default="default")
    parser.add_argument("--peer", choices=("rspamd",), help="also run this peer as a path of its own")
    parser.add_argument("--config", type=Path, help="filterd configuration to merge over the profile (TOML)")
    parser.add_argument("--clamd", action="store_true", help="the antivirus check, a private clamd and redis")
    parser.add_argument(
        "--redis", action="store_true", help="greylisting, reputation and rate limits (private Redis)"
    )
    parser.add_argument(
        "--greylist",
        choices=("off", "rcpt", "content"),
        default="content",
        help="with --redis or --profile full: the greylist mode (rcpt: every new triplet gets a 451)",
    )
    parser.add_argument(
        "--auth", action="store_true", help="DKIM-sign every message for its From domain (keys published)"
    )
    parser.add_argument(
        "--warm-caches",
        action="store_true",
        help="keep caches and Redis state across rounds (flatters: later rounds hit every cache)",
    )
    parser.add_argument(
        "--trivial",
        action="store_true",
        help="also measure a trivial pymilter milter (bench/trivial_milter.py)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs) for a look")
    parser.add_argument("--workers", type=int, default=0, help="filterd worker processes (0: its default)")
    parser.add_argument(
        "--json",
        type=Path,
        nargs="?",
        const=Path("-"),
        metavar="FILE",
        help="write the whole report as JSON to FILE (alone: print it instead of the table)",
    )
    args = parser.parse_args()
    if args.profile == "full":
        args.redis = args.clamd = True
    if args.peer and args.profile != "full":
        parser.error("--peer compares with filterd's full pipeline: use it with --profile full")
    return args


def main() -> int:
    args = parse_args()
    sink_exe = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
    if not Path(sink_exe).exists():
        sys.exit("smtp-sink (Debian package postfix) is needed")
    notes: list[str] = []
    peer_missing = peer_rspamd.unavailable() if args.peer else None
    if peer_missing:
        notes.append(f"the rspamd path did not run: {peer_missing}")
        print(f"note: {notes[-1]}", file=sys.stderr)

    sample_rows, other_rows = split_sample(CORPUS, args.messages, TRAIN_PER_CLASS)
    domains = SenderDomains()
    domains.domains.add(WARM_DOMAIN)
    mails, unsigned = load(CORPUS, sample_rows, domains, args.auth)
    others = [
        Mail("", f"user{n}@rcpt.bench.test", crlf((CORPUS / p).read_bytes()), label)
        for n, (p, label) in enumerate(other_rows)
    ]
    warm = warm_mails(domains, others, args.auth)
    if unsigned:
        notes.append(f"{unsigned} messages dkimpy could not sign were sent unsigned")

    workdir = private_dir("filterd-bench-")
    dns = DnsProcess(workdir, domains.zone())
    sink_port = free_port()
    sink = subprocess.Popen(
        [sink_exe, "-u", "nobody", f"127.0.0.1:{sink_port}", "1000"], stdout=subprocess.DEVNULL
    )
    wait_for(lambda: port_open(sink_port), 10, "smtp-sink")
    redis_server = RedisServer(workdir / "redis") if args.redis or args.clamd else None
    # clamd's own cache of clean files off: else the path run second finds the parts scanned;
    # LogClean: a line per scan, so the report can say that clamd scanned every message each round
    clamd = ClamdServer(workdir / "clamd", {"DisableCache": "yes", "LogClean": "yes"}) if args.clamd else None
    filterd = Filterd(workdir, workdir / "filterd.sock")
    rspamd: peer_rspamd.RspamdPeer | None = None
    trivial_proc: subprocess.Popen[bytes] | None = None
    postfixes: list[Postfix] = []
    try:
        if redis_server is not None:
            redis_server.start()
        if clamd is not None:
            clamd.start()
            os.chmod(clamd.socket_path, 0o666)  # rspamd's workers run as _rspamd
        filterd.configure(filterd_config(args, dns.port, redis_server.url if redis_server else None, clamd))
        filterd.start(timeout=120)

        def dns_pids() -> list[int]:
            return [dns.proc.pid]

        def clamd_pids() -> list[int]:
            return [clamd.proc.pid] if clamd is not None and clamd.proc is not None else []

        baseline = Postfix(workdir / "postfix-plain", "", sink_port, with_milter=False)
        paths = [MailPath("no_milter", "Postfix, no milter", baseline)]
        filterd_services: dict[str, Callable[[], list[int]]] = {"dns": dns_pids}
        if clamd is not None:
            filterd_services["clamd"] = clamd_pids
        if redis_server is not None:
            filterd_services["redis"] = lambda: [redis_server.proc.pid] if redis_server.proc else []
        paths.append(
            MailPath(
                "filterd",
                f"filterd, profile {args.profile}" + (" + clamd" if args.clamd else ""),
                Postfix(workdir / "postfix-filterd", f"unix:{filterd.socket_path}", sink_port),
                lambda: [filterd.proc.pid] if filterd.proc else [],
                filterd_services,
                [redis_server.port] if redis_server else [],
            )
        )
        if args.peer == "rspamd" and not peer_missing:
            assert clamd is not None
            rspamd = peer_rspamd.RspamdPeer(workdir / "rspamd", dns.port, clamd.socket_path)
            rspamd.start()
            started = time.perf_counter()
            train_dir = workdir / "train"
            train_dir.mkdir()
            files: dict[str, list[Path]] = {"ham": [], "spam": []}
            for n, mail in enumerate(others):  # as sent over SMTP: without the mbox "From " line
                files[mail.label].append(train_dir / f"{n}.eml")
                files[mail.label][-1].write_bytes(mail.data)
            rspamd.train(files["ham"], files["spam"])
            notes.append(
                f"rspamd's Bayes was taught {len(files['ham'])} ham and {len(files['spam'])} spam "
                f"outside the sample in {time.perf_counter() - started:.0f} s ({rspamd.learned()})"
            )
            peer = rspamd
            paths.append(
                MailPath(
                    "rspamd",
                    "rspamd 3.4, comparable modules (bench/rspamd/)",
                    Postfix(workdir / "postfix-rspamd", peer.milter, sink_port),
                    lambda: [peer.proc.pid] if peer.proc else [],
                    {
                        "dns": dns_pids,
                        "clamd": clamd_pids,
                        "redis": lambda: [
                            s.proc.pid for s in (peer.state_redis, peer.bayes_redis) if s.proc is not None
                        ],
                    },
                    [peer.state_redis.port, peer.bayes_redis.port],
                )
            )
        if args.trivial:
            trivial_socket = workdir / "trivial.sock"
            trivial_proc = subprocess.Popen(
                [sys.executable, str(ROOT / "bench" / "trivial_milter.py"), f"unix:{trivial_socket}"]
            )
            wait_for(trivial_socket.exists, 10, "the trivial milter's socket")
            os.chmod(trivial_socket, 0o666)
            tp = trivial_proc
            paths.append(
                MailPath(
                    "trivial",
                    "trivial pymilter milter",
                    Postfix(workdir / "postfix-trivial", f"unix:{trivial_socket}", sink_port),
                    lambda: [tp.pid],
                )
            )
        for path in paths:
            if clamd is not None and path.name in ("filterd", "rspamd"):
                path.clamd_log = clamd.workdir / "clamd.log"
            postfixes.append(path.postfix)
            path.postfix.start()

        def state_ports() -> list[int]:
            ports = [redis_server.port] if redis_server else []
            return ports + ([rspamd.state_redis.port] if rspamd else [])

        times: list[float] = []
        plan = orders(len(paths), args.rounds)
        for n in range(args.rounds):
            if n == 0 or not args.warm_caches:
                if n > 0:  # fresh processes: their in-memory caches start empty
                    filterd.stop()
                    filterd.start(timeout=120)
                    if rspamd is not None:
                        rspamd.restart()
                for path in paths:
                    send_all(path.postfix.port, warm, min(args.sessions, len(warm)))
                for port in state_ports():
                    flush_redis(port)
            for index in plan[n]:
                log_offset = len(filterd.log())
                run_path(paths[index], mails, args.sessions)
                if paths[index].name == "filterd":  # its log lines of this round, not the warm-up's
                    times += pipeline_times_ms(filterd.log()[log_offset:])
    finally:
        for postfix in postfixes:
            postfix.stop()
        if trivial_proc is not None:
            trivial_proc.terminate()
            trivial_proc.wait()
        if rspamd is not None:
            rspamd.close()
        filterd.stop()
        sink.terminate()
        sink.wait()
        dns.stop()
        if redis_server is not None:
            redis_server.stop()
        if clamd is not None:
            clamd.stop()
        if args.keep:
            print(f"work directory kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)  # Postfix queues and logs: tens of MB a run

    per_path = args.messages * args.rounds
    first = paths[0]
    report: dict[str, Any] = {
        "command": " ".join(sys.argv),
        "case": "DKIM-signed for the From domain; SPF/DKIM/DMARC pass"
        if args.auth
        else "corpus as is, SPF pass",
        "profile": args.profile,
        "greylist": args.greylist if args.redis else "off",
        "clamd": args.clamd,
        "warm_caches": args.warm_caches,
        "messages": args.messages,
        "sessions": args.sessions,
        "rounds": args.rounds,
        "sending_domains": len(domains.domains),
        "orders": [[paths[i].name for i in order] for order in plan],
        "paths": {p.name: path_report(p, first, per_path) for p in paths},
        "pipeline_ms_p50": round(percentile(times, 0.5), 3),
        "pipeline_ms_p99": round(percentile(times, 0.99), 3),
        "notes": notes,
    }
    by_name = {p.name: p for p in paths}
    if "rspamd" in by_name:
        ratios = [
            round(f / r, 3) for f, r in zip(by_name["filterd"].rates, by_name["rspamd"].rates, strict=True)
        ]
        report["filterd_over_rspamd"] = {
            "median": round(statistics.median(ratios), 3),
            "min": min(ratios),
            "max": max(ratios),
            "rounds": ratios,
        }
    if args.json:
        text = json.dumps(report, indent=2)
        if str(args.json) == "-":
            print(text)
            return 0
        args.json.write_text(text + "\n")
    print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Throughput of the whole mail path, with and without filterd, measured side by side in one run.

    .venv/bin/python bench/throughput.py [--messages 2000] [--sessions 20] [--rounds 4] [--auth] [--json]
        [--redis] [--clamd]

A fixed sample of real messages from the SpamAssassin public corpus (ham and spam, chosen by a hash
of the file name) is sent by --sessions concurrent SMTP sessions into a private Postfix that
relays to smtp-sink.  Two Postfix instances run at once: one with no milter (the baseline) and one
wired to filterd on its default configuration over a unix socket.  Each round sends the sample
through every path, every other round in reverse order; the ratio is the median over rounds of
each round's rate over that round's no-milter rate, since this machine is noisy and drifts: compare
the ratio, not the absolute figures.  Reported for filterd: messages/s and the ratio to no milter,
filterd's CPU time per message (all its processes), its peak RSS (sum over processes), and the time
per message inside filterd's pipeline (p50/p99, from its log lines).

filterd's DNS is a local authoritative server (the tests' `LocalDns`), never the host's resolver,
so runs do not depend on the network.  With --auth every message is rewritten to come From a test
domain and DKIM-signed twice (RSA 2048 and Ed25519), and the server publishes that domain's SPF
(passing for 127.0.0.1), DKIM keys and DMARC p=reject: SPF, two DKIM verifications and DMARC all
run and pass for every message.  bench/auth_speed.py gives the time of each check on its own.

With --redis a private redis-server is started and greylisting, reputation and rate limits are
turned on (every message a known greylist triplet, its verdict counted, its token taken); the
Redis round trips per message are then read from the server's own counter of read events
(INFO stats total_reads_processed), so they count every filterd worker process.

--clamd puts clamd in the path: a private clamd on the test signatures (tests/clamav/) and a
redis-server for the antivirus result cache, with ``[checks.antivirus]`` enabled.  Every corpus
message is different, so the cache only misses here (bench/clamav_cache.py measures its hits).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import smtplib
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.harness.clamd import ClamdServer, cache_key_file  # noqa: E402
from tests.harness.dns import LocalDns  # noqa: E402
from tests.harness.filterd import Filterd  # noqa: E402
from tests.harness.net import free_port, port_open, run_sessions, wait_for  # noqa: E402
from tests.harness.postfix import Postfix  # noqa: E402
from tests.harness.redis import RedisServer  # noqa: E402
from tests.harness.stack import private_dir  # noqa: E402

CORPUS = Path(os.environ.get("FILTERD_CORPUS", ROOT.parent / "shared" / "corpus"))
_TIME = re.compile(r" time=(\S+)")


def sample(count: int) -> list[bytes]:
    """`count` corpus messages, half ham and half spam, chosen by a hash of the path (stable)."""
    base = CORPUS / "spamassassin-public"
    manifest = base / "manifest.csv"
    if not manifest.exists():
        sys.exit(
            f"corpus not found at {base}: set FILTERD_CORPUS to the shared/corpus folder "
            "(the SpamAssassin public corpus, https://spamassassin.apache.org/old/publiccorpus/)"
        )
    rows = [line.split(",", 2)[:2] for line in manifest.read_text().splitlines()[1:]]
    by_label: dict[str, list[str]] = {"ham": [], "spam": []}
    for path, label in rows:
        by_label.setdefault(label, []).append(path)
    chosen: list[str] = []
    for label in ("ham", "spam"):
        paths = sorted(by_label[label], key=lambda p: hashlib.sha256(p.encode()).hexdigest())
        chosen += paths[: count // 2 if label == "ham" else count - count // 2]
    chosen.sort(key=lambda p: hashlib.sha256(p.encode()).hexdigest())
    return [(base / p).read_bytes() for p in chosen]


MAIL_FROM = "bench@example.org"  # --auth: an address at the signing domain, whose SPF passes


def send_all(port: int, messages: list[bytes], sessions: int) -> int:
    """Send every message over `sessions` concurrent SMTP sessions; return how many were refused.

    A refusal (a 5xx for spam, a 4xx) is a decision filterd took, not a failure of the run: the
    message counts as handled and is simply not awaited at the sink.
    """
    shares = [messages[i::sessions] for i in range(sessions)]
    refused = [0] * sessions

    def session(n: int) -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=120) as smtp:
            for data in shares[n]:
                try:
                    smtp.sendmail(MAIL_FROM, ["rcpt@example.net"], data)
                except (smtplib.SMTPDataError, smtplib.SMTPRecipientsRefused, smtplib.SMTPSenderRefused):
                    refused[n] += 1
                    smtp.rset()

    run_sessions(session, range(sessions))
    return sum(refused)


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


busy_fraction: dict[str, list[float]] = {}  # path -> the machine's busy share in each round


def run_round(postfix: Postfix, messages: list[bytes], sessions: int, path: str = "") -> float:
    """Messages/s from the first SMTP connection until the sink has accepted all of them."""
    before = delivered(postfix)
    busy0, total0 = machine_busy()
    started = time.perf_counter()
    refused = send_all(postfix.port, messages, sessions)
    expected = before + len(messages) - refused
    wait_for(lambda: delivered(postfix) >= expected, 600, "all accepted messages at the sink", 0.02)
    elapsed = time.perf_counter() - started
    busy1, total1 = machine_busy()
    if path:  # how close to saturated the two cores were: is the run bound by CPU or by latency?
        busy_fraction.setdefault(path, []).append(round((busy1 - busy0) / max(1, total1 - total0), 2))
    return len(messages) / elapsed


# The Redis-backed checks on their steady-state path: every message looks up and passes a known
# greylist triplet, reads and updates the reputation counters, and takes a rate-limit token.
REDIS_CHECKS = """
[redis]
url = "{url}"
key_prefix = "bench:"

[checks.greylist]
enabled = true
delay = 1
auto_allowlist = 0
skip_trusted_clients = false

[checks.reputation]
enabled = true
exempt_networks = []

[checks.ratelimit]
enabled = true
exempt_networks = []
ip_rate = 1000000.0
ip_burst = 10000000
"""


def redis_reads(port: int) -> int:
    """The server's count of read events: one per request or pipeline a client sends."""
    out = subprocess.run(
        ["redis-cli", "-p", str(port), "info", "stats"], capture_output=True, text=True, check=True
    ).stdout
    return int(re.search(r"total_reads_processed:(\d+)", out).group(1))  # type: ignore[union-attr]


def prime_greylist(port: int) -> None:
    """The bench's one triplet: a first attempt (451), then the delay, so later messages pass."""
    try:
        send_all(port, sample(2)[:1], 1)
    except RuntimeError:
        pass  # the expected 451
    time.sleep(1.2)


def process_tree(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [pid, *(int(p) for p in out)]


def cpu_seconds(pids: list[int]) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
        except (FileNotFoundError, IndexError):
            pass
    return total


def peak_rss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total / 1024


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


def signed_messages(dns: LocalDns, messages: list[bytes]) -> list[bytes]:
    """Each message From the test domain, signed with its RSA and Ed25519 keys (records published)."""
    global MAIL_FROM
    from bench.auth_speed import Domain

    domain = Domain(dns, "auth.bench.test", client="127.0.0.1")
    MAIL_FROM = f"bench@{domain.name}"
    out = []
    for n, raw in enumerate(messages):
        raw = raw.replace(b"\r\n", b"\n")
        sep = raw.find(b"\n\n")
        body = raw[sep + 2 :] if sep >= 0 else raw
        out.append(domain.message(body.replace(b"\n", b"\r\n"), n))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=4, help="an even number balances the order")
    parser.add_argument("--config", type=Path, help="filterd configuration to merge over the defaults (TOML)")
    parser.add_argument(
        "--clamd", action="store_true", help="with the antivirus check, a private clamd and redis"
    )
    parser.add_argument(
        "--trivial",
        action="store_true",
        help="also measure a trivial pymilter milter (bench/trivial_milter.py) as a reference",
    )
    parser.add_argument("--workers", type=int, default=0, help="filterd worker processes (0: its default)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--auth", action="store_true", help="DKIM-signed messages; SPF, DKIM and DMARC records served locally"
    )
    parser.add_argument(
        "--redis", action="store_true", help="turn on greylisting, reputation and rate limits (private Redis)"
    )
    args = parser.parse_args()
    if shutil.which("smtp-sink") is None and not Path("/usr/sbin/smtp-sink").exists():
        sys.exit("smtp-sink (Debian package postfix) is needed")

    messages = sample(args.messages)
    dns = LocalDns()
    dns.start()
    if args.auth:
        messages = signed_messages(dns, messages)
    workdir = private_dir("filterd-bench-")
    sink_port = free_port()
    sink = subprocess.Popen(
        [
            shutil.which("smtp-sink") or "/usr/sbin/smtp-sink",
            "-u",
            "nobody",
            f"127.0.0.1:{sink_port}",
            "1000",
        ],
        stdout=subprocess.DEVNULL,
    )
    wait_for(lambda: port_open(sink_port), 10, "smtp-sink")
    filterd = Filterd(workdir, workdir / "filterd.sock")
    extra = args.config.read_text() if args.config else ""
    redis_server = RedisServer(workdir / "redis") if args.redis or args.clamd else None
    clamd = ClamdServer(workdir / "clamd") if args.clamd else None
    if redis_server is not None:
        redis_server.start()
        if args.redis:
            extra += REDIS_CHECKS.format(url=redis_server.url)
        else:
            extra += f'\n[redis]\nurl = "{redis_server.url}"\n'
    if clamd is not None:
        clamd.start()
        extra += f'\n[checks.antivirus]\nenabled = true\nsockets = ["{clamd.unix_address}"]\n'
        extra += f'cache_key_file = "{cache_key_file()}"\n'  # the cache is off without a signing key
    filterd.configure({"dns": {"nameservers": ["127.0.0.1"], "port": dns.port}})
    if extra:
        filterd.config_path.write_text(filterd.config_path.read_text() + "\n" + extra)
    workers = f"workers = {args.workers}"  # 0: filterd's default, one per core
    filterd.config_path.write_text(filterd.config_path.read_text().replace("workers = 2", workers))
    baseline = Postfix(workdir / "postfix-plain", "", sink_port, with_milter=False)
    filtered = Postfix(workdir / "postfix-filterd", f"unix:{filterd.socket_path}", sink_port)
    results: dict[str, list[float]] = {"no_milter": [], "filterd": [], "trivial": []}
    trivial_socket = workdir / "trivial.sock"
    trivial = (
        Postfix(workdir / "postfix-trivial", f"unix:{trivial_socket}", sink_port) if args.trivial else None
    )
    trivial_proc: subprocess.Popen[bytes] | None = None
    try:
        filterd.start()
        baseline.start()
        filtered.start()
        if trivial is not None:
            trivial_proc = subprocess.Popen(
                [sys.executable, str(ROOT / "bench" / "trivial_milter.py"), f"unix:{trivial_socket}"]
            )
            wait_for(trivial_socket.exists, 10, "the trivial milter's socket")
            os.chmod(trivial_socket, 0o666)
            trivial.start()
            run_round(trivial, messages[:100], args.sessions)
        if redis_server is not None:
            prime_greylist(filtered.port)
        warm = messages[: min(100, len(messages))]
        run_round(baseline, warm, args.sessions)
        run_round(filtered, warm, args.sessions)
        assert filterd.proc is not None
        pids = process_tree(filterd.proc.pid)
        log_offset = len(filterd.log())
        reads_before = redis_reads(redis_server.port) if redis_server else 0
        paths: list[tuple[str, Postfix, list[int]]] = [
            ("no_milter", baseline, []),
            ("filterd", filtered, pids),
        ]
        if trivial is not None:
            assert trivial_proc is not None
            paths.append(("trivial", trivial, [trivial_proc.pid]))
        # each milter's CPU while its own path runs, by round: does it drift?
        cpu: dict[str, list[float]] = {"filterd": [], "trivial": []}
        for n in range(args.rounds):
            # This machine drifts by tens of percent within a minute, and the first path after a
            # pause runs fastest: every other round goes in reverse order, so that a drift hits
            # each path alike, and each round is compared with its own baseline.
            for name, postfix, milter_pids in paths if n % 2 == 0 else paths[::-1]:
                cpu_start = cpu_seconds(milter_pids)
                results[name].append(run_round(postfix, messages, args.sessions, name))
                if milter_pids:
                    cpu[name].append(cpu_seconds(milter_pids) - cpu_start)
        # minus the one INFO call of our own that the second reading includes
        reads = redis_reads(redis_server.port) - reads_before - 1 if redis_server else 0
        rss = peak_rss_mib(pids)
        times = pipeline_times_ms(filterd.log()[log_offset:])
    finally:
        if trivial is not None:
            trivial.stop()
        if trivial_proc is not None:
            trivial_proc.terminate()
            trivial_proc.wait()
        filtered.stop()
        baseline.stop()
        filterd.stop()
        sink.terminate()
        sink.wait()
        dns.stop()
        if redis_server is not None:
            redis_server.stop()
        if clamd is not None:
            clamd.stop()
        shutil.rmtree(workdir, ignore_errors=True)  # two Postfix queues and logs: tens of MB a run
    plain = statistics.median(results["no_milter"])
    with_filterd = statistics.median(results["filterd"])

    def round_ratios(name: str) -> list[float]:
        """Each round's rate over the same round's no-milter rate."""
        return [round(r / b, 3) for r, b in zip(results[name], results["no_milter"], strict=True)]

    filterd_ratios = round_ratios("filterd")
    report: dict[str, Any] = {
        "case": "dkim-signed, SPF/DKIM/DMARC pass" if args.auth else "corpus as is",
        "messages": args.messages,
        "sessions": args.sessions,
        "clamd": args.clamd,
        "rounds": args.rounds,
        "no_milter_msgs_per_s": round(plain, 1),
        "filterd_msgs_per_s": round(with_filterd, 1),
        # the median of the rounds' own ratios: steadier than a ratio of medians when the machine drifts
        "ratio": round(statistics.median(filterd_ratios), 3),
        "rounds_ratio": filterd_ratios,
        "filterd_cpu_ms_per_msg": round(1000 * sum(cpu["filterd"]) / (args.messages * args.rounds), 3),
        "filterd_peak_rss_mib": round(rss, 1),
        "pipeline_ms_p50": round(percentile(times, 0.5), 3),
        "pipeline_ms_p99": round(percentile(times, 0.99), 3),
        "rounds_no_milter": [round(r, 1) for r in results["no_milter"]],
        "rounds_filterd": [round(r, 1) for r in results["filterd"]],
        "rounds_filterd_cpu_ms_per_msg": [round(1000 * c / args.messages, 3) for c in cpu["filterd"]],
        "machine_busy_by_round": busy_fraction,
    }
    if args.trivial:
        trivial_rate = statistics.median(results["trivial"])
        report["trivial_msgs_per_s"] = round(trivial_rate, 1)
        trivial_ratios = round_ratios("trivial")
        report["trivial_ratio"] = round(statistics.median(trivial_ratios), 3)
        report["rounds_trivial_ratio"] = trivial_ratios
        report["trivial_cpu_ms_per_msg"] = round(
            1000 * sum(cpu["trivial"]) / (args.messages * args.rounds), 3
        )
    if args.redis:
        report["redis_round_trips_per_msg"] = round(reads / (args.messages * args.rounds), 2)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(
            f"{args.messages} corpus messages ({report['case']}), {args.sessions} sessions, median of "
            f"{args.rounds} rounds (ratio: the median of each round's ratio to its own no-milter rate)"
        )
        print(f"{'path':<30}{'msgs/s':>10}{'ratio':>8}")
        print(f"{'Postfix, no milter':<30}{plain:>10.1f}{1.0:>8.2f}")
        label = "Postfix + filterd" + (" + clamd" if args.clamd else "")
        print(f"{label:<30}{with_filterd:>10.1f}{report['ratio']:>8.2f}")
        if args.trivial:
            print(
                f"{'Postfix + trivial pymilter':<30}{report['trivial_msgs_per_s']:>10.1f}"
                f"{report['trivial_ratio']:>8.2f}"
            )
        print(
            f"filterd CPU per message: {report['filterd_cpu_ms_per_msg']} ms (all processes; "
            f"by round {report['rounds_filterd_cpu_ms_per_msg']})"
        )
        if args.trivial:
            print(f"trivial pymilter CPU per message: {report['trivial_cpu_ms_per_msg']} ms")
        print(f"filterd peak RSS: {report['filterd_peak_rss_mib']} MiB (sum over processes)")
        print(
            f"time inside filterd's pipeline per message: p50 {report['pipeline_ms_p50']} ms, "
            f"p99 {report['pipeline_ms_p99']} ms"
        )
        print(f"rounds (msgs/s): no milter {report['rounds_no_milter']}, filterd {report['rounds_filterd']}")
        trivial_rounds = f", trivial {report['rounds_trivial_ratio']}" if args.trivial else ""
        print(f"rounds (ratio to no milter): filterd {filterd_ratios}{trivial_rounds}")
        print(f"machine busy (share of both cores, by round): {busy_fraction}")
        if args.redis:
            print(
                f"Redis round trips per message: {report['redis_round_trips_per_msg']} "
                "(greylisting, reputation, rate limits on)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

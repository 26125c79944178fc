"""Per-message time of each sender-authentication check, against the local DNS server.

    .venv/bin/python bench/auth_speed.py [--messages 300] [--json]

A local authoritative DNS server (the tests' `LocalDns`) publishes SPF, DKIM (RSA 2048 and
Ed25519) and DMARC records for a test domain.  Messages are made from real corpus bodies when
the corpus is there (else generated text), From that domain, each signed twice (RSA and Ed25519).
Each check's `run()` is timed on its own, inside a real pipeline built from the configuration:

- warm: one resolver for every message, so after the first message its TTL cache answers
  (a busy server that keeps seeing the same sending domains);
- cold: every message from its own domain, so every lookup goes to the DNS server.

Baseline, measured in the same run: the whole offline pipeline (`filterd.driver.scan`) with the
authentication checks turned off, against the same pipeline with them on; the ratio is what
sender authentication costs on the mail path (without Postfix and the milter protocol).
"""

from __future__ import annotations

import argparse
import email.utils
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from filterd.auth.keys import generate, parse_private_key, split_txt, txt_value  # noqa: E402
from filterd.auth.results import DKIM, DMARC  # noqa: E402
from filterd.config import parse_config  # noqa: E402
from filterd.driver import SmtpContext, scan  # noqa: E402
from filterd.pipeline import Pipeline  # noqa: E402
from filterd.services import Services  # noqa: E402
from filterd.transaction import Session, Transaction  # noqa: E402
from tests.harness.dns import LocalDns  # noqa: E402

CORPUS = Path(os.environ.get("FILTERD_CORPUS", ROOT.parent / "shared" / "corpus"))
AUTH_CHECKS = ("spf", "dkim", "arc", "dmarc", "auth_results")
# auth_results is a finisher (the driver calls its finish(), not run()): timed only inside scans.
TIMED = AUTH_CHECKS[:-1]
CLIENT = "192.0.2.10"


def bodies(count: int) -> list[bytes]:
    """Message bodies: from corpus ham when there is one, else generated."""
    base = CORPUS / "spamassassin-public"
    manifest = base / "manifest.csv"
    found: list[bytes] = []
    if manifest.exists():
        rows = [line.split(",", 2)[:2] for line in manifest.read_text().splitlines()[1:]]
        for path, label in sorted(rows):
            if label != "ham":
                continue
            raw = (base / path).read_bytes().replace(b"\r\n", b"\n")
            sep = raw.find(b"\n\n")
            if sep > 0:
                found.append(raw[sep + 2 :].replace(b"\n", b"\r\n")[:20000])
            if len(found) >= count:
                break
    while len(found) < count:
        found.append((f"Line {len(found)} of a generated body.\r\n" * 40).encode())
    return found


class Domain:
    """A sending domain: SPF for CLIENT, an RSA and an Ed25519 key, DMARC p=reject."""

    def __init__(self, dns: LocalDns, name: str, client: str = CLIENT) -> None:
        self.name = name
        self.keys: list[tuple[str, bytes, bytes]] = []
        dns.add(f'{name}. 300 IN TXT "v=spf1 ip4:{client} -all"')
        dns.add(f'_dmarc.{name}. 300 IN TXT "v=DMARC1; p=reject"')
        for selector, key_type in (("rsa", "rsa"), ("ed", "ed25519")):
            pem, public = generate(key_type, 2048)  # type: ignore[arg-type]
            _, _, private, _ = parse_private_key(pem, selector)
            strings = " ".join(f'"{s}"' for s in split_txt(txt_value(key_type, public)))  # type: ignore[arg-type]
            dns.add(f"{selector}._domainkey.{name}. 300 IN TXT {strings}")
            algorithm = b"rsa-sha256" if key_type == "rsa" else b"ed25519-sha256"
            self.keys.append((selector, private, algorithm))

    def message(self, body: bytes, n: int) -> bytes:
        import dkim

        head = (
            f"From: Sender <news@{self.name}>\r\nTo: rcpt@example.net\r\nSubject: bench {n}\r\n"
            f"Date: {email.utils.formatdate()}\r\nMessage-ID: <{n}.{time.time()}@{self.name}>\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
        ).encode()
        raw = head + body
        signatures = b""
        for selector, private, algorithm in self.keys:
            signatures += dkim.DKIM(raw).sign(
                selector.encode(),
                self.name.encode(),
                private,
                signature_algorithm=algorithm,
                canonicalize=(b"relaxed", b"relaxed"),
            )
        return signatures + raw


def config(dns: LocalDns, auth: bool) -> Any:
    checks: dict[str, Any] = {name: {"enabled": auth} for name in AUTH_CHECKS}
    return parse_config(
        {
            "dns": {"nameservers": ["127.0.0.1"], "port": dns.port, "timeout": 1.0},
            "network": {"hostname": "mx.bench.test"},
            "checks": checks,
        }
    )


def time_checks(pipeline: Pipeline, messages: list[tuple[str, bytes]]) -> dict[str, list[float]]:
    """Seconds per message of each authentication check's run(), in pipeline order."""
    by_name = {c.name: c for c in pipeline.checks}
    times: dict[str, list[float]] = {name: [] for name in TIMED}
    for sender, raw in messages:
        tx = Transaction.start(Session(client_addr=CLIENT, helo="mta.example.org"))
        tx.mail_from, tx.raw_message, tx.size = sender, raw, len(raw)
        tx.direction = pipeline.direction_of(tx)
        for name in TIMED:
            check = by_name[name]
            started = time.perf_counter()
            outputs = list(check.run(tx))
            times[name].append(time.perf_counter() - started)
            assert not any(type(o).__name__ in ("Reject", "TempFail") for o in outputs), (name, outputs)
        dmarc, dkim = tx.facts.get(DMARC), tx.facts.get(DKIM) or ()
        assert dmarc is not None and dmarc.result == "pass", dmarc
        assert [d.result for d in dkim] == ["pass", "pass"], dkim
    return times


def time_scans(pipeline: Pipeline, messages: list[tuple[str, bytes]]) -> list[float]:
    out = []
    for sender, raw in messages:
        context = SmtpContext(
            client_addr=CLIENT, helo="mta.example.org", mail_from=sender, rcpts=("r@example.net",)
        )
        started = time.perf_counter()
        scan(pipeline, raw, context)
        out.append(time.perf_counter() - started)
    return out


def ms(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "mean": round(1000 * statistics.fmean(values), 3),
        "p50": round(1000 * ordered[len(ordered) // 2], 3),
        "p99": round(1000 * ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    dns = LocalDns()
    dns.start()
    try:
        body_list = bodies(args.messages)
        warm_domain = Domain(dns, "warm.bench.test")
        warm = [(f"bounce@{warm_domain.name}", warm_domain.message(b, i)) for i, b in enumerate(body_list)]
        cold_count = min(args.messages, 100)  # key generation per domain is the slow part of setting up
        cold_domains = [Domain(dns, f"cold{i}.bench.test") for i in range(cold_count)]
        cold = [(f"bounce@{d.name}", d.message(body_list[i], i)) for i, d in enumerate(cold_domains)]

        with_auth = Pipeline.from_config(config(dns, True), Services(config(dns, True)))
        time_checks(with_auth, warm[:10])  # warm up imports, the resolver cache and the PSL
        warm_times = time_checks(with_auth, warm)
        with_auth.close()
        with_auth = Pipeline.from_config(config(dns, True), Services(config(dns, True)))  # empty cache
        time_checks(with_auth, warm[:1])
        cold_times = time_checks(with_auth, cold)
        with_auth.close()

        without = Pipeline.from_config(config(dns, False), Services(config(dns, False)))
        with_auth = Pipeline.from_config(config(dns, True), Services(config(dns, True)))
        time_scans(without, warm[:10])
        time_scans(with_auth, warm[:10])
        base_scan, auth_scan = [], []
        for _ in range(3):  # alternate, so drift in machine load hits both alike
            base_scan += time_scans(without, warm)
            auth_scan += time_scans(with_auth, warm)
        without.close()
        with_auth.close()
    finally:
        dns.stop()

    report: dict[str, Any] = {
        "messages": args.messages,
        "cold_messages": cold_count,
        "warm_ms": {name: ms(v) for name, v in warm_times.items()},
        "cold_ms": {name: ms(v) for name, v in cold_times.items()},
        "scan_without_auth_ms": ms(base_scan),
        "scan_with_auth_ms": ms(auth_scan),
    }
    report["scan_ratio"] = round(
        report["scan_with_auth_ms"]["mean"] / report["scan_without_auth_ms"]["mean"], 2
    )
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{args.messages} messages (warm cache), {cold_count} from distinct domains (cold cache)")
    print("each message: SPF pass, two DKIM signatures (RSA 2048 + Ed25519, relaxed), DMARC pass")
    print(f"{'check':<14}{'warm mean':>11}{'warm p99':>10}{'cold mean':>11}{'cold p99':>10}   (ms/message)")
    for name in TIMED:
        w, c = report["warm_ms"][name], report["cold_ms"][name]
        print(f"{name:<14}{w['mean']:>11.3f}{w['p99']:>10.3f}{c['mean']:>11.3f}{c['p99']:>10.3f}")
    total_w = sum(report["warm_ms"][n]["mean"] for n in TIMED)
    total_c = sum(report["cold_ms"][n]["mean"] for n in TIMED)
    print(f"{'all four':<14}{total_w:>11.3f}{'':>10}{total_c:>11.3f}")
    b, a = report["scan_without_auth_ms"], report["scan_with_auth_ms"]
    print(f"offline pipeline, auth checks off: {b['mean']:.3f} ms/message (p99 {b['p99']:.3f})")
    print(f"offline pipeline, auth checks on:  {a['mean']:.3f} ms/message (p99 {a['p99']:.3f})")
    print(f"ratio on/off: {report['scan_ratio']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

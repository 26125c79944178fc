"""DKIM verification: dkimpy (through the wrapper filterd used) against filterd's own verifier.

    nice -n 10 .venv/bin/python bench/dkim_verify.py [--messages 500] [--rounds 3] [--json]

Corpus messages (their own headers and MIME; ham and spam from $FILTERD_CORPUS, else generated),
each signed twice by dkimpy: RSA 2048 (rsa-sha256) and Ed25519, relaxed/relaxed, keys published on
a local DNS server.  Both verifiers use one resolver with its TTL cache warm (a server that keeps
seeing the same signers), so what is measured is the verification, not the network.  In each
round both verify every message, alternating message by message, so machine load hits both
alike; CPU time (process time) per message is reported with the ratio.  Every message must give
["pass", "pass"] in both, or the bench stops.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import dkim  # noqa: E402

from filterd.auth import dkim_verify  # noqa: E402
from filterd.auth.keys import generate, parse_private_key, split_txt, txt_value  # noqa: E402
from filterd.config import parse_config  # noqa: E402
from filterd.dns import Resolver  # noqa: E402
from filterd.services import Services  # noqa: E402
from tests import dkimpy_reference  # noqa: E402
from tests.harness.dns import LocalDns  # noqa: E402

CORPUS = Path(os.environ.get("FILTERD_CORPUS", ROOT.parent / "shared" / "corpus"))
DOMAIN = "bench.dkim.test"


def corpus(count: int) -> list[bytes]:
    base = CORPUS / "spamassassin-public"
    manifest = base / "manifest.csv"
    found: list[bytes] = []
    if manifest.exists():
        rows = sorted(line.split(",", 2)[:2] for line in manifest.read_text().splitlines()[1:])
        for path, _ in random.Random(1).sample(rows, min(count, len(rows))):
            found.append((base / path).read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
    while len(found) < count:
        found.append(b"From: a@example.org\r\nSubject: generated\r\n\r\n" + b"Generated line.\r\n" * 200)
    return found


def signed_twice(dns: LocalDns, messages: list[bytes]) -> list[bytes]:
    keys = []
    for selector, key_type in (("rsa", "rsa"), ("ed", "ed25519")):
        pem, public = generate(key_type, 2048)  # type: ignore[arg-type]
        _, _, private, _ = parse_private_key(pem, selector)
        strings = " ".join(f'"{s}"' for s in split_txt(txt_value(key_type, public)))  # type: ignore[arg-type]
        dns.add(f"{selector}._domainkey.{DOMAIN}. 3600 IN TXT {strings}")
        keys.append((selector.encode(), private, b"rsa-sha256" if key_type == "rsa" else b"ed25519-sha256"))
    out = []
    for raw in messages:
        signatures = b""
        try:
            for selector, private, algorithm in keys:
                signatures += dkim.DKIM(raw).sign(
                    selector,
                    DOMAIN.encode(),
                    private,
                    signature_algorithm=algorithm,
                    canonicalize=(b"relaxed", b"relaxed"),
                )
        except dkim.DKIMException:
            continue  # a header block dkimpy cannot read: not a verification benchmark case
        out.append(signatures + raw)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    dns = LocalDns()
    dns.start()
    try:
        config = parse_config({"dns": {"nameservers": ["127.0.0.1"], "port": dns.port, "timeout": 1.0}})
        resolver: Resolver = Services(config).resolver
        messages = signed_twice(dns, corpus(args.messages))
        verifiers = {"dkimpy": dkimpy_reference.verify_all, "filterd": dkim_verify.verify_all}
        for verify in verifiers.values():  # warm up: imports, the resolver's cache, the key memo
            for raw in messages[:5]:
                verify(raw, resolver)
        cpu: dict[str, list[float]] = {name: [] for name in verifiers}
        for _ in range(args.rounds):
            for raw in messages:
                for name, verify in verifiers.items():
                    started = time.process_time()
                    results = verify(raw, resolver)
                    cpu[name].append(time.process_time() - started)
                    assert [r.result for r in results] == ["pass", "pass"], (name, results)
    finally:
        dns.stop()
    sizes = sorted(len(m) for m in messages)
    report: dict[str, Any] = {
        "messages": len(messages),
        "rounds": args.rounds,
        "message_bytes_median": sizes[len(sizes) // 2],
        "cpu_ms_per_message": {n: round(1000 * statistics.fmean(v), 4) for n, v in cpu.items()},
        "cpu_ms_p99": {n: round(1000 * sorted(v)[int(len(v) * 0.99)], 4) for n, v in cpu.items()},
    }
    report["ratio_dkimpy_to_filterd"] = round(
        report["cpu_ms_per_message"]["dkimpy"] / report["cpu_ms_per_message"]["filterd"], 2
    )
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(
        f"{report['messages']} corpus messages (median {report['message_bytes_median']} bytes), each signed "
        f"RSA 2048 + Ed25519 (relaxed/relaxed); {args.rounds} rounds, alternating"
    )
    print(f"{'verifier':<10}{'CPU ms/msg':>12}{'p99':>10}")
    for name in verifiers:
        print(f"{name:<10}{report['cpu_ms_per_message'][name]:>12.3f}{report['cpu_ms_p99'][name]:>10.3f}")
    print(f"dkimpy / filterd: {report['ratio_dkimpy_to_filterd']}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

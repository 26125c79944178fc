"""bench/throughput.py measures what it says: its helpers, and short runs on the real stack.

The end-to-end runs are small (a few dozen messages, two rounds) but go through everything: private
Postfix instances, filterd's full profile with clamd and Redis, DKIM-signed corpus mail, and (where
rspamd is installed) the rspamd peer.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import dkim
import pytest

from bench import peer_rspamd
from bench.corpus_mail import SenderDomains, crlf, from_address
from bench.pss import cpu_seconds, process_tree, pss_mib
from bench.throughput import orders

ROOT = Path(__file__).resolve().parent.parent


def test_orders_put_every_path_first_alike() -> None:
    assert [o[0] for o in orders(3, 3)] == [0, 1, 2]
    assert {tuple(o) for o in orders(3, 6)} == set(itertools.permutations(range(3)))
    assert orders(2, 4) == [[0, 1], [1, 0], [0, 1], [1, 0]]


def test_corpus_message_loses_only_its_mbox_line() -> None:
    raw = b"From bob@example.org  Mon Sep  2 12:00:00 2002\nFrom: Bob <Bob@Example.ORG>\nSubject: s\n\nbody\n"
    assert crlf(raw) == b"From: Bob <Bob@Example.ORG>\r\nSubject: s\r\n\r\nbody\r\n"
    assert from_address(crlf(raw)) == "bob@example.org"
    assert from_address(b"From: undisclosed\r\n\r\nbody") is None
    assert from_address(b"Subject: no from\r\n\r\nFrom: body@example.org\r\n") is None


def test_signatures_go_on_top_of_the_original_headers_and_verify() -> None:
    domains = SenderDomains()
    domains.domains.add("example.org")
    original = crlf(
        b"From: Bob <bob@example.org>\nTo: x@example.net\nSubject: hi\nMIME-Version: 1.0\n"
        b'Content-Type: multipart/alternative; boundary="b"\n\n--b\nContent-Type: text/plain\n\nhello\n--b--\n'
    )
    signed = domains.sign(original, "example.org")
    assert signed is not None and signed.endswith(original)  # every original byte kept, in order
    assert signed.count(b"DKIM-Signature:") == 2
    txt: dict[bytes, bytes] = {}
    for line in domains.zone().splitlines():
        name, _, _, rtype, value = line.split(" ", 4)
        if rtype == "TXT":
            txt[name.encode()] = "".join(value.split('"')[1::2]).encode()
    assert b'"v=spf1 ip4:127.0.0.1 -all"' in domains.zone().encode()

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        return txt.get(name if name.endswith(b".") else name + b".", b"")

    d = dkim.DKIM(signed)
    assert d.verify(idx=0, dnsfunc=dnsfunc) and d.verify(idx=1, dnsfunc=dnsfunc)


def test_pss_counts_pages_a_forked_child_shares_once() -> None:
    block = bytearray(os.urandom(64 * 1024 * 1024))  # 64 MiB, touched, then shared by fork
    child = os.fork()
    if child == 0:  # pragma: no cover - the child only waits to be measured
        time.sleep(30)
        os._exit(0)
    try:
        time.sleep(0.2)
        pids = process_tree(os.getpid())
        assert child in pids
        rss_kib = 0
        for pid in (os.getpid(), child):
            status = Path(f"/proc/{pid}/status").read_text()
            rss_kib += int(next(x for x in status.splitlines() if x.startswith("VmRSS:")).split()[1])
        pss = pss_mib([os.getpid(), child])
        # RSS counts the shared 64 MiB twice; PSS once
        assert rss_kib / 1024 - pss > 50
        assert pss > 60
        assert cpu_seconds([os.getpid()]) > 0
    finally:
        os.kill(child, 9)
        os.waitpid(child, 0)
        del block


def _run_bench(tmp_path: Path, *extra: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    out = tmp_path / "report.json"
    argv = [sys.executable, str(ROOT / "bench" / "throughput.py"), "--messages", "30", "--rounds", "2"]
    argv += ["--sessions", "5", "--profile", "full", "--auth", "--json", str(out), *extra]
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=900, cwd=ROOT, env={**os.environ, **(env or {})}
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report: dict[str, Any] = json.loads(out.read_text())
    return report


def _assert_path_honest(path: dict[str, Any], messages: int, rounds: int) -> None:
    counts = path["counts"]
    assert counts["sent"] == messages * rounds
    # every message is accounted for: delivered, tempfailed or rejected, and nothing accepted is lost
    assert counts["accepted"] + counts["tempfail_4xx"] + counts["reject_5xx"] == counts["sent"]
    assert counts["delivered"] == counts["accepted"]
    # the scan cache and clamd's own cache were emptied: clamd scanned (nearly) every message in
    # every round, not only in the first (a message refused before end of data is not scanned)
    assert len(path["clamd_scans_by_round"]) == rounds
    assert all(n >= messages * 0.8 for n in path["clamd_scans_by_round"]), path["clamd_scans_by_round"]
    assert path["pss_mib"]["filter"] > 20
    assert path["cpu_ms_per_msg"]["filter"] > 0


def test_full_profile_run_counts_every_reply_and_scans_every_round(tmp_path: Path, corpus: Path) -> None:
    # and without rspamd the bench says so and runs the other paths
    report = _run_bench(tmp_path, "--peer", "rspamd", env={"FILTERD_BENCH_RSPAMD": "/nonexistent/rspamd"})
    assert any("rspamd path did not run" in note for note in report["notes"])
    assert set(report["paths"]) == {"no_milter", "filterd"}
    _assert_path_honest(report["paths"]["filterd"], 30, 2)
    assert report["sending_domains"] > 5  # the senders vary
    assert report["greylist"] == "content" and not report["warm_caches"]
    assert report["paths"]["no_milter"]["counts"]["delivered"] == 60


@pytest.mark.skipif(peer_rspamd.unavailable() is not None, reason="rspamd is not installed")
def test_rspamd_peer_runs_in_the_same_rounds(tmp_path: Path, corpus: Path) -> None:
    report = _run_bench(tmp_path, "--peer", "rspamd")
    assert set(report["paths"]) == {"no_milter", "filterd", "rspamd"}
    _assert_path_honest(report["paths"]["rspamd"], 30, 2)
    assert report["paths"]["rspamd"]["cpu_ms_per_msg"]["redis"] > 0
    assert len(report["filterd_over_rspamd"]["rounds"]) == 2
    assert [o[0] for o in report["orders"]] == ["no_milter", "filterd"]  # rotated per round

"""One DNS budget per message, shared by SPF, DKIM, DMARC and ARC: lookups counted at the local
DNS server, time measured, and DMARC's share kept whatever the other checks spent."""

from __future__ import annotations

import base64
import os
import time
from typing import Any

import pytest

from filterd.auth.results import ARC, DKIM, DMARC, SPF
from filterd.checks.arc import MAX_ARC_SETS
from filterd.dns import RESERVED_LOOKUPS, DnsBudget, DnsBudgetSpent
from filterd.replies import Reject
from tests.harness.auth import message, pipeline, publish_txt, run, symbols, unique
from tests.harness.dns import LocalDns

BAD_IP = "198.51.100.30"


def dns_config(local_dns: LocalDns, **budget: Any) -> dict[str, Any]:
    return {"nameservers": ["127.0.0.1"], "port": local_dns.port, "timeout": 0.4, "attempts": 1, **budget}


def scan(
    local_dns: LocalDns, raw: bytes, mail_from: str, checks: dict[str, Any] | None = None, **budget: Any
):
    p = pipeline(local_dns, checks or {"spf": {"on_fail": "score"}}, dns=dns_config(local_dns, **budget))
    try:
        started = time.monotonic()
        tx, verdict = run(p, raw, client_addr=BAD_IP, helo="mx.example.org", mail_from=mail_from)
        return tx, verdict, time.monotonic() - started
    finally:
        p.close()


def arc_sets(n: int, under: str) -> bytes:
    """`n` well-formed ARC sets that do not verify, each signed by its own domain under `under`
    (distinct names, so no cached answer hides a lookup)."""
    b = base64.b64encode(os.urandom(256)).decode()
    out = []
    for i in range(n, 0, -1):
        d = f"s{i}.{under}"
        cv = "none" if i == 1 else "pass"
        out.append(f"ARC-Seal: i={i}; a=rsa-sha256; cv={cv}; d={d}; s=as; b={b}\r\n")
        out.append(
            f"ARC-Message-Signature: i={i}; a=rsa-sha256; c=relaxed/relaxed; d={d}; s=ams;"
            f" h=from:to; bh={b[:44]}; b={b}\r\n"
        )
        out.append(f"ARC-Authentication-Results: i={i}; mx{i}.example; spf=pass\r\n")
    return "".join(out).encode()


def test_unit_budget_counts_lookups_and_seconds_and_keeps_dmarcs_share() -> None:
    b = DnsBudget(max_lookups=2, max_seconds=1.0)
    b.spend("a")
    b.spend("b")
    with pytest.raises(DnsBudgetSpent):
        b.spend("c")
    for _ in range(RESERVED_LOOKUPS):
        b.spend("_dmarc", reserved=True)
    with pytest.raises(DnsBudgetSpent):
        b.spend("_dmarc", reserved=True)
    t = DnsBudget(max_lookups=100, max_seconds=1.0)
    t.charge(1.0)
    with pytest.raises(DnsBudgetSpent):
        t.spend("a")
    assert t.spend("_dmarc", reserved=True) > 0


def test_200_arc_sets_cost_no_lookup(local_dns: LocalDns) -> None:
    """Before: dkimpy looked up two keys per set, 400 lookups for 200 sets."""
    under = unique("arcflood")
    raw = arc_sets(200, under) + message("a@example.com")
    tx, _verdict, elapsed = scan(local_dns, raw, "a@example.com")
    assert local_dns.queries_under(under) == 0
    assert tx.facts.get(ARC).result == "fail" and f"more than {MAX_ARC_SETS}" in tx.facts.get(ARC).reason
    assert elapsed < 2


def test_arc_sets_at_the_cap_stay_within_the_budget(local_dns: LocalDns) -> None:
    under = unique("arccap")
    raw = arc_sets(MAX_ARC_SETS, under) + message("a@example.com")
    tx, _verdict, elapsed = scan(local_dns, raw, "a@example.com", max_lookups_per_message=30)
    assert local_dns.queries_under(under) <= 30  # 100 without the budget
    assert tx.facts.get(ARC).result == "temperror"
    assert elapsed < 10


def test_arc_sets_at_silent_names_stop_at_the_seconds_budget(local_dns: LocalDns) -> None:
    under = unique("arcslow")
    local_dns.make_silent(under)
    raw = arc_sets(20, under) + message("a@example.com")
    tx, _verdict, elapsed = scan(local_dns, raw, "a@example.com", max_seconds_per_message=1.0)
    assert tx.facts.get(ARC).result == "temperror"
    # 40 lookups of 0.4 s each would be 16 s; the budget stops them after about 1 s
    assert elapsed < 4 and local_dns.queries_under(under) <= 4


def test_spf_include_chain_stays_within_the_budget(local_dns: LocalDns) -> None:
    base = unique("chain")
    for i in range(30):
        local_dns.add(f'l{i}.{base}. 60 IN TXT "v=spf1 include:l{i + 1}.{base} -all"')
    local_dns.add(f'l30.{base}. 60 IN TXT "v=spf1 ip4:{BAD_IP} -all"')
    tx, verdict, _ = scan(local_dns, message("a@example.com"), f"a@l0.{base}", max_lookups_per_message=5)
    assert local_dns.queries_under(base) == 5
    assert tx.facts.get(SPF).result == "temperror" and "DNS budget" in symbols(verdict)["SPF_TEMPERROR"]
    before = local_dns.queries_under(base)
    tx, verdict, _ = scan(local_dns, message("a@example.com"), f"a@l0.{base}")
    assert tx.facts.get(SPF).result == "permerror"  # RFC 7208's 10-lookup limit, inside the budget
    assert local_dns.queries_under(base) - before <= 12


def test_dmarc_keeps_its_share_when_arc_and_dkim_spent_the_budget(local_dns: LocalDns) -> None:
    """A forger cannot spend the budget on names it controls and leave DMARC a temperror."""
    victim = unique("victim")
    publish_txt(local_dns, f"_dmarc.{victim}", "v=DMARC1; p=reject")
    slow = unique("slowkeys")
    local_dns.make_silent(slow)
    sigs = "".join(
        f"DKIM-Signature: v=1; a=rsa-sha256; d=k{i}.{slow}; s=s; h=from; bh=AAAA; b=AAAA\r\n"
        for i in range(10)
    )
    raw = arc_sets(MAX_ARC_SETS, unique("arcspend")) + message(f"ceo@{victim}", extra=sigs)
    tx, verdict, elapsed = scan(
        local_dns, raw, "a@example.com", max_lookups_per_message=20, max_seconds_per_message=1.0
    )
    assert {d.result for d in tx.facts.get(DKIM)} == {"temperror"}
    assert tx.facts.get(DMARC).result == "fail"
    assert isinstance(verdict.decision, Reject)
    assert elapsed < 6

"""The URIBL check against the local authoritative DNS server: link domains reduced to their
registered domain, listings with codes, our own domains and address literals never asked, the
per-message bound, and a silent list."""

from __future__ import annotations

import time
from typing import Any

from filterd.checks.uribl import link_domains
from tests.harness.auth import pipeline, run, unique
from tests.harness.dns import LocalDns


def spam_with_links(*urls: str) -> bytes:
    body = "\r\n".join(f"Visit {u} today" for u in urls)
    return (
        "From: a@example.org\r\nTo: b@example.net\r\nSubject: offer\r\nMessage-ID: <1@example.org>\r\n"
        f"Date: Thu, 03 Dec 2026 10:00:00 +0000\r\n\r\n{body}\r\n"
    ).encode()


def scan_links(local_dns: LocalDns, raw: bytes, zones: list[str], **dns: Any) -> dict[str, str]:
    resolver = {"nameservers": ["127.0.0.1"], "port": local_dns.port, "timeout": 0.4, "attempts": 1, **dns}
    checks = {"uribl": {"enabled": True, "zones": zones, "max_domains": 3}}
    p = pipeline(
        local_dns, checks, dns=resolver, network={"hostname": "mx.test", "local_domains": ["ours.test"]}
    )
    try:
        _, verdict = run(p, raw, client_addr="192.0.2.1", mail_from="a@example.org")
        return {s.name: s.reason for s in verdict.symbols if s.name.startswith("URIBL")}
    finally:
        p.close()


def test_a_link_to_a_listed_domain_scores_naming_the_domain_zone_and_code(local_dns: LocalDns) -> None:
    zone = f"{unique('ubl')}.test"
    local_dns.add(f"spam-shop.example.{zone}. 60 IN A 127.0.0.2")
    raw = spam_with_links("http://click.track.spam-shop.example/buy?id=1", "https://good.example.org/")
    found = scan_links(local_dns, raw, [zone])
    assert found["URIBL_LISTED"] == f"links to spam-shop.example (127.0.0.2) listed in {zone}"
    assert "URIBL_LISTED" not in scan_links(local_dns, spam_with_links("https://good.example.org/"), [zone])


def test_masks_choose_which_answers_count(local_dns: LocalDns) -> None:
    zone = f"{unique('ubl')}.test"
    local_dns.add(f"masked.example.{zone}. 60 IN A 127.0.0.8")
    raw = spam_with_links("http://masked.example/")
    assert "URIBL_LISTED" in scan_links(local_dns, raw, [f"{zone}&8"])
    assert "URIBL_LISTED" not in scan_links(local_dns, raw, [f"{zone}&4"])


def test_our_domains_address_literals_and_links_past_the_bound_are_not_asked(local_dns: LocalDns) -> None:
    zone = f"{unique('ubl')}.test"
    raw = spam_with_links(
        "https://www.ours.test/",
        "http://198.51.100.7/login",
        "http://a1.example/",
        "http://a2.example/",
        "http://a3.example/",
        "http://a4.example/",
    )
    scan_links(local_dns, raw, [zone])
    asked = {q.removesuffix("." + zone) for q in local_dns.queries if q.endswith("." + zone)}
    assert asked == {"a1.example", "a2.example", "a3.example"}  # max_domains = 3, in link order


def test_a_silent_list_costs_a_temperror_within_the_budget(local_dns: LocalDns) -> None:
    zone = f"{unique('ubl')}.test"
    local_dns.make_silent(zone)
    started = time.monotonic()
    found = scan_links(local_dns, spam_with_links("http://x.example/"), [zone], max_seconds_per_message=0.6)
    assert "URIBL_TEMPERROR" in found and "URIBL_LISTED" not in found
    assert time.monotonic() - started < 3.0


def test_link_domains_are_registered_domains_in_order_without_duplicates() -> None:
    urls = [
        "http://a.b.example.co.uk/x",
        "https://example.co.uk/",
        "http://[2001:db8::1]/",
        "www.shop.example/",
    ]
    assert link_domains(urls, ["ours.test"], 10) == ["example.co.uk", "shop.example"]

"""The DNSBL check against the local authoritative DNS server: listings, return codes and masks,
addresses never asked about, a silent list, and the message's DNS budget."""

from __future__ import annotations

import ipaddress
import time

import pytest

from filterd.blocklists import parse_zone
from filterd.checks.dnsbl import query_name
from filterd.config import parse_config
from filterd.settings import ConfigError
from tests.harness.auth import message, pipeline, run, unique
from tests.harness.dns import LocalDns


def scan_from(local_dns: LocalDns, client: str, zones: list[str], **dns: object) -> dict[str, str]:
    resolver = {"nameservers": ["127.0.0.1"], "port": local_dns.port, "timeout": 0.4, "attempts": 1, **dns}
    p = pipeline(local_dns, {"dnsbl": {"enabled": True, "zones": zones}}, dns=resolver)
    try:
        _, verdict = run(p, message(), client_addr=client, mail_from="a@example.org")
        found = {s.name: s.reason for s in verdict.symbols if s.name.startswith("DNSBL")}
        found["score"] = str(next((s.score for s in verdict.symbols if s.name == "DNSBL_LISTED"), 0.0))
        return found
    finally:
        p.close()


def test_a_listed_client_scores_and_the_reason_names_the_zone_and_code(local_dns: LocalDns) -> None:
    zone = f"{unique('bl')}.test"
    local_dns.add(f"99.2.0.192.{zone}. 60 IN A 127.0.0.2")
    found = scan_from(local_dns, "192.0.2.99", [zone])
    assert found["DNSBL_LISTED"] == f"192.0.2.99 listed in {zone} (127.0.0.2)"
    assert float(found["score"]) == 3.0
    assert "DNSBL_LISTED" not in scan_from(local_dns, "192.0.2.98", [zone])  # NXDOMAIN: not listed


def test_return_codes_and_masks_choose_which_answers_count(local_dns: LocalDns) -> None:
    zone = f"{unique('bl')}.test"
    local_dns.add(f"7.2.0.192.{zone}. 60 IN A 127.0.0.4")
    assert "DNSBL_LISTED" in scan_from(local_dns, "192.0.2.7", [f"{zone}=127.0.0.2,127.0.0.4"])
    assert "DNSBL_LISTED" not in scan_from(local_dns, "192.0.2.7", [f"{zone}=127.0.0.2"])
    assert "DNSBL_LISTED" in scan_from(local_dns, "192.0.2.7", [f"{zone}&4"])
    assert "DNSBL_LISTED" not in scan_from(local_dns, "192.0.2.7", [f"{zone}&2"])


def test_refusal_answers_and_answers_outside_127_are_no_listing(local_dns: LocalDns) -> None:
    zone = f"{unique('bl')}.test"
    local_dns.add(f"5.2.0.192.{zone}. 60 IN A 127.255.255.254")  # "you may not query us"
    local_dns.add(f"6.2.0.192.{zone}. 60 IN A 198.51.100.1")  # a wildcarding resolver's answer
    assert "DNSBL_LISTED" not in scan_from(local_dns, "192.0.2.5", [zone])
    assert "DNSBL_LISTED" not in scan_from(local_dns, "192.0.2.6", [zone])


def test_private_and_loopback_clients_are_never_looked_up(local_dns: LocalDns) -> None:
    zone = f"{unique('bl')}.test"
    for client in ("10.1.2.3", "192.168.1.1", "127.0.0.1"):
        scan_from(local_dns, client, [zone])
    assert local_dns.queries_under(zone) == 0


def test_a_silent_list_costs_a_temperror_within_the_budget_not_the_message(local_dns: LocalDns) -> None:
    zone = f"{unique('bl')}.test"
    local_dns.make_silent(zone)
    started = time.monotonic()
    found = scan_from(local_dns, "192.0.2.99", [zone], max_seconds_per_message=0.6)
    assert "DNSBL_TEMPERROR" in found and "DNSBL_LISTED" not in found
    assert time.monotonic() - started < 3.0


def test_ipv6_query_names_reverse_nibbles() -> None:
    name = query_name(ipaddress.ip_address("2001:db8::1"), "bl.example")
    assert name == "1.0.0.0." + "0." * 20 + "8.b.d.0.1.0.0.2.bl.example"  # 32 nibbles, last first
    assert query_name(ipaddress.ip_address("192.0.2.99"), "zen.example") == "99.2.0.192.zen.example"


@pytest.mark.parametrize(
    ("entry", "error"),
    [
        ("zen", "not a DNS zone"),
        ("zen.example=10.0.0.1", "127.0.0.0/8"),
        ("zen.example&x", "not a number"),
        ("zen.example&300", "1-255"),
    ],
)
def test_bad_zone_entries_are_refused_naming_the_mistake(entry: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse_zone(entry)
    with pytest.raises(ConfigError, match=r"checks\.dnsbl\.zones"):
        parse_config({"checks": {"dnsbl": {"zones": [entry]}}})

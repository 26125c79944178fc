"""SMTP-behaviour heuristics against the local authoritative DNS server (PTR, A, MX records)."""

from __future__ import annotations

import ipaddress
import uuid
from typing import Any

import pytest

from filterd.checks.client_dns import dynamic_reason
from filterd.checks.header_heuristics import lookalike
from filterd.config import parse_config, registered_checks
from filterd.driver import SmtpContext, scan
from filterd.pipeline import Pipeline

HEURISTICS = ("helo", "client_dns", "sender_dns", "header_heuristics")
BODY = b"Date: Wed, 25 Nov 2026 10:00:00 +0000\r\nMessage-ID: <1@a.test>\r\nSubject: hi\r\n\r\nhello\r\n"


def pipeline(local_dns: Any, **network: Any) -> Pipeline:
    checks = {c.name: {"enabled": c.name in HEURISTICS} for c in registered_checks()}
    config = parse_config(
        {
            "dns": {"nameservers": ["127.0.0.1"], "port": local_dns.port, "timeout": 0.3, "attempts": 1},
            "network": {"hostname": "mx.ours.test", "local_domains": ["ours.test"], **network},
            "checks": checks,
        }
    )
    return Pipeline.from_config(config)


def run(p: Pipeline, raw: bytes = BODY, **context: Any) -> dict[str, str]:
    context.setdefault("mail_from", "")
    context.setdefault("rcpts", ("bob@ours.test",))
    _, verdict = scan(p, raw, SmtpContext(**context))
    return {s.name: s.reason for s in verdict.symbols}


@pytest.fixture
def zone(local_dns: Any) -> str:
    """A domain of this test's own under .test, so tests sharing the DNS server never meet."""
    return f"z{uuid.uuid4().hex[:8]}.test"


def ptr(ip: str, name: str) -> str:
    return f"{ipaddress.ip_address(ip).reverse_pointer}. 300 IN PTR {name}."


def test_forward_confirmed_reverse_dns_is_clean(local_dns: Any, zone: str) -> None:
    local_dns.add(ptr("192.0.2.21", f"mail.{zone}") + f"\nmail.{zone}. 300 IN A 192.0.2.21")
    found = run(pipeline(local_dns), client_addr="192.0.2.21", helo=f"mail.{zone}")
    assert not found


def test_no_reverse_dns(local_dns: Any) -> None:
    found = run(pipeline(local_dns), client_addr="192.0.2.22", helo="mail.example.test")
    assert found["RDNS_NONE"] == "client 192.0.2.22 has no reverse DNS (PTR)"


def test_reverse_dns_not_confirmed(local_dns: Any, zone: str) -> None:
    local_dns.add(ptr("192.0.2.23", f"mail.{zone}") + f"\nmail.{zone}. 300 IN A 198.51.100.1")
    found = run(pipeline(local_dns), client_addr="192.0.2.23", helo=f"mail.{zone}")
    assert "RDNS_NOT_CONFIRMED" in found and "does not lead back to 192.0.2.23" in found["RDNS_NOT_CONFIRMED"]


def test_dynamic_looking_reverse_dns(local_dns: Any, zone: str) -> None:
    name = f"203-0-113-45.dsl.{zone}"
    local_dns.add(ptr("203.0.113.45", name) + f"\n{name}. 300 IN A 203.0.113.45")
    found = run(pipeline(local_dns), client_addr="203.0.113.45", helo=name)
    assert found["RDNS_DYNAMIC"] == f"203.0.113.45 -> {name} looks dynamic: address octets in the name"
    assert "RDNS_NOT_CONFIRMED" not in found


def test_dns_timeout_is_a_temperror_symbol(local_dns: Any, zone: str) -> None:
    local_dns.make_silent("24.2.0.192.in-addr.arpa")
    local_dns.make_silent(f"dead.{zone}")
    found = run(pipeline(local_dns), client_addr="192.0.2.24", helo=f"mx.{zone}", mail_from=f"a@dead.{zone}")
    assert found["RDNS_TEMPERROR"].startswith("PTR of 192.0.2.24: DNS lookup")
    assert found["SENDER_DNS_TEMPERROR"].startswith(f"sender domain dead.{zone}: DNS lookup")


def test_sender_domain_records(local_dns: Any, zone: str) -> None:
    local_dns.add(
        f"mx.{zone}. 300 IN MX 10 in.{zone}.\n"
        f"a.{zone}. 300 IN A 192.0.2.1\n"
        f"nullmx.{zone}. 300 IN MX 0 .\n"
        f'txtonly.{zone}. 300 IN TXT "v=spf1 -all"'
    )
    p = pipeline(local_dns)
    assert "SENDER_DOMAIN_NO_MX_A" not in run(p, mail_from=f"x@mx.{zone}")
    assert "SENDER_DOMAIN_NO_MX_A" not in run(p, mail_from=f"x@a.{zone}")  # implicit MX (RFC 5321)
    assert "SENDER_NULL_MX" in run(p, mail_from=f"x@nullmx.{zone}")
    assert run(p, mail_from=f"x@txtonly.{zone}")["SENDER_DOMAIN_NO_MX_A"] == (
        f"sender domain txtonly.{zone} has no MX, A or AAAA record"
    )
    assert "SENDER_DOMAIN_NO_MX_A" in run(p, mail_from=f"x@nxdomain.{zone}")
    assert not run(p, mail_from="")  # the null sender is not looked up


@pytest.mark.parametrize(
    ("helo", "symbol"),
    [
        ("localhost", "HELO_NOT_FQDN"),
        ("my_pc", "HELO_NOT_FQDN"),
        ("192.0.2.30", "HELO_BARE_IP"),
        ("[198.51.100.9]", "HELO_LITERAL_MISMATCH"),
        ("mx.ours.test", "HELO_IS_OURS"),
        ("ours.test", "HELO_IS_OURS"),
        ("relay.ours.test", "HELO_IS_OURS"),
        ("[192.0.2.30]", None),
        ("mail.example.test", None),
    ],
)
def test_helo(local_dns: Any, helo: str, symbol: str | None) -> None:
    found = run(pipeline(local_dns), client_addr="192.0.2.30", helo=helo)
    helo_symbols = {k for k in found if k.startswith("HELO_")}
    assert helo_symbols == ({symbol} if symbol else set()), found


def test_internal_clients_are_not_looked_at(local_dns: Any) -> None:
    p = pipeline(local_dns, internal_networks=["192.0.2.0/24"])
    assert not run(p, client_addr="192.0.2.31", helo="localhost")


def test_many_recipients_and_from_imitation(local_dns: Any) -> None:
    p = pipeline(local_dns)
    rcpts = tuple(f"u{i}@ours.test" for i in range(25))
    assert run(p, rcpts=rcpts)["MANY_RCPTS"] == "25 recipients in one message"

    def with_from(value: str) -> bytes:
        return f"From: {value}\r\n".encode() + BODY

    found = run(p, raw=with_from("IT desk <it@ours.test>"))
    assert found["FROM_LOCAL_DOMAIN_UNAUTH"].startswith("From <it@ours.test> is our domain ours.test")
    assert "FROM_LOOKALIKE_LOCAL" in run(p, raw=with_from("<it@0urs.test>"))
    assert "FROM_DISPLAY_LOCAL_DOMAIN" in run(p, raw=with_from('"it@ours.test" <x@elsewhere.example>'))
    assert not {k for k in run(p, raw=with_from("<friend@elsewhere.example>")) if k.startswith("FROM_")}
    # outbound mail from our own users is not judged
    assert "FROM_LOCAL_DOMAIN_UNAUTH" not in run(p, raw=with_from("<it@ours.test>"), auth_user="it")


def test_date_message_id_and_received_anomalies(local_dns: Any) -> None:
    p = pipeline(local_dns)
    raw = (
        b"Received: from a (a [192.0.2.1]) by b; Wed, 25 Nov 2026 10:00:05 +0000\r\n"
        b"Received: from c by a with SMTP\r\n"
        b"Received: from d by c; Mon, 16 Nov 2026 09:00:00 +0000\r\n"
        b"Date: Wed, 25 Nov 2026 10:00:00 +0000\r\n"
        b"Date: Wed, 25 Nov 2026 10:00:00 +2500\r\n"
        b"Message-ID: <123@localhost>\r\nMessage-ID: <124@localhost>\r\n\r\nbody\r\n"
    )
    found = run(p, raw=raw)
    assert set(found) >= {
        "DUPLICATE_DATE",
        "DUPLICATE_MESSAGE_ID",
        "DATE_BAD_TIMEZONE",
        "MESSAGE_ID_NOT_FQDN",
        "RECEIVED_MALFORMED",
        "DATE_RECEIVED_MISMATCH",
    }, found
    assert found["DATE_RECEIVED_MISMATCH"].startswith("Date is 2")  # ~2xx hours after the first hop
    assert "RECEIVED_MALFORMED" not in run(p, raw=BODY)


def test_dynamic_reason_unit() -> None:
    ip = ipaddress.IPv4Address("198.51.100.7")
    assert dynamic_reason("7.100.51.198.cable.isp.example", ip) == "address octets in the name"
    assert dynamic_reason("c6336407.isp.example", ip) == "address in hex in the name"
    assert dynamic_reason("host.dyn.isp.example", ip) == "'dyn' in the name"
    assert dynamic_reason("mail.isp.example", ip) is None
    assert dynamic_reason("pool.example", ip) is None  # the registered domain itself is not judged


def test_lookalike_unit() -> None:
    assert lookalike("rnybank.test", "mybank.test")
    assert lookalike("mybamk.test", "mybank.test")
    assert lookalike("mybnak.test", "mybank.test")
    assert not lookalike("mail.mybank.test", "mybank.test")
    assert not lookalike("otherbank.test", "mybank.test")


def test_from_our_domain_authenticated_by_dkim_is_not_flagged(local_dns: Any) -> None:

    from filterd.auth.results import DKIM, DkimResult
    from filterd.check import Check, CheckSettings, Stage
    from filterd.pipeline import context_for

    class DkimPass(Check):  # stands in for the DKIM check: a pass for ours.test
        name = "dkim_stub"
        stage = Stage.EOM
        symbols: dict[str, float] = {}
        provides = (DKIM,)

        def run(self, tx: Any) -> list[Any]:
            tx.facts.set(DKIM, (DkimResult("pass", "ours.test", "s", "", "rsa-sha256"),))
            return []

    base = pipeline(local_dns)
    stub = DkimPass(context_for(base.config, "dkim_stub", base.services, CheckSettings()))
    p = Pipeline(base.config, [stub, *base.checks], base.services)
    raw = b"From: IT desk <it@ours.test>\r\n" + BODY
    assert "FROM_LOCAL_DOMAIN_UNAUTH" in run(base, raw=raw)
    assert "FROM_LOCAL_DOMAIN_UNAUTH" not in run(p, raw=raw)

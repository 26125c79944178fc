"""ARC verification, the Authentication-Results header, and removal of forged ones."""

from __future__ import annotations

import dkim
import pytest

from filterd.auth.results import (
    ARC,
    DKIM,
    DMARC,
    SPF,
    ArcResult,
    DkimResult,
    DmarcResult,
    SpfResult,
    authserv_id_of,
    configured_authserv_id,
    our_ids,
    pvalue,
    receivers_of,
    render,
)
from filterd.check import AddHeader
from filterd.config import parse_config
from filterd.report import drop_forged, is_forgeable
from filterd.results import Facts
from filterd.settings import ConfigError
from tests.harness.auth import PublishedKey, headers_of, message, pipeline, run, symbols, unique
from tests.harness.dns import LocalDns


def arc_seal(key: PublishedKey, raw: bytes, srv_id: str, results: str) -> bytes:
    """What a forwarder does: add its Authentication-Results, then an ARC set over the message."""
    raw = f"Authentication-Results: {srv_id}; {results}\r\n".encode() + raw
    assert key.key_type == "rsa"
    headers = dkim.arc_sign(raw, key.selector.encode(), key.domain.encode(), key.private, srv_id.encode())
    assert headers, "dkimpy made no ARC set"
    return b"".join(headers) + raw


def arc_of(local_dns: LocalDns, raw: bytes) -> tuple[ArcResult, dict[str, str], list[str]]:
    p = pipeline(local_dns)
    try:
        tx, verdict = run(p, raw, client_addr="192.0.2.1", mail_from="a@example.org")
    finally:
        p.close()
    return tx.facts.get(ARC), symbols(verdict), headers_of(verdict, "Authentication-Results")


def test_arc_none_pass_fail_and_two_hops(local_dns: LocalDns) -> None:
    first = PublishedKey(local_dns, unique("forwarder"), "arc")
    second = PublishedKey(local_dns, unique("list"), "arc")
    raw = message(f"a@{unique('origin')}")
    result, found, _ = arc_of(local_dns, raw)
    assert result.result == "none" and "ARC_NONE" in found
    sealed = arc_seal(first, raw, "mx.forwarder.test", "spf=pass smtp.mailfrom=example.org")
    result, found, [ar] = arc_of(local_dns, sealed)
    assert (result.result, result.instances) == ("pass", 1) and "ARC_PASS" in found
    assert "arc=pass (i=1)" in ar
    twice = arc_seal(second, sealed, "mx.list.test", "arc=pass")
    result, _, _ = arc_of(local_dns, twice)
    assert (result.result, result.instances) == ("pass", 2)
    tampered = sealed.replace(b"Hello there.", b"Hello there!")
    result, found, [ar] = arc_of(local_dns, tampered)
    assert result.result == "fail" and "ARC_FAIL" in found and "arc=fail" in ar


def test_arc_key_timeout_is_temperror(local_dns: LocalDns) -> None:
    key = PublishedKey(local_dns, unique("arcsilent"), "arc")
    sealed = arc_seal(key, message(), "mx.x.test", "spf=none")
    local_dns.make_silent(f"arc._domainkey.{key.domain}")
    result, found, _ = arc_of(local_dns, sealed)
    assert result.result == "temperror" and "ARC_TEMPERROR" in found


def test_render_and_parse_authentication_results() -> None:
    facts = Facts()
    facts.set(SPF, SpfResult("softfail", "mailfrom", "example.org", "a@example.org", "not (quite) allowed"))
    facts.set(DKIM, (DkimResult("pass", "example.org", "sel", "ab/cd+ef==gh", "rsa-sha256"),))
    facts.set(DMARC, DmarcResult("fail", "example.org", "reject", "quarantine"))
    facts.set(ARC, ArcResult("none"))
    value = render("mx.example.net", facts)
    assert value == (
        "mx.example.net;\n"
        "\tspf=softfail (not \\(quite\\) allowed) smtp.mailfrom=a@example.org;\n"
        '\tdkim=pass header.d=example.org header.s=sel header.b="ab/cd+ef";\n'
        "\tdmarc=fail (p=reject dis=quarantine) header.from=example.org;\n"
        "\tarc=none"
    )
    assert render("mx", {}) is None
    assert authserv_id_of(value) == "mx.example.net"
    assert authserv_id_of(" (comment; here) mx.example.net 1; spf=pass") == "mx.example.net"
    assert authserv_id_of('"quoted.example"; none') == "quoted.example"
    assert authserv_id_of("") == ""
    assert pvalue("with space") == '"with space"'


def test_is_forgeable_for_our_authserv_id_only() -> None:
    ours = ("mx.filterd.test",)
    assert is_forgeable("Authentication-Results", " mx.filterd.test; spf=pass", ours)
    assert is_forgeable("authentication-results", "\n\tMX.Filterd.Test (forged);\n\tdkim=pass", ours)
    assert not is_forgeable("Authentication-Results", " mx.upstream.test; spf=pass", ours)
    assert not is_forgeable("Authentication-Results", " mx.filterd.test; spf=pass")  # no id given
    assert not is_forgeable("ARC-Authentication-Results", " i=1; mx.filterd.test; spf=pass", ours)
    assert is_forgeable("X-Spam-Status", "Yes")  # the existing rule is unchanged


def test_is_forgeable_ignores_case_and_a_trailing_dot() -> None:
    """Before: "mx.filterd.test." was not recognised as ours, and the forged header was kept."""
    assert is_forgeable("Authentication-Results", " mx.filterd.test.; dkim=pass", ("mx.filterd.test",))
    assert is_forgeable("Authentication-Results", ' "MX.FILTERD.TEST."; dkim=pass', ("mx.filterd.test.",))
    assert not is_forgeable(
        "Authentication-Results", " mx.filterd.test.evil; dkim=pass", ("mx.filterd.test",)
    )


def test_received_spf_naming_us_or_above_ours_is_forged() -> None:
    ours = ("mx.filterd.test",)
    forged = " Pass (mx.filterd.test: domain of bank.example designates 1.2.3.4) receiver=MX.filterd.test.;"
    assert receivers_of(forged) == ("mx.filterd.test", "mx.filterd.test")
    assert is_forgeable("Received-SPF", forged, ours)
    assert is_forgeable("received-spf", " Pass (mx.filterd.test: forged, no receiver key)", ours)
    upstream = " Pass (mx.upstream.test: domain of a.example) client-ip=1.2.3.4; receiver=mx.upstream.test;"
    assert not is_forgeable("Received-SPF", upstream, ours)  # we add no Received-SPF of our own
    spf_added = [AddHeader("Received-SPF", "Pass (mx.filterd.test: ...) receiver=mx.filterd.test;")]
    assert is_forgeable("Received-SPF", upstream, ours, spf_added)  # ours is below it: it goes
    assert not is_forgeable("Received", " from x by y", ours, spf_added)


def test_our_ids_default_to_the_name_postfix_announces() -> None:
    """Before: with no hostname configured the authserv-id was the FQDN (often "localhost")."""
    assert our_ids(parse_config({}), "MX.Example.NET.") == ("mx.example.net",)
    assert configured_authserv_id(parse_config({}), "mx.example.net") == "mx.example.net"
    assert (
        configured_authserv_id(parse_config({"network": {"hostname": "h.example"}}), "j.example")
        == "h.example"
    )
    both = parse_config(
        {"network": {"hostname": "mx.example"}, "checks": {"auth_results": {"authserv_id": "ex"}}}
    )
    assert our_ids(both, "j.example") == ("ex", "mx.example")


def test_drop_forged_judges_a_stored_message_by_the_headers_we_added() -> None:
    head = (
        b"Received-SPF: Pass (mx.filterd.test: domain of a.example) receiver=mx.filterd.test;\r\n"
        b"Authentication-Results: mx.filterd.test;\r\n\tdmarc=fail header.from=bank.example\r\n"
        b"X-Spam-Status: Yes, score=9\r\n"
    )
    raw = (
        b"Authentication-Results: MX.filterd.test.;\r\n\tdmarc=pass header.from=bank.example\r\n"
        b"Authentication-Results: upstream.example; spf=pass\r\n"
        b"Received-SPF: Pass (client.example: forged) receiver=client.example;\r\n"
        b"X-Spam-Status: No\r\nSubject: hi\r\n\r\nAuthentication-Results: mx.filterd.test; body\r\n"
    )
    assert drop_forged(raw, head) == (
        b"Authentication-Results: upstream.example; spf=pass\r\n"
        b"Subject: hi\r\n\r\nAuthentication-Results: mx.filterd.test; body\r\n"
    )


def test_authserv_id_setting_and_fallbacks() -> None:
    assert configured_authserv_id(
        parse_config({"checks": {"auth_results": {"authserv_id": "auth.example"}}})
    ) == ("auth.example")
    assert configured_authserv_id(parse_config({"network": {"hostname": "mx.example"}})) == "mx.example"
    assert configured_authserv_id(parse_config({}))  # the host's FQDN
    with pytest.raises(ConfigError, match=r"checks\.auth_results\.authserv_id"):
        parse_config({"checks": {"auth_results": {"authserv_id": "bad id;"}}})


def test_header_uses_configured_id_and_can_be_turned_off(local_dns: LocalDns) -> None:
    p = pipeline(local_dns, {"auth_results": {"authserv_id": "auth.example.net"}})
    try:
        _, verdict = run(p, message(), client_addr="192.0.2.1", mail_from="a@example.org")
    finally:
        p.close()
    [ar] = headers_of(verdict, "Authentication-Results")
    assert ar.startswith("auth.example.net;\n\t")
    p = pipeline(local_dns, {"auth_results": {"enabled": False}})
    try:
        _, verdict = run(p, message(), client_addr="192.0.2.1", mail_from="a@example.org")
    finally:
        p.close()
    assert headers_of(verdict, "Authentication-Results") == []

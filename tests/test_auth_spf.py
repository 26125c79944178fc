"""SPF against the local authoritative DNS server: every result, its action, and its header."""

from __future__ import annotations

import time

import pytest

from filterd.auth.results import SPF, SPF_HELO
from filterd.replies import Reject, TempFail
from filterd.results import Action
from filterd.settings import ConfigError
from tests.harness.auth import headers_of, message, pipeline, run, symbols, unique
from tests.harness.dns import LocalDns

GOOD_IP = "192.0.2.10"
BAD_IP = "198.51.100.7"


@pytest.fixture
def domain(local_dns: LocalDns) -> str:
    d = unique("spf")
    local_dns.add(f'{d}. 60 IN TXT "v=spf1 ip4:{GOOD_IP} -all"')
    return d


def mail(local_dns: LocalDns, sender: str, ip: str, helo: str = "mta.example.org", checks=None):
    p = pipeline(local_dns, checks)
    try:
        return run(p, message(sender), client_addr=ip, helo=helo, mail_from=sender)
    finally:
        p.close()


def test_pass_is_scored_and_explained(local_dns: LocalDns, domain: str) -> None:
    tx, verdict = mail(local_dns, f"alice@{domain}", GOOD_IP)
    assert "SPF_PASS" in symbols(verdict)
    assert tx.facts.get(SPF).result == "pass"
    assert tx.facts.get(SPF).domain == domain
    [received] = headers_of(verdict, "Received-SPF")
    assert received.startswith("Pass (mx.filterd.test: domain of")
    assert f"client-ip={GOOD_IP};" in received and "identity=mailfrom" in received


def test_fail_rejects_with_5_7_23_and_the_explanation(local_dns: LocalDns) -> None:
    d = unique("spfexp")
    local_dns.add(f'{d}. 60 IN TXT "v=spf1 ip4:{GOOD_IP} exp=why.{d} -all"')
    local_dns.add(f'why.{d}. 60 IN TXT "%{{i}} is not one of %{{d}}\'s mail servers"')
    tx, verdict = mail(local_dns, f"alice@{d}", BAD_IP)
    assert verdict.action is Action.REJECT
    assert isinstance(verdict.decision, Reject)
    reply = verdict.decision.reply
    assert (reply.code, reply.dsn) == (550, "5.7.23")
    assert f"{BAD_IP} is not one of {d}'s mail servers" in reply.text
    assert tx.facts.get(SPF).result == "fail"


def test_fail_can_be_only_scored(local_dns: LocalDns, domain: str) -> None:
    _, verdict = mail(local_dns, f"alice@{domain}", BAD_IP, checks={"spf": {"on_fail": "score"}})
    assert verdict.decision is None
    assert "SPF_FAIL" in symbols(verdict)


def test_softfail_neutral_none_are_scored(local_dns: LocalDns) -> None:
    soft, neutral, none = unique("soft"), unique("neutral"), unique("nospf")
    local_dns.add(f'{soft}. 60 IN TXT "v=spf1 ip4:{GOOD_IP} ~all"')
    local_dns.add(f'{neutral}. 60 IN TXT "v=spf1 ?all"')
    local_dns.add(f'{none}. 60 IN TXT "some other record"')
    for d, symbol in ((soft, "SPF_SOFTFAIL"), (neutral, "SPF_NEUTRAL"), (none, "SPF_NONE")):
        _, verdict = mail(local_dns, f"bob@{d}", BAD_IP)
        assert verdict.decision is None, d
        assert symbol in symbols(verdict), (d, symbols(verdict))


def test_permerror_is_scored_and_can_reject_with_5_7_24(local_dns: LocalDns) -> None:
    d = unique("perm")
    local_dns.add(f'{d}. 60 IN TXT "v=spf1 ip4:{GOOD_IP} frobnicate -all"')
    _, verdict = mail(local_dns, f"bob@{d}", BAD_IP)
    assert verdict.decision is None and "SPF_PERMERROR" in symbols(verdict)
    _, verdict = mail(local_dns, f"bob@{d}", BAD_IP, checks={"spf": {"on_permerror": "reject"}})
    assert isinstance(verdict.decision, Reject)
    assert (verdict.decision.reply.code, verdict.decision.reply.dsn) == (550, "5.7.24")


def test_temperror_when_dns_does_not_answer_is_scored_not_rejected(local_dns: LocalDns) -> None:
    d = unique("silent")
    local_dns.make_silent(d)
    started = time.monotonic()
    tx, verdict = mail(local_dns, f"bob@{d}", BAD_IP)
    assert time.monotonic() - started < 5  # time-bounded: [dns] timeout 0.4 s, one attempt
    assert verdict.decision is None
    assert "SPF_TEMPERROR" in symbols(verdict)
    assert tx.facts.get(SPF).result == "temperror"
    _, verdict = mail(local_dns, f"bob@{d}", BAD_IP, checks={"spf": {"on_temperror": "tempfail"}})
    assert isinstance(verdict.decision, TempFail)
    assert (verdict.decision.reply.code, verdict.decision.reply.dsn) == (451, "4.7.24")


def test_null_sender_checks_the_helo_identity_scored_on_its_own(local_dns: LocalDns) -> None:
    helo = "out." + unique("helo")
    local_dns.add(f'{helo}. 60 IN TXT "v=spf1 ip4:{GOOD_IP} -all"')
    tx, verdict = mail(local_dns, "", GOOD_IP, helo=helo)
    assert "SPF_HELO_PASS" in symbols(verdict) and "SPF_PASS" not in symbols(verdict)
    assert tx.facts.get(SPF_HELO).identity == "helo"
    assert "smtp.helo=" + helo in headers_of(verdict, "Authentication-Results")[0]
    tx, verdict = mail(local_dns, "", BAD_IP, helo=helo)
    assert "SPF_HELO_FAIL" in symbols(verdict)
    assert verdict.decision is None  # helo_on_fail defaults to "score"
    _, verdict = mail(local_dns, "", BAD_IP, helo=helo, checks={"spf": {"helo_on_fail": "reject"}})
    assert isinstance(verdict.decision, Reject)


def test_helo_always_checks_both_identities(local_dns: LocalDns, domain: str) -> None:
    helo = "out." + unique("helo")
    local_dns.add(f'{helo}. 60 IN TXT "v=spf1 -all"')
    _, verdict = mail(
        local_dns, f"a@{domain}", GOOD_IP, helo=helo, checks={"spf": {"helo_identity": "always"}}
    )
    found = symbols(verdict)
    assert "SPF_PASS" in found and "SPF_HELO_FAIL" in found
    assert len(headers_of(verdict, "Received-SPF")) == 2


def test_helo_that_is_not_a_host_name(local_dns: LocalDns) -> None:
    _, verdict = mail(local_dns, "", BAD_IP, helo="[198.51.100.7]")
    assert "SPF_HELO_NONE" in symbols(verdict)


def test_trusted_forwarder_and_outbound_are_not_checked(local_dns: LocalDns, domain: str) -> None:
    tx, verdict = mail(
        local_dns, f"a@{domain}", BAD_IP, checks={"spf": {"trusted_forwarders": ["198.51.100.0/24"]}}
    )
    assert verdict.decision is None
    assert "SPF_TRUSTED_FORWARDER" in symbols(verdict) and SPF not in tx.facts
    p = pipeline(local_dns)
    tx, verdict = run(p, message(f"a@{domain}"), client_addr=BAD_IP, mail_from=f"a@{domain}", auth_user="a")
    assert verdict.decision is None and SPF not in tx.facts


def test_bad_settings_are_refused(local_dns: LocalDns) -> None:
    with pytest.raises(ConfigError, match=r"checks\.spf\.on_fail"):
        pipeline(local_dns, {"spf": {"on_fail": "explode"}})
    with pytest.raises(ConfigError, match=r"checks\.spf\.trusted_forwarders"):
        pipeline(local_dns, {"spf": {"trusted_forwarders": ["not-a-net"]}})
    with pytest.raises(ConfigError, match=r"checks\.spf\.on_temperror"):
        pipeline(local_dns, {"spf": {"on_temperror": "reject"}})

"""DMARC against the local DNS server: alignment, p/sp/pct, dispositions, From edge cases."""

from __future__ import annotations

import pytest

from filterd.auth.dmarc import RecordError, aligned, disposition, org_domain, parse_record
from filterd.auth.results import DKIM, DMARC
from filterd.checks.dmarc import Dmarc
from filterd.replies import Quarantine, Reject
from filterd.results import Action
from tests.harness.auth import PublishedKey, headers_of, message, pipeline, publish_txt, run, symbols, unique
from tests.harness.dns import LocalDns

GOOD_IP = "192.0.2.20"
BAD_IP = "198.51.100.20"


@pytest.fixture
def domain(local_dns: LocalDns) -> str:
    d = unique("dmarc")
    local_dns.add(f'{d}. 60 IN TXT "v=spf1 ip4:{GOOD_IP} -all"')
    return d


def deliver(local_dns: LocalDns, raw: bytes, sender: str, ip: str = BAD_IP, checks=None, sample=None):
    """Inbound mail; SPF only scores here, so DMARC sees SPF fail instead of a 550 at MAIL FROM."""
    checks = {"spf": {"on_fail": "score"}, **(checks or {})}
    p = pipeline(local_dns, checks)
    if sample is not None:
        for c in p.checks:
            if isinstance(c, Dmarc):
                c.sample = sample
    try:
        return run(p, raw, client_addr=ip, helo="mx.example.org", mail_from=sender)
    finally:
        p.close()


def test_unit_org_domain_and_alignment() -> None:
    assert org_domain("a.b.example.co.uk") == "example.co.uk"
    assert org_domain("mail.example.com.") == "example.com"
    assert org_domain("x.example.test") == "example.test"  # unknown suffix: the "*" rule
    assert org_domain("foo.github.io") == "foo.github.io"  # private section of the list
    assert aligned("mail.example.com", "example.com", "r")
    assert not aligned("mail.example.com", "example.com", "s")
    assert not aligned("a.github.io", "b.github.io", "r")
    assert disposition("reject", 50, lambda: 0.49) == "reject"
    assert disposition("reject", 50, lambda: 0.5) == "quarantine"
    assert disposition("quarantine", 0, lambda: 0.0) == "none"


def test_unit_record_parsing() -> None:
    r = parse_record("v=DMARC1; p=reject; sp=none; pct=20; adkim=s; rua=mailto:d@example.com")
    assert (r.p, r.sp, r.pct, r.adkim, r.aspf, r.rua) == (
        "reject",
        "none",
        20,
        "s",
        "r",
        ("mailto:d@example.com",),
    )
    assert parse_record("v=DMARC1;p=quarantine").sp == "quarantine"
    with pytest.raises(RecordError, match="no p= tag"):
        parse_record("v=DMARC1; pct=100")
    assert parse_record("v=DMARC1; p=bogus; rua=mailto:a@example.com").p == "none"  # RFC 7489 6.6.3
    assert parse_record("v=DMARC1; p=reject; pct=150").problems


def test_spf_aligned_pass(local_dns: LocalDns, domain: str) -> None:
    publish_txt(local_dns, f"_dmarc.{domain}", "v=DMARC1; p=reject")
    tx, verdict = deliver(local_dns, message(f"a@{domain}"), f"bounce@{domain}", GOOD_IP)
    assert tx.facts.get(DMARC).result == "pass" and "SPF pass aligned" in symbols(verdict)["DMARC_PASS"]
    assert (
        f"dmarc=pass (p=reject dis=none) header.from={domain}"
        in headers_of(verdict, "Authentication-Results")[0]
    )


def test_reject_policy_rejects_with_5_7_26(local_dns: LocalDns, domain: str) -> None:
    publish_txt(local_dns, f"_dmarc.{domain}", "v=DMARC1; p=reject")
    tx, verdict = deliver(local_dns, message(f"a@{domain}"), f"bounce@{domain}")
    assert verdict.action is Action.REJECT
    assert isinstance(verdict.decision, Reject)
    assert (verdict.decision.reply.code, verdict.decision.reply.dsn) == (550, "5.7.26")
    assert domain in verdict.decision.reply.text
    assert tx.facts.get(DMARC).disposition == "reject"


def test_reject_can_quarantine_or_score(local_dns: LocalDns, domain: str) -> None:
    publish_txt(local_dns, f"_dmarc.{domain}", "v=DMARC1; p=reject")
    _, verdict = deliver(
        local_dns, message(f"a@{domain}"), f"b@{domain}", checks={"dmarc": {"on_reject": "quarantine"}}
    )
    assert isinstance(verdict.decision, Quarantine)
    assert "dmarc=fail (p=reject dis=reject)" in headers_of(verdict, "Authentication-Results")[0]
    _, verdict = deliver(
        local_dns, message(f"a@{domain}"), f"b@{domain}", checks={"dmarc": {"on_reject": "score"}}
    )
    assert verdict.decision is None and "DMARC_FAIL_REJECT" in symbols(verdict)


def test_quarantine_policy(local_dns: LocalDns, domain: str) -> None:
    publish_txt(local_dns, f"_dmarc.{domain}", "v=DMARC1; p=quarantine")
    _, verdict = deliver(local_dns, message(f"a@{domain}"), f"b@{domain}")
    assert verdict.action is Action.QUARANTINE and isinstance(verdict.decision, Quarantine)
    assert len(headers_of(verdict, "Authentication-Results")) == 1  # the header is still added
    _, verdict = deliver(
        local_dns, message(f"a@{domain}"), f"b@{domain}", checks={"dmarc": {"on_quarantine": "score"}}
    )
    assert verdict.decision is None and "DMARC_FAIL_QUARANTINE" in symbols(verdict)


def test_pct_sampling_softens_the_disposition(local_dns: LocalDns, domain: str) -> None:
    publish_txt(local_dns, f"_dmarc.{domain}", "v=DMARC1; p=reject; pct=10")
    _, verdict = deliver(local_dns, message(f"a@{domain}"), f"b@{domain}", sample=lambda: 0.05)
    assert isinstance(verdict.decision, Reject)
    tx, verdict = deliver(local_dns, message(f"a@{domain}"), f"b@{domain}", sample=lambda: 0.5)
    assert isinstance(verdict.decision, Quarantine)
    assert tx.facts.get(DMARC).disposition == "quarantine"


def test_dkim_alignment_relaxed_and_strict(local_dns: LocalDns, domain: str) -> None:
    key = PublishedKey(local_dns, f"mail.{domain}", "k")  # signs as a subdomain of the From domain
    publish_txt(local_dns, f"_dmarc.{domain}", "v=DMARC1; p=reject; adkim=r")
    raw = key.sign(message(f"a@{domain}"))
    _, verdict = deliver(local_dns, raw, f"b@{domain}")
    assert "DKIM pass aligned" in symbols(verdict)["DMARC_PASS"]
    strict = unique("strict")
    key = PublishedKey(local_dns, f"mail.{strict}", "k")
    publish_txt(local_dns, f"_dmarc.{strict}", "v=DMARC1; p=reject; adkim=s")
    _, verdict = deliver(local_dns, key.sign(message(f"a@{strict}")), f"b@{strict}")
    assert isinstance(verdict.decision, Reject)


def test_signature_by_another_domain_does_not_align(local_dns: LocalDns, domain: str) -> None:
    key = PublishedKey(local_dns, unique("thirdparty"), "k")
    publish_txt(local_dns, f"_dmarc.{domain}", "v=DMARC1; p=reject")
    _, verdict = deliver(local_dns, key.sign(message(f"a@{domain}")), f"b@{domain}")
    assert "DKIM_PASS" in symbols(verdict) and isinstance(verdict.decision, Reject)


def test_subdomain_uses_org_record_and_sp(local_dns: LocalDns, domain: str) -> None:
    publish_txt(local_dns, f"_dmarc.{domain}", "v=DMARC1; p=reject; sp=quarantine")
    tx, verdict = deliver(local_dns, message(f"a@news.{domain}"), f"b@news.{domain}")
    assert isinstance(verdict.decision, Quarantine)
    assert tx.facts.get(DMARC).policy == "quarantine"
    assert f"from _dmarc.{domain}" in symbols(verdict)["DMARC_FAIL_QUARANTINE"]


def test_no_record_temperror_and_broken_records(local_dns: LocalDns, domain: str) -> None:
    _, verdict = deliver(local_dns, message(f"a@{domain}"), f"b@{domain}")
    assert verdict.decision is None and "DMARC_NONE" in symbols(verdict)
    silent = unique("dmarcsilent")
    local_dns.make_silent(f"_dmarc.{silent}")
    tx, verdict = deliver(local_dns, message(f"a@{silent}"), f"b@{silent}")
    assert verdict.decision is None and tx.facts.get(DMARC).result == "temperror"
    broken = unique("dmarcbroken")
    publish_txt(local_dns, f"_dmarc.{broken}", "v=DMARC1; pct=100")
    tx, verdict = deliver(local_dns, message(f"a@{broken}"), f"b@{broken}")
    assert verdict.decision is None and tx.facts.get(DMARC).result == "permerror"
    two = unique("dmarctwo")
    publish_txt(local_dns, f"_dmarc.{two}", "v=DMARC1; p=reject")
    publish_txt(local_dns, f"_dmarc.{two}", "v=DMARC1; p=none")
    tx, verdict = deliver(local_dns, message(f"a@{two}"), f"b@{two}")
    assert verdict.decision is None and "2 DMARC records" in symbols(verdict)["DMARC_PERMERROR"]


def test_no_from_and_several_from_domains(local_dns: LocalDns, domain: str) -> None:
    publish_txt(local_dns, f"_dmarc.{domain}", "v=DMARC1; p=reject")
    raw = message(f"a@{domain}").replace(f"From: Alice <a@{domain}>\r\n".encode(), b"")
    tx, verdict = deliver(local_dns, raw, f"b@{domain}")
    assert "DMARC_NO_FROM" in symbols(verdict) and verdict.decision is None
    assert tx.facts.get(DMARC).result == "none"
    raw = message(f"a@{domain}").replace(b"From: Alice <", b"From: x@other.example.org, Alice <")
    tx, verdict = deliver(local_dns, raw, f"b@{domain}")
    # multiple_from = "score" scores the ambiguity, and still applies the strictest policy of the
    # From domains: naming a second domain does not switch off p=reject
    assert "DMARC_MULTI_FROM" in symbols(verdict) and isinstance(verdict.decision, Reject)
    assert "DMARC_NONE" in symbols(verdict)  # other.example.org has no record
    assert (tx.facts.get(DMARC).result, tx.facts.get(DMARC).from_domain) == ("fail", domain)
    _, verdict = deliver(local_dns, raw, f"b@{domain}", checks={"dmarc": {"multiple_from": "reject"}})
    assert isinstance(verdict.decision, Reject)
    raw = message(f"a@{domain}").replace(b"From: Alice <", b"From: x@" + domain.encode() + b", Alice <")
    _, verdict = deliver(local_dns, raw, f"b@{domain}")
    assert isinstance(verdict.decision, Reject)  # two addresses of one domain: DMARC applies


def test_several_from_domains_without_reject_are_scored(local_dns: LocalDns, domain: str) -> None:
    other = unique("dmarcq")
    publish_txt(local_dns, f"_dmarc.{other}", "v=DMARC1; p=quarantine")
    raw = message(f"a@{domain}").replace(b"From: Alice <", f"From: x@{other}, Alice <".encode())
    publish_txt(local_dns, f"_dmarc.{domain}", "v=DMARC1; p=none")
    tx, verdict = deliver(local_dns, raw, f"b@{domain}")
    assert isinstance(verdict.decision, Quarantine)  # the strictest: p=quarantine of the other domain
    assert tx.facts.get(DMARC).from_domain == other


def test_from_naming_many_domains_is_held(local_dns: LocalDns, domain: str) -> None:
    publish_txt(local_dns, f"_dmarc.{domain}", "v=DMARC1; p=reject")
    others = ", ".join(f"x@{unique('filler')}" for _ in range(6))
    raw = message(f"a@{domain}").replace(b"From: Alice <", f"From: {others}, Alice <".encode())
    _, verdict = deliver(local_dns, raw, f"b@{domain}")
    assert isinstance(verdict.decision, Quarantine) and "DMARC_MULTI_FROM" in symbols(verdict)


def test_from_with_a_thousand_groups_is_judged(local_dns: LocalDns, domain: str) -> None:
    """email.utils.getaddresses recursed on this From (RecursionError: the check was skipped and
    the forged p=reject From accepted); it is read linearly now and the policy applies."""
    publish_txt(local_dns, f"_dmarc.{domain}", "v=DMARC1; p=reject")
    raw = message(f"a@{domain}").replace(
        f"From: Alice <a@{domain}>".encode(), f"From: a@{domain}{', g:g:' * 1000}".encode()
    )
    tx, verdict = deliver(local_dns, raw, f"b@{domain}")
    assert not [s for s in verdict.symbols if s.name == "CHECK_ERROR" and "dmarc" in s.reason]
    assert isinstance(verdict.decision, Reject) and tx.facts.get(DMARC).result == "fail"


def test_unreadable_dkim_signature_is_permerror_and_dmarc_still_rejects(
    local_dns: LocalDns, domain: str
) -> None:
    """b=A=== made dkimpy raise binascii.Error: the dkim check was skipped, DMARC said temperror
    and the forged From of a p=reject domain was accepted."""
    publish_txt(local_dns, f"_dmarc.{domain}", "v=DMARC1; p=reject")
    key = PublishedKey(local_dns, domain, "s1")
    sig, sep, rest = key.sign(message(f"ceo@{domain}")).partition(b"\r\nFrom:")
    raw = sig[: sig.rindex(b" b=")] + b" b=A===" + sep + rest
    tx, verdict = deliver(local_dns, raw, f"b@{domain}")
    assert "CHECK_ERROR" not in symbols(verdict)
    [dkim_result] = tx.facts.get(DKIM)
    assert dkim_result.result == "permerror" and "base64" in dkim_result.reason
    assert isinstance(verdict.decision, Reject) and tx.facts.get(DMARC).result == "fail"


def test_dkim_not_evaluated_is_no_pass_and_holds_instead_of_rejecting(
    local_dns: LocalDns, domain: str
) -> None:
    publish_txt(local_dns, f"_dmarc.{domain}", "v=DMARC1; p=reject")
    raw = message(f"a@{domain}", body="x" * 5000 + "\r\n")
    p = pipeline(
        local_dns, {"spf": {"on_fail": "score"}}, milter={"max_scan_bytes": 1000, "oversize_action": "accept"}
    )
    try:
        tx, verdict = run(p, raw, client_addr=BAD_IP, helo="mx.example.org", mail_from=f"b@{domain}")
    finally:
        p.close()
    # no DKIM result is no DKIM pass: DMARC fails; a reject is held in quarantine (nothing lost,
    # nothing delivered on the strength of a check that did not run)
    assert isinstance(verdict.decision, Quarantine)
    assert tx.facts.get(DMARC).result == "fail"
    assert "DKIM was not evaluated" in symbols(verdict)["DMARC_FAIL_QUARANTINE"]

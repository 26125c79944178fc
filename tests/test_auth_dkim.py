"""DKIM verification against keys published on the local DNS server."""

from __future__ import annotations

import pytest

from filterd.auth.results import DKIM
from filterd.checks.dkim import verify_all
from tests.harness.auth import (
    PublishedKey,
    headers_of,
    message,
    milter_run,
    pipeline,
    run,
    symbols,
)
from tests.harness.auth import unique as unique_domain
from tests.harness.dns import LocalDns

FOLDED = (
    "Subject: a subject that is long enough\r\n"
    "\tto be folded  over two lines, with  double spaces\r\n"
    "X-Note:no space after the colon\r\n"
)


@pytest.fixture(scope="module")
def rsa_key(local_dns: LocalDns) -> PublishedKey:
    return PublishedKey(local_dns, unique_domain("dkim"), "rsa1")


@pytest.fixture(scope="module")
def ed_key(local_dns: LocalDns, rsa_key: PublishedKey) -> PublishedKey:
    return PublishedKey(local_dns, rsa_key.domain, "ed1", "ed25519")


def results(local_dns: LocalDns, raw: bytes, via_milter: bool = False, checks=None):
    p = pipeline(local_dns, checks)
    try:
        runner = milter_run if via_milter else run
        tx, verdict = runner(p, raw, client_addr="192.0.2.1", mail_from="a@example.org")
        return tx.facts.get(DKIM), verdict
    finally:
        p.close()


@pytest.mark.parametrize("canon", [(b"relaxed", b"relaxed"), (b"simple", b"simple"), (b"relaxed", b"simple")])
@pytest.mark.parametrize("via_milter", [False, True], ids=["raw", "milter"])
def test_pass_simple_and_relaxed(local_dns: LocalDns, rsa_key: PublishedKey, canon, via_milter) -> None:
    raw = rsa_key.sign(message(f"a@{rsa_key.domain}", extra=FOLDED), canon)
    [r], verdict = results(local_dns, raw, via_milter)
    assert (r.result, r.domain, r.selector, r.algorithm) == ("pass", rsa_key.domain, "rsa1", "rsa-sha256")
    assert "DKIM_PASS" in symbols(verdict)
    [ar] = headers_of(verdict, "Authentication-Results")
    assert f"dkim=pass header.d={rsa_key.domain} header.s=rsa1 header.b=" in ar


def test_simple_fails_where_relaxed_passes_after_refolding(
    local_dns: LocalDns, rsa_key: PublishedKey
) -> None:
    """The test above passes for `simple` only because the bytes are kept exactly: refolding one
    header (as a careless rebuild of the message would) breaks simple and not relaxed."""
    for canon, expected in (((b"simple", b"simple"), "fail"), ((b"relaxed", b"relaxed"), "pass")):
        raw = rsa_key.sign(message(f"a@{rsa_key.domain}", extra=FOLDED), canon)
        refolded = raw.replace(b"enough\r\n\tto be", b"enough to be")
        [r], _ = results(local_dns, refolded)
        assert r.result == expected, canon


def test_body_altered_fails(local_dns: LocalDns, rsa_key: PublishedKey) -> None:
    raw = rsa_key.sign(message(f"a@{rsa_key.domain}"))
    [r], verdict = results(local_dns, raw.replace(b"Hello there.", b"Hello there!"))
    assert (r.result, r.reason) == ("fail", "body hash mismatch")
    assert "DKIM_FAIL" in symbols(verdict)
    assert "dkim=fail (body hash mismatch)" in headers_of(verdict, "Authentication-Results")[0]


def test_header_altered_fails(local_dns: LocalDns, rsa_key: PublishedKey) -> None:
    raw = rsa_key.sign(message(f"a@{rsa_key.domain}"))
    [r], _ = results(local_dns, raw.replace(b"Subject: Hello", b"Subject: Hello!"))
    assert r.result == "fail"


def test_ed25519(local_dns: LocalDns, ed_key: PublishedKey) -> None:
    for via_milter in (False, True):
        [r], _ = results(local_dns, ed_key.sign(message(f"a@{ed_key.domain}")), via_milter)
        assert (r.result, r.algorithm, r.selector) == ("pass", "ed25519-sha256", "ed1")


def test_several_signatures_each_recorded(local_dns: LocalDns, rsa_key: PublishedKey, ed_key) -> None:
    other = PublishedKey(local_dns, "nokey.example.com", "s", publish=False)
    raw = message(f"a@{rsa_key.domain}")
    raw = ed_key.sign(rsa_key.sign(raw))
    raw = other.sign(raw)  # a third signature, by a forwarder whose key is not published
    found, verdict = results(local_dns, raw)
    assert [(r.result, r.selector) for r in found] == [("permerror", "s"), ("pass", "ed1"), ("pass", "rsa1")]
    assert "no key at s._domainkey.nokey.example.com" in found[0].reason
    reasons = symbols(verdict)
    assert "s=ed1" in reasons["DKIM_PASS"] and "s=rsa1" in reasons["DKIM_PASS"]  # one symbol, two signatures
    ar = headers_of(verdict, "Authentication-Results")[0]
    assert ar.count("dkim=pass") == 2 and "dkim=permerror" in ar


def test_key_lookup_timeout_is_temperror(local_dns: LocalDns) -> None:
    domain = unique_domain("dkimsilent")
    key = PublishedKey(local_dns, domain, "sel")
    local_dns.make_silent(f"sel._domainkey.{domain}")
    [r], verdict = results(local_dns, key.sign(message(f"a@{domain}")))
    assert r.result == "temperror" and "key lookup failed" in r.reason
    assert "DKIM_TEMPERROR" in symbols(verdict)


def test_short_key_is_policy(local_dns: LocalDns, rsa_key: PublishedKey) -> None:
    [r], _ = results(local_dns, rsa_key.sign(message()), checks={"dkim": {"min_rsa_bits": 4096}})
    assert r.result == "policy" and "too small" in r.reason


def test_unsigned_and_garbage(local_dns: LocalDns) -> None:
    found, verdict = results(local_dns, message())
    assert not found and "DKIM_NONE" in symbols(verdict)
    assert "dkim=none" in headers_of(verdict, "Authentication-Results")[0]
    raw = b"DKIM-Signature: this is not a tag list\r\n" + message()
    [r], _ = results(local_dns, raw)
    assert r.result == "permerror"


def test_verify_all_with_an_unreadable_message() -> None:
    class NoDns:
        def txt(self, name: str) -> list[str]:
            raise AssertionError("no lookup expected")

    assert verify_all(b"", NoDns()) == []


def test_rsa_sha1_is_policy_unless_accepted(local_dns: LocalDns, rsa_key: PublishedKey) -> None:
    import dkim

    raw = message(f"a@{rsa_key.domain}")
    signed = (
        dkim.DKIM(raw).sign(
            rsa_key.selector.encode(),
            rsa_key.domain.encode(),
            rsa_key.private,
            signature_algorithm=b"rsa-sha1",
        )
        + raw
    )
    [r], verdict = results(local_dns, signed)
    assert (r.result, r.algorithm) == ("policy", "rsa-sha1") and "RFC 8301" in r.reason
    assert "DKIM_POLICY" in symbols(verdict)
    [r], _ = results(local_dns, signed, checks={"dkim": {"accept_rsa_sha1": True}})
    assert r.result == "pass"

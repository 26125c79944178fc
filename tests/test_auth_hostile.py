"""Hostile input for every authentication check: each gives a defined result, never an exception.

Each message goes through the whole pipeline twice, as an offline scan and as the milter builds
it from header callbacks, and must leave no CHECK_ERROR, a result for every auth method, and a
decision that depends on the bytes (not on a crash)."""

from __future__ import annotations

import base64
import time

import pytest

from filterd.auth.results import ARC, DKIM, DMARC, SPF
from filterd.checks.dkim import MAX_SIGNATURE_BYTES
from filterd.pipeline import Pipeline
from tests.harness.auth import PublishedKey, milter_run, pipeline, publish_txt, run, unique
from tests.harness.dns import LocalDns

IP = "198.51.100.40"


@pytest.fixture(scope="module")
def victim(local_dns: LocalDns) -> str:
    d = unique("hostile")
    publish_txt(local_dns, f"_dmarc.{d}", "v=DMARC1; p=reject")
    local_dns.add(f'{d}. 60 IN TXT "v=spf1 ip4:192.0.2.1 -all"')
    return d


@pytest.fixture(scope="module")
def p(local_dns: LocalDns) -> Pipeline:
    p = pipeline(local_dns, {"spf": {"on_fail": "score", "on_permerror": "score"}})
    yield p
    p.close()


def raw_message(from_line: bytes, extra: bytes = b"") -> bytes:
    return (
        extra + from_line + b"\r\nTo: bob@example.net\r\nSubject: hostile\r\n"
        b"Date: Thu, 03 Dec 2026 10:00:00 +0000\r\nMessage-ID: <h@example.net>\r\n\r\nbody\r\n"
    )


def both(p: Pipeline, raw: bytes, mail_from: str = "a@example.com", helo: str = "client.example.org"):
    """The message scanned offline and as the milter sees it; neither may leave a CHECK_ERROR."""
    out = []
    for how in (run, milter_run):
        started = time.monotonic()
        tx, verdict = how(p, raw, client_addr=IP, helo=helo, mail_from=mail_from)
        assert time.monotonic() - started < 5, how.__name__
        errors = [s.reason for s in verdict.symbols if s.name == "CHECK_ERROR"]
        assert errors == [], (how.__name__, errors)
        out.append((tx, verdict))
    return out


SIGNATURES = {
    "truncated": b"v=1; a=rsa-sha256; d=",
    "no tags": b"garbage without equals",
    "empty": b"",
    "binary": b"\x00\xff\xfe;;;====;b=\x80",
    "bad b": b"v=1; a=rsa-sha256; d={d}; s=s; h=from; bh=AAAA; b=A===",
    "bad bh": b"v=1; a=rsa-sha256; d={d}; s=s; h=from; bh=*; b=AAAA",
    "unknown a": b"v=1; a=rot13; d={d}; s=s; h=from; bh=AAAA; b=AAAA",
    "8-bit d and s": b"v=1; a=rsa-sha256; d=ex\xe9mple.{d}; s=s\xff1; h=from; bh=AAAA; b=AAAA",
    "long label": b"v=1; a=rsa-sha256; d=" + b"x" * 70 + b".{d}; s=s; h=from; bh=AAAA; b=AAAA",
    "duplicate tag": b"v=1; a=rsa-sha256; d={d}; d=other.example; s=s; h=from; bh=AAAA; b=AAAA",
    "future t": b"v=1; a=rsa-sha256; d={d}; s=s; t=99999999999999999999; h=from; bh=AAAA; b=AAAA",
    "l= huge": b"v=1; a=rsa-sha256; d={d}; s=s; l=99999999999999999999; h=from; bh=AAAA; b=AAAA",
    "huge h=": b"v=1; a=rsa-sha256; d={d}; s=s; h=" + b"from:" * 3000 + b"from; bh=AAAA; b=AAAA",
    "long h=": b"v=1; a=rsa-sha256; d={d}; s=s; h=" + b"x-a:" * 1500 + b"from; bh=AAAA; b=AAAA",
    "b= only spaces": b"v=1; a=rsa-sha256; d={d}; s=s; h=from; bh=AAAA; b=   ",
    "bh= odd length": b"v=1; a=rsa-sha256; d={d}; s=s; h=from; bh=AAA; b=AAAA",
    "bh= padding only": b"v=1; a=rsa-sha256; d={d}; s=s; h=from; bh=====; b=AAAA",
    "c= bogus": b"v=1; a=rsa-sha256; c=relaxed/odd/x; d={d}; s=s; h=from; bh=AAAA; b=AAAA",
    "l= empty": b"v=1; a=rsa-sha256; d={d}; s=s; l=; h=from; bh=AAAA; b=AAAA",
    "l= negative": b"v=1; a=rsa-sha256; d={d}; s=s; l=-5; h=from; bh=AAAA; b=AAAA",
    "x= letters": b"v=1; a=rsa-sha256; d={d}; s=s; x=tomorrow; h=from; bh=AAAA; b=AAAA",
    "x= before t=": b"v=1; a=rsa-sha256; d={d}; s=s; t=1800000000; x=1799999999; h=from; bh=AAAA; b=AAAA",
    "i= other domain": b"v=1; a=rsa-sha256; d={d}; i=@evil.example; s=s; h=from; bh=AAAA; b=AAAA",
    "i= equals d=": b"v=1; a=rsa-sha256; d={d}; i={d}; s=s; h=from; bh=AAAA; b=AAAA",
    "h= without from": b"v=1; a=rsa-sha256; d={d}; s=s; h=subject:to; bh=AAAA; b=AAAA",
    "h= empty": b"v=1; a=rsa-sha256; d={d}; s=s; h=; bh=AAAA; b=AAAA",
    "a= upper case": b"v=1; a=RSA-SHA256; d={d}; s=s; h=from; bh=AAAA; b=AAAA",
    "no v=": b"a=rsa-sha256; d={d}; s=s; h=from; bh=AAAA; b=AAAA",
    "empty d=": b"v=1; a=rsa-sha256; d=; s=s; h=from; bh=AAAA; b=AAAA",
    "tag without value": b"v=1; a=rsa-sha256; d={d}; s=s; h=from; bh=AAAA; b=AAAA; z",
    "folded everywhere": b"v=1;\r\n a=rsa-sha256;\r\n\td={d}; s=s;\r\n h=from\r\n :to; bh=\r\n AAAA; b=AA\r\n AA",
}


@pytest.mark.parametrize("case", sorted(SIGNATURES))
def test_hostile_dkim_signature_is_permerror_and_dmarc_still_applies(
    p: Pipeline, victim: str, case: str
) -> None:
    sig = b"DKIM-Signature: " + SIGNATURES[case].replace(b"{d}", victim.encode()) + b"\r\n"
    for tx, verdict in both(p, raw_message(f"From: ceo@{victim}".encode(), sig)):
        results = {r.result for r in tx.facts.get(DKIM)}
        assert results <= {"permerror", "fail", "temperror"}, (case, tx.facts.get(DKIM))
        assert not any("internal error" in r.reason for r in tx.facts.get(DKIM)), tx.facts.get(DKIM)
        assert tx.facts.get(DMARC).result == "fail"
        assert verdict.decision is not None and verdict.decision.reply.code == 550


def _der_rsa_public_key(n: int, e: int) -> str:
    """A bare RSAPublicKey (PKCS#1) in DER, base64: any numbers, sensible or not."""

    def element(tag: int, content: bytes) -> bytes:
        size = len(content)
        length = (
            bytes([size])
            if size < 0x80
            else bytes([0x80 | ((size.bit_length() + 7) // 8)])
            + size.to_bytes((size.bit_length() + 7) // 8, "big")
        )
        return bytes([tag]) + length + content

    def integer(value: int) -> bytes:
        return element(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))

    return base64.b64encode(element(0x30, integer(n) + integer(e))).decode()


KEY_RECORDS = {
    "not a tag list": "no tags here",
    "p= not base64": "v=DKIM1; p=!!!!",
    "p= bad padding": "v=DKIM1; p=A===",
    "p= not DER": "v=DKIM1; p=" + base64.b64encode(b"\x30\x82\xff\xff" + b"\x00" * 40).decode(),
    "p= empty (revoked)": "v=DKIM1; p=",
    "ed25519 of 31 bytes": "v=DKIM1; k=ed25519; p=" + base64.b64encode(bytes(31)).decode(),
    "ed25519 all zero": "v=DKIM1; k=ed25519; p=" + base64.b64encode(bytes(32)).decode(),
    "RSA modulus of 17000 bits": "v=DKIM1; p=" + _der_rsa_public_key((1 << 17000) - 1, 65537),
    "RSA with an even huge exponent": "v=DKIM1; p=" + _der_rsa_public_key((1 << 2048) - 1, 1 << 100),
    "RSA with e=1": "v=DKIM1; p=" + _der_rsa_public_key((1 << 2048) - 1, 1),
    "RSA modulus 0": "v=DKIM1; p=" + _der_rsa_public_key(0, 3),
    "unknown k=": "v=DKIM1; k=ec; p=AAAA",
    "v=DKIM2": "v=DKIM2; p=AAAA",
    "duplicate p=": "v=DKIM1; p=AAAA; p=BBBB",
    "h= without sha256": "v=DKIM1; h=md5; p=AAAA",
    "s=tlsrpt": "v=DKIM1; s=tlsrpt; p=AAAA",
}


@pytest.mark.parametrize("case", sorted(KEY_RECORDS))
def test_hostile_key_record_gives_fail_or_permerror(
    p: Pipeline, local_dns: LocalDns, victim: str, case: str
) -> None:
    """A real signature, made with a real key, checked against a broken key record."""
    selector = f"k{sorted(KEY_RECORDS).index(case)}"
    publish_txt(local_dns, f"{selector}._domainkey.{victim}", KEY_RECORDS[case])
    key = PublishedKey(local_dns, victim, selector, publish=False)
    raw = key.sign(raw_message(f"From: ceo@{victim}".encode()))
    for tx, _ in both(p, raw):
        [r] = tx.facts.get(DKIM)
        assert r.result in ("permerror", "fail", "policy"), (case, r)
        assert "internal error" not in r.reason, (case, r)
        assert tx.facts.get(DMARC).result == "fail"


def test_huge_h_list_is_permerror_without_verifying(p: Pipeline, victim: str) -> None:
    sig = SIGNATURES["huge h="].replace(b"{d}", victim.encode())
    assert len(sig) > MAX_SIGNATURE_BYTES
    for tx, _ in both(p, raw_message(f"From: ceo@{victim}".encode(), b"DKIM-Signature: " + sig + b"\r\n")):
        [r] = tx.facts.get(DKIM)
        assert r.result == "permerror" and "bytes" in r.reason


FROMS = {
    "8-bit byte in domain": (b"From: ceo@ex\xffample.test", "permerror"),
    "8-bit UTF-8 domain": ("From: ceo@bücher.test".encode(), "none"),
    "empty": (b"From: ", "none"),
    "no domain": (b"From: ceo", "none"),
    "at without domain": (b"From: ceo@", "none"),
    "null address": (b"From: <>", "none"),
    "only at": (b"From: @", "none"),
    "empty label": (b"From: ceo@a..test", "permerror"),
    "long label": (b"From: ceo@" + b"x" * 70 + b".test", "permerror"),
    "unterminated quote": (b'From: "ceo <ceo@a.test>', "none"),
    "unclosed comment": (b"From: ceo@a.test (comment", "none"),
    "nested groups": (b"From: a:b:c:d@e.test;;;", "none"),
}


@pytest.mark.parametrize("case", sorted(FROMS))
def test_hostile_from_gives_a_defined_dmarc_result(p: Pipeline, case: str) -> None:
    from_line, expected = FROMS[case]
    for tx, _ in both(p, raw_message(from_line)):
        assert tx.facts.get(DMARC).result == expected, (case, tx.facts.get(DMARC))


def test_missing_from_header(p: Pipeline) -> None:
    for tx, _ in both(p, raw_message(b"X-No-From: here")):
        assert tx.facts.get(DMARC).result == "none"


ARC_SETS = {
    "garbage seal": b"ARC-Seal: garbage\r\n",
    "huge instance": b"ARC-Seal: i=99999999999; a=rsa-sha256; cv=none; d=a.test; s=s; b=AAAA\r\n",
    "incomplete set": b"ARC-Seal: i=1; a=rsa-sha256; cv=none; d=a.test; s=s; b=AAAA\r\n",
    "bad b": (
        b"ARC-Seal: i=1; a=rsa-sha256; cv=none; d=a.test; s=s; b=A===\r\n"
        b"ARC-Message-Signature: i=1; a=rsa-sha256; d=a.test; s=s; h=from; bh=A===; b=A===\r\n"
        b"ARC-Authentication-Results: i=1; a.test; spf=pass\r\n"
    ),
    "8-bit domain": (
        b"ARC-Seal: i=1; a=rsa-sha256; cv=none; d=\xff.test; s=\xfe; b=AAAA\r\n"
        b"ARC-Message-Signature: i=1; a=rsa-sha256; d=\xff.test; s=s; h=from; bh=AAAA; b=AAAA\r\n"
        b"ARC-Authentication-Results: i=1; a.test; spf=pass\r\n"
    ),
}


@pytest.mark.parametrize("case", sorted(ARC_SETS))
def test_hostile_arc_set_is_a_fail(p: Pipeline, case: str) -> None:
    for tx, _ in both(p, raw_message(b"From: a@example.com", ARC_SETS[case])):
        assert tx.facts.get(ARC).result in ("fail", "none"), (case, tx.facts.get(ARC))


@pytest.mark.parametrize(
    "mail_from",
    [
        "a@ex\udcffample.test",
        "a@",
        "@example.test",
        "a@[192.0.2.1]",
        "x" * 300 + "@example.test",
        "a@a..test",
    ],
)
def test_hostile_envelope_sender_gives_an_spf_result(p: Pipeline, mail_from: str) -> None:
    for tx, _ in both(p, raw_message(b"From: a@example.com"), mail_from=mail_from):
        assert tx.facts.get(SPF).result in ("none", "permerror", "temperror", "fail", "neutral")


@pytest.mark.parametrize("helo", ["", "[192.0.2.1]", "x" * 300, "ex\udcffample.test", "a..b"])
def test_hostile_helo_with_null_sender(p: Pipeline, helo: str) -> None:
    both(p, raw_message(b"From: a@example.com"), mail_from="", helo=helo)

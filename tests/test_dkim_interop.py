"""Interop with an independent DKIM implementation (OpenDKIM's test tools), both ways."""

from __future__ import annotations

from pathlib import Path

import pytest

from filterd.auth.keys import split_txt, txt_value
from filterd.auth.results import DKIM
from tests.harness import opendkim
from tests.harness.auth import PublishedKey, message, pipeline, run, unique, with_headers
from tests.harness.dns import LocalDns

pytestmark = pytest.mark.skipif(opendkim.available() is not None, reason=str(opendkim.available()))


def zone_for(key: PublishedKey) -> str:
    strings = " ".join(f'"{s}"' for s in split_txt(txt_value(key.key_type, key.public)))  # type: ignore[arg-type]
    return f"{key.selector}._domainkey.{key.domain}. 60 IN TXT {strings}\n"


@pytest.mark.parametrize("key_type", ["rsa", "ed25519"])
def test_filterd_signature_verifies_in_opendkim(local_dns: LocalDns, tmp_path: Path, key_type: str) -> None:
    key = PublishedKey(local_dns, unique("interop"), "fd1", key_type)
    raw = message(
        f"user@{key.domain}", extra="X-Folded: first\r\n\tsecond  part\r\n", body="Line one.\r\n\r\n\r\n"
    )
    p = pipeline(local_dns, {"dkim_sign": {"keys": {key.domain: {"fd1": str(key.write(tmp_path / "k"))}}}})
    try:
        _, verdict = run(p, raw, client_addr="192.0.2.5", mail_from="user@x", auth_user="user")
    finally:
        p.close()
    signed = with_headers(raw, verdict)
    assert b"DKIM-Signature:" in signed
    rc, stderr = opendkim.verify(signed, zone_for(key))
    assert (rc, stderr) == (0, "")
    # and it is a real verification: the same message altered fails there
    rc, stderr = opendkim.verify(signed.replace(b"Line one.", b"Line 1."), zone_for(key))
    assert (rc, stderr) == (70, "opendkim-testmsg: dkim_eom(): Bad signature\n")


def test_opendkim_signature_verifies_in_filterd(local_dns: LocalDns, tmp_path: Path) -> None:
    """OpenDKIM's test tool signs with rsa-sha1 and relaxed/simple: filterd verifies the
    signature, and by default reports it as dkim=policy (RFC 8301 retired rsa-sha1)."""
    key = PublishedKey(local_dns, unique("odkim"), "od1")
    raw = message(f"user@{key.domain}", extra="X-Folded: a\r\n\tb  c\r\n")
    signed = opendkim.sign(raw, key.domain, key.selector, key.write(tmp_path / "od1.key"))
    assert signed.startswith(b"DKIM-Signature: v=1; a=rsa-sha1;")
    for checks, expected in (({}, "policy"), ({"dkim": {"accept_rsa_sha1": True}}, "pass")):
        p = pipeline(local_dns, checks)
        try:
            tx, _ = run(p, signed, client_addr="192.0.2.5", mail_from="a@x")
            tampered, _ = run(p, signed.replace(b"Hello there.", b"Hello there!"), client_addr="192.0.2.5")
        finally:
            p.close()
        [r] = tx.facts.get(DKIM)
        assert (r.result, r.domain, r.algorithm) == (expected, key.domain, "rsa-sha1"), r
        assert [t.result for t in tampered.facts.get(DKIM)] == ["fail"]


def test_opendkim_testkey_accepts_the_keygen_record(local_dns: LocalDns, tmp_path: Path) -> None:
    """The record `filterctl dkim keygen` prints is what OpenDKIM's key checker expects."""
    from click.testing import CliRunner

    from filterd.cli.filterctl import cli

    domain = unique("testkey")
    key_file = tmp_path / "k.key"
    (tmp_path / "c.toml").write_text("")
    result = CliRunner().invoke(
        cli,
        [
            "--config",
            str(tmp_path / "c.toml"),
            "dkim",
            "keygen",
            "-d",
            domain,
            "-s",
            "tk",
            "-o",
            str(key_file),
        ],
    )
    assert result.exit_code == 0, result.output
    zone = result.stdout.replace("( ", "").replace(" )", "") + "\n"
    raw = message(f"a@{domain}")
    signed = opendkim.sign(raw, domain, "tk", key_file)  # OpenDKIM reads our PKCS#8 key file
    rc, stderr = opendkim.verify(signed, zone)
    assert (rc, stderr) == (0, "")

"""DKIM signing of outbound mail, the key table's start-up checks, keygen, and the round trip:
a message filterd signed verifies when it comes back inbound."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from filterd.auth.keys import generate
from filterd.auth.results import DKIM
from filterd.cli.filterctl import cli
from filterd.settings import ConfigError
from tests.harness.auth import (
    PublishedKey,
    headers_of,
    message,
    milter_run,
    pipeline,
    publish_txt,
    run,
    symbols,
    unique,
    with_headers,
)
from tests.harness.dns import LocalDns


@pytest.fixture
def signing(local_dns: LocalDns, tmp_path: Path):
    """A domain with an RSA and an Ed25519 key, both published and in the key table."""
    domain = unique("sign")
    rsa = PublishedKey(local_dns, domain, "r1")
    ed = PublishedKey(local_dns, domain, "e1", "ed25519")
    keys = {domain: {"r1": str(rsa.write(tmp_path / "r1.key")), "e1": str(ed.write(tmp_path / "e1.key"))}}
    return domain, keys


def sign_config(keys, **extra):
    return {"dkim_sign": {"keys": keys, **extra}}


def outbound(local_dns: LocalDns, raw: bytes, checks, via_milter: bool = False):
    p = pipeline(local_dns, checks)
    try:
        runner = milter_run if via_milter else run
        return runner(p, raw, client_addr="192.0.2.50", mail_from="user@x", auth_user="user")
    finally:
        p.close()


def inbound(local_dns: LocalDns, raw: bytes, via_milter: bool = False, checks=None):
    p = pipeline(local_dns, checks)
    try:
        runner = milter_run if via_milter else run
        return runner(
            p, raw, client_addr="203.0.113.9", helo="mx.example.org", mail_from="bounce@other.example"
        )
    finally:
        p.close()


@pytest.mark.parametrize("via_milter", [False, True], ids=["raw", "milter"])
def test_dual_signed_message_verifies_inbound(local_dns: LocalDns, signing, via_milter: bool) -> None:
    domain, keys = signing
    publish_txt(local_dns, f"_dmarc.{domain}", "v=DMARC1; p=reject")
    raw = message(f"user@{domain}", extra="Subject: \r\n folded second subject line\r\n")
    tx, verdict = outbound(local_dns, raw, sign_config(keys), via_milter)
    sigs = headers_of(verdict, "DKIM-Signature")
    assert len(sigs) == 2
    assert "a=rsa-sha256" in sigs[0] and "a=ed25519-sha256" in sigs[1]
    assert all("c=relaxed/relaxed" in s and f"d={domain}" in s for s in sigs)
    assert "DKIM_SIGNED" in symbols(verdict)
    assert headers_of(verdict, "Authentication-Results") == []  # outbound: no verification header
    signed = with_headers(raw, verdict)
    tx, verdict = inbound(local_dns, signed, via_milter)
    assert sorted((r.selector, r.result) for r in tx.facts.get(DKIM)) == [("e1", "pass"), ("r1", "pass")]
    assert "DMARC_PASS" in symbols(verdict) and verdict.decision is None


def test_from_is_oversigned(local_dns: LocalDns, signing) -> None:
    domain, keys = signing
    raw = message(f"user@{domain}")
    _, verdict = outbound(local_dns, raw, sign_config(keys))
    h = re.sub(r"\s+", "", headers_of(verdict, "DKIM-Signature")[0]).split("h=")[1].split(";")[0]
    names = h.split(":")
    assert names.count("from") == 2 and "subject" in names and "received" not in names
    signed = with_headers(raw, verdict)
    extra_from = signed.replace(b"To: ", b"From: mallory@evil.example\r\nTo: ", 1)
    tx, _ = inbound(local_dns, extra_from)
    assert {r.result for r in tx.facts.get(DKIM)} == {"fail"}


def test_unknown_from_domain_is_not_signed_unless_default(local_dns: LocalDns, signing) -> None:
    domain, keys = signing
    raw = message("user@elsewhere.example.net")
    _, verdict = outbound(local_dns, raw, sign_config(keys))
    assert headers_of(verdict, "DKIM-Signature") == []
    assert "no signing key for From domain elsewhere.example.net" in symbols(verdict)["DKIM_NOT_SIGNED"]
    _, verdict = outbound(local_dns, raw, sign_config(keys, default_domain=domain))
    sigs = headers_of(verdict, "DKIM-Signature")
    assert len(sigs) == 2 and all(f"d={domain}" in s for s in sigs)


def test_subdomain_uses_parent_keys(local_dns: LocalDns, signing) -> None:
    domain, keys = signing
    raw = message(f"user@lists.{domain}")
    _, verdict = outbound(local_dns, raw, sign_config(keys))
    assert len(headers_of(verdict, "DKIM-Signature")) == 2
    _, verdict = outbound(local_dns, raw, sign_config(keys, subdomains=False))
    assert headers_of(verdict, "DKIM-Signature") == []


def test_inbound_mail_is_not_signed(local_dns: LocalDns, signing) -> None:
    domain, keys = signing
    _, verdict = inbound(local_dns, message(f"user@{domain}"), checks=sign_config(keys))
    assert headers_of(verdict, "DKIM-Signature") == []


def test_several_from_domains_not_signed(local_dns: LocalDns, signing) -> None:
    domain, keys = signing
    raw = message(f"user@{domain}").replace(b"From: Alice <", b"From: x@other.example, Alice <")
    _, verdict = outbound(local_dns, raw, sign_config(keys))
    assert headers_of(verdict, "DKIM-Signature") == []
    assert "2 domains" in symbols(verdict)["DKIM_NOT_SIGNED"]


def test_key_file_problems_stop_start_up(local_dns: LocalDns, tmp_path: Path) -> None:
    good = tmp_path / "good.key"
    good.write_bytes(generate("ed25519")[0])
    good.chmod(0o600)
    key = "checks.dkim_sign.keys.example.com.s1"

    def start(path: str, **extra) -> None:
        pipeline(local_dns, sign_config({"example.com": {"s1": path}}, **extra)).close()

    start(str(good))  # fine
    with pytest.raises(ConfigError, match=rf"{re.escape(key)}: key file .*missing.key does not exist"):
        start(str(tmp_path / "missing.key"))
    good.chmod(0o644)
    with pytest.raises(ConfigError, match=r"has mode 0644: other users can read"):
        start(str(good))
    good.chmod(0o640)
    start(str(good))  # group-readable (a filterd group) is allowed
    bad = tmp_path / "bad.key"
    bad.write_text("-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n")
    bad.chmod(0o600)
    with pytest.raises(ConfigError, match="not a readable PEM private key"):
        start(str(bad))
    bad.write_text("hello\n")
    with pytest.raises(ConfigError, match="neither a PEM private key nor a base64 Ed25519 seed"):
        start(str(bad))
    with pytest.raises(ConfigError, match="must be an absolute path"):
        start("relative.key")
    with pytest.raises(ConfigError, match="default_domain"):
        start(str(good), default_domain="other.example")
    with pytest.raises(ConfigError, match=r"checks\.dkim_sign\.headers"):
        pipeline(local_dns, {"dkim_sign": {"headers": ["from", "received"]}})


def test_dkimpy_seed_format_and_pkcs1_pem_are_read(local_dns: LocalDns, tmp_path: Path) -> None:
    """Keys written by other tools: dkimpy's base64 Ed25519 seed, openssl's PKCS#1 RSA PEM."""
    import subprocess

    from cryptography.hazmat.primitives import serialization

    domain = unique("formats")
    pem, public = generate("ed25519")
    seed = serialization.load_pem_private_key(pem, None).private_bytes(  # type: ignore[union-attr]
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    (tmp_path / "seed.key").write_bytes(base64.b64encode(seed) + b"\n")
    publish_txt(local_dns, f"seed._domainkey.{domain}", f"v=DKIM1; k=ed25519; p={public}")
    subprocess.run(
        ["openssl", "genrsa", "-traditional", "-out", str(tmp_path / "pkcs1.key"), "2048"],
        check=True,
        capture_output=True,
    )
    text = (tmp_path / "pkcs1.key").read_text()
    assert "BEGIN RSA PRIVATE KEY" in text
    from filterd.auth.keys import parse_private_key

    _, bits, _, rsa_public = parse_private_key(text.encode(), "pkcs1")
    assert bits == 2048
    publish_txt(local_dns, f"pkcs1._domainkey.{domain}", f"v=DKIM1; k=rsa; p={rsa_public}")
    for f in ("seed.key", "pkcs1.key"):
        (tmp_path / f).chmod(0o600)
    keys = {domain: {"seed": str(tmp_path / "seed.key"), "pkcs1": str(tmp_path / "pkcs1.key")}}
    raw = message(f"a@{domain}")
    _, verdict = outbound(local_dns, raw, sign_config(keys))
    tx, _ = inbound(local_dns, with_headers(raw, verdict))
    assert sorted((r.selector, r.result) for r in tx.facts.get(DKIM)) == [
        ("pkcs1", "pass"),
        ("seed", "pass"),
    ]


@pytest.mark.parametrize("key_type", ["rsa", "ed25519"])
def test_keygen_writes_the_key_and_prints_the_record(
    local_dns: LocalDns, tmp_path: Path, key_type: str
) -> None:
    domain = unique("keygen")
    key_path = tmp_path / "keys" / f"{domain}.k1.key"
    config = tmp_path / "filterd.toml"
    config.write_text(f'[checks.dkim_sign.keys."{domain}"]\nk1 = "{key_path}"\n')
    result = CliRunner().invoke(
        cli, ["--config", str(config), "dkim", "keygen", "-d", domain, "-s", "k1", "--type", key_type]
    )
    assert result.exit_code == 0, result.output
    assert key_path.stat().st_mode & 0o777 == 0o600
    record = result.stdout.strip()
    assert record.startswith(f"k1._domainkey.{domain}. 3600 IN TXT ( ")
    strings = re.findall(r'"([^"]*)"', record)
    assert all(len(s) <= 255 for s in strings)
    if key_type == "rsa":
        assert len(strings) == 2  # a 2048-bit key does not fit one string
    local_dns.add(record.replace("( ", "").replace(" )", ""))
    raw = message(f"user@{domain}")
    _, verdict = outbound(local_dns, raw, {"dkim_sign": {"keys": {domain: {"k1": str(key_path)}}}})
    tx, _ = inbound(local_dns, with_headers(raw, verdict))
    assert [(r.result, r.algorithm.split("-")[0]) for r in tx.facts.get(DKIM)] == [("pass", key_type)]
    again = CliRunner().invoke(cli, ["--config", str(config), "dkim", "keygen", "-d", domain, "-s", "k1"])
    assert again.exit_code == 1 and "exists: use --force" in again.output


def test_keygen_default_path_and_bad_arguments(tmp_path: Path) -> None:
    config = tmp_path / "filterd.toml"
    config.write_text(f'[checks.dkim_sign]\nkey_dir = "{tmp_path / "dkim"}"\n')
    runner = CliRunner()
    result = runner.invoke(cli, ["--config", str(config), "dkim", "keygen", "-d", "Example.COM", "-s", "s2"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "dkim" / "example.com.s2.key").exists()
    assert 's2 = "' in result.stderr  # the line to add to the key table
    for args, problem in (
        (["-d", "example.com", "-s", "bad selector"], "not a valid selector"),
        (["-d", "nodot", "-s", "s"], "not a domain name"),
        (["-d", "example.com", "-s", "s", "--bits", "512"], "outside 1024..8192"),
        (["-d", "example.com", "-s", "s", "--type", "ed25519", "--bits", "2048"], "fixed size"),
    ):
        result = runner.invoke(cli, ["--config", str(config), "dkim", "keygen", *args])
        assert result.exit_code == 2 and problem in result.output, result.output


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("-d", "../../x"),
        ("-d", "../escape.example"),
        ("-d", "a/b.example"),
        ("-d", "example.com\x00.evil"),
        ("-d", "exa mple.com"),
        ("-d", ".."),
        ("-s", "../../x"),
        ("-s", "s/1"),
        ("-s", ".."),
        ("-s", "s\x00"),
    ],
)
def test_keygen_refuses_names_that_are_not_dns_labels(tmp_path: Path, option: str, value: str) -> None:
    """A domain or selector that is not DNS labels could put the key outside key_dir: refused,
    with the value named, and nothing is written anywhere under the test directory."""
    key_dir = tmp_path / "a" / "b" / "dkim"
    config = tmp_path / "filterd.toml"
    config.write_text(f'[checks.dkim_sign]\nkey_dir = "{key_dir}"\n')
    args = {"-d": "example.com", "-s": "s1"} | {option: value}
    before = sorted(tmp_path.rglob("*"))
    command = ["--config", str(config), "dkim", "keygen", "-d", args["-d"], "-s", args["-s"]]
    result = CliRunner().invoke(cli, command)
    assert result.exit_code == 2, result.output
    assert repr(value) in result.output
    assert sorted(tmp_path.rglob("*")) == before

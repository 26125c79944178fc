"""End to end through Postfix: SPF, DKIM, DMARC, the Authentication-Results header, and outbound
signing, with every record served by the local DNS server.

Inbound mail comes from 127.0.0.1; "outbound" mail (an internal network) from 127.0.0.2, so one
filterd configuration serves both directions.
"""

from __future__ import annotations

import smtplib
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from filterd.quarantine.release import release
from filterd.quarantine.store import QuarantineSettings, QuarantineStore
from tests.harness.auth import PublishedKey, publish_txt, unique
from tests.harness.dns import LocalDns
from tests.harness.stack import Stack, make_message

pytestmark = pytest.mark.stack

INBOUND, OUTBOUND = "127.0.0.1", "127.0.0.2"


def test_authserv_id_defaults_to_the_name_postfix_announces(stack: Stack, local_dns: LocalDns) -> None:
    """No hostname or authserv_id configured: before, the header said "localhost" (this host's
    FQDN); now it is Postfix's myhostname (the j macro), mx.filterd.test.  First in the module, so
    it runs before the `auth` fixture configures a hostname for the rest."""
    domain = unique("e2ejmacro")
    local_dns.add(f'{domain}. 60 IN TXT "v=spf1 ip4:127.0.0.1 -all"')
    dns = {"nameservers": ["127.0.0.1"], "port": local_dns.port, "timeout": 0.5, "attempts": 1}
    msg, marker = make_message(
        "j macro",
        sender=f"a@{domain}",
        headers=[("Authentication-Results", "mx.filterd.test.; dmarc=pass header.from=bank.example")],
    )
    with stack.configured({"dns": dns}):
        assert stack.send(msg, f"a@{domain}") == {}
        got = stack.sink.find(marker)
    [ar] = got.header("Authentication-Results")  # the forged one is gone
    assert ar.startswith("mx.filterd.test;") and "bank.example" not in ar
    [spf] = got.header("Received-SPF")
    assert "receiver=mx.filterd.test;" in spf


class Auth:
    """The stack configured for authentication, and the domains and keys the tests use."""

    def __init__(self, stack: Stack, local_dns: LocalDns, key_dir: Path) -> None:
        self.stack, self.dns = stack, local_dns
        self.spf_ok = unique("e2espf")  # SPF pass for 127.0.0.1
        local_dns.add(f'{self.spf_ok}. 60 IN TXT "v=spf1 ip4:127.0.0.1 -all"')
        self.spf_bad = unique("e2efail")  # SPF fail for 127.0.0.1, with an explanation
        local_dns.add(f'{self.spf_bad}. 60 IN TXT "v=spf1 ip4:192.0.2.1 exp=why.{self.spf_bad} -all"')
        local_dns.add(f'why.{self.spf_bad}. 60 IN TXT "Not our server: %{{i}}"')
        self.signer = unique("e2esign")  # ours: keys in filterd's key table, p=reject
        self.rsa = PublishedKey(local_dns, self.signer, "r1")
        self.ed = PublishedKey(local_dns, self.signer, "e1", "ed25519")
        publish_txt(local_dns, f"_dmarc.{self.signer}", "v=DMARC1; p=reject")
        self.config = {
            "dns": {"nameservers": ["127.0.0.1"], "port": local_dns.port, "timeout": 0.5, "attempts": 1},
            "network": {"hostname": "mx.filterd.test", "internal_networks": [f"{OUTBOUND}/32"]},
            "checks": {
                "dkim_sign": {
                    "keys": {
                        self.signer: {
                            "r1": str(self.rsa.write(key_dir / "r1.key")),
                            "e1": str(self.ed.write(key_dir / "e1.key")),
                        }
                    }
                }
            },
        }

    def send(
        self,
        data: bytes,
        mail_from: str,
        source: str = INBOUND,
        rcpts: Sequence[str] = ("bob@example.net",),
        helo: str = "client.example.org",
    ) -> dict[str, Any]:
        with smtplib.SMTP(
            "127.0.0.1", self.stack.postfix.port, local_hostname=helo, timeout=60, source_address=(source, 0)
        ) as smtp:
            return smtp.sendmail(mail_from, list(rcpts), data)

    def delivered(self, data: bytes, mail_from: str, marker: str, source: str = INBOUND):
        assert self.send(data, mail_from, source) == {}
        return self.stack.sink.find(marker)


@pytest.fixture(scope="module")
def auth(stack: Stack, local_dns: LocalDns, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Auth]:
    a = Auth(stack, local_dns, tmp_path_factory.mktemp("dkim-keys"))
    with stack.configured(a.config):
        yield a


def ar_of(got) -> str:
    [ar] = got.header("Authentication-Results")
    return ar


def test_spf_pass_gets_received_spf_and_authentication_results(auth: Auth) -> None:
    msg, marker = make_message("spf pass", sender=f"a@{auth.spf_ok}")
    got = auth.delivered(msg, f"a@{auth.spf_ok}", marker)
    [received] = got.header("Received-SPF")
    assert received.startswith("Pass (mx.filterd.test: domain of") and "client-ip=127.0.0.1;" in received
    ar = ar_of(got)
    assert ar.startswith("mx.filterd.test;") and f"spf=pass smtp.mailfrom=a@{auth.spf_ok}" in ar


def test_spf_fail_is_rejected_at_mail_from(auth: Auth) -> None:
    msg, marker = make_message("spf fail", sender=f"a@{auth.spf_bad}")
    with pytest.raises(smtplib.SMTPSenderRefused) as info:
        auth.send(msg, f"a@{auth.spf_bad}")
    assert info.value.smtp_code == 550
    text = info.value.smtp_error.decode()
    assert text.startswith("5.7.23") and "Not our server: 127.0.0.1" in text
    time.sleep(0.5)
    assert auth.stack.sink.count(marker) == 0


@pytest.mark.parametrize(
    ("record", "result"),
    [("v=spf1 ~all", "softfail"), ("v=spf1 ?all", "neutral"), ("not spf", "none"), (None, "temperror")],
)
def test_spf_softfail_neutral_none_temperror_are_delivered(
    auth: Auth, record: str | None, result: str
) -> None:
    domain = unique("e2espf" + result)
    if record is None:
        auth.dns.make_silent(domain)
    else:
        auth.dns.add(f'{domain}. 60 IN TXT "{record}"')
    msg, marker = make_message(f"spf {result}", sender=f"a@{domain}")
    got = auth.delivered(msg, f"a@{domain}", marker)
    assert f"spf={result}" in ar_of(got)
    assert f"SPF_{result.upper()}" in got.header("X-Spam-Report")[0]


def test_dkim_pass_fail_ed25519_and_several_signatures(auth: Auth) -> None:
    other = PublishedKey(auth.dns, unique("e2eother"), "o1")
    for canon in ((b"simple", b"simple"), (b"relaxed", b"relaxed")):
        msg, marker = make_message(
            "dkim " + canon[0].decode(),
            sender=f"a@{auth.rsa.domain}",
            headers=[("X-Folded", "first part\r\n\tsecond  part"), ("X-Tight", "x")],
        )
        msg = msg.replace(b"X-Tight: x", b"X-Tight:x")
        signed = other.sign(auth.ed.sign(auth.rsa.sign(msg, canon), canon), canon)
        ar = ar_of(auth.delivered(signed, f"a@{auth.spf_ok}", marker))
        for key in (auth.rsa, auth.ed, other):
            assert f"dkim=pass header.d={key.domain} header.s={key.selector}" in ar, (canon, ar)
        assert "dmarc=pass" in ar
    msg, marker = make_message("dkim altered", sender=f"a@{auth.spf_ok}")
    altered = other.sign(msg).replace(b"just a test.", b"just a text.")
    ar = ar_of(auth.delivered(altered, f"a@{auth.spf_ok}", marker))
    assert "dkim=fail (body hash mismatch)" in ar


def test_dmarc_reject(auth: Auth) -> None:
    msg, marker = make_message("dmarc reject", sender=f"ceo@{auth.signer}")  # unsigned, From our domain
    with pytest.raises(smtplib.SMTPDataError) as info:
        auth.send(msg, f"a@{auth.spf_ok}")  # SPF passes, for a domain that does not align
    assert info.value.smtp_code == 550 and info.value.smtp_error.decode().startswith("5.7.26")
    time.sleep(0.5)
    assert auth.stack.sink.count(marker) == 0


def test_dmarc_quarantine_holds_the_message(auth: Auth) -> None:
    domain = unique("e2equar")
    publish_txt(auth.dns, f"_dmarc.{domain}", "v=DMARC1; p=quarantine")
    msg, marker = make_message("dmarc quarantine", sender=f"x@{domain}")
    assert auth.send(msg, f"a@{auth.spf_ok}") == {}
    qdir = auth.stack.quarantine_dir  # [quarantine] mode = "store", the default: filterd keeps it
    held: list[Path] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not held:
        held = [p for p in qdir.glob("*.eml") if marker.encode() in p.read_bytes()] if qdir.exists() else []
        time.sleep(0.1)
    assert held, "the message is not in filterd's quarantine"
    assert "dmarc" in held[0].with_suffix(".json").read_text().lower()
    assert auth.stack.sink.count(marker) == 0
    for p in held:
        p.unlink()
        p.with_suffix(".json").unlink()


def test_outbound_is_signed_and_verifies_when_it_comes_back(auth: Auth) -> None:
    msg, marker = make_message("outbound", sender=f"user@{auth.signer}")
    got = auth.delivered(msg, f"user@{auth.signer}", marker, source=OUTBOUND)
    sigs = got.header("DKIM-Signature")
    assert len(sigs) == 2 and all(f"d={auth.signer}" in s for s in sigs)
    assert got.header("Authentication-Results") == []  # outbound mail is not verified
    auth.stack.sink.clear()
    back = auth.delivered(got.data, f"user@{auth.spf_ok}", marker)  # as the receiving side sees it
    ar = ar_of(back)
    assert f"dkim=pass header.d={auth.signer} header.s=r1" in ar
    assert f"dkim=pass header.d={auth.signer} header.s=e1" in ar
    assert f"dmarc=pass (p=reject dis=none) header.from={auth.signer}" in ar


def test_forged_authentication_results_removed_others_kept(auth: Auth) -> None:
    msg, marker = make_message(
        "forged ar",
        sender=f"a@{auth.spf_ok}",
        headers=[
            ("Authentication-Results", "mx.filterd.test; dkim=pass header.d=bank.example"),
            ("Authentication-Results", "upstream.example.org; spf=pass smtp.mailfrom=x"),
            ("Authentication-Results", "MX.FILTERD.TEST (folded)\r\n\t; dmarc=pass"),
        ],
    )
    got = auth.delivered(msg, f"a@{auth.spf_ok}", marker)
    values = got.header("Authentication-Results")
    assert len(values) == 2
    assert any(v.startswith("upstream.example.org;") for v in values)
    [ours] = [v for v in values if v.lower().startswith("mx.filterd.test")]
    assert "bank.example" not in ours and "spf=pass" in ours


def forged_signature(key: PublishedKey, raw: bytes) -> bytes:
    """`raw` signed by `key`, with the signature's b= made "A===" (not base64 dkimpy can read)."""
    sig, sep, rest = key.sign(raw).partition(b"\r\nFrom:")
    return sig[: sig.rindex(b" b=")] + b" b=A===" + sep + rest


def assert_rejected_by_dmarc(auth: Auth, msg: bytes, marker: str) -> None:
    with pytest.raises(smtplib.SMTPDataError) as info:
        auth.send(msg, f"a@{auth.spf_ok}")
    assert info.value.smtp_code == 550 and info.value.smtp_error.decode().startswith("5.7.26")
    time.sleep(0.5)
    assert auth.stack.sink.count(marker) == 0


def test_forged_from_with_an_unreadable_signature_is_rejected(auth: Auth) -> None:
    """Before: b=A=== made dkimpy raise, the dkim check was skipped (CHECK_ERROR), DMARC said
    temperror and the forged From of a p=reject domain was delivered."""
    msg, marker = make_message("b=A===", sender=f"ceo@{auth.signer}")
    assert_rejected_by_dmarc(auth, forged_signature(auth.rsa, msg), marker)


def test_forged_from_with_a_thousand_groups_is_rejected(auth: Auth) -> None:
    """Before: email.utils.getaddresses hit RecursionError, DMARC was skipped and the message
    delivered."""
    msg, marker = make_message("groups", sender=f"ceo@{auth.signer}")
    msg = msg.replace(
        f"From: Alice <ceo@{auth.signer}>".encode(), f"From: ceo@{auth.signer}{', g:g:' * 1000}".encode()
    )
    assert f"ceo@{auth.signer}, g:g:".encode() in msg
    assert_rejected_by_dmarc(auth, msg, marker)


def test_second_from_domain_does_not_weaken_p_reject(auth: Auth) -> None:
    """Before: two From domains only scored DMARC_MULTI_FROM and the message was delivered."""
    msg, marker = make_message("two froms", sender=f"ceo@{auth.signer}")
    msg = msg.replace(b"From: Alice <", f"From: x@{auth.spf_ok}, Alice <".encode())
    assert f"From: x@{auth.spf_ok}, Alice <ceo@{auth.signer}>".encode() in msg
    assert_rejected_by_dmarc(auth, msg, marker)


def test_forged_received_spf_and_trailing_dot_authserv_id_removed(auth: Auth) -> None:
    msg, marker = make_message(
        "forged spf",
        sender=f"a@{auth.spf_ok}",
        headers=[
            (
                "Received-SPF",
                "Pass (mx.filterd.test: domain of bank.example designates 127.0.0.1) receiver=x;",
            ),
            ("Received-SPF", "Pass (client.example: domain of bank.example) receiver=client.example;"),
            ("Authentication-Results", "MX.filterd.test.; dkim=pass header.d=bank.example"),
        ],
    )
    got = auth.delivered(msg, f"a@{auth.spf_ok}", marker)
    [spf] = got.header("Received-SPF")  # only ours: the incoming ones would be read before it
    assert spf.startswith("Pass (mx.filterd.test: domain of") and "bank.example" not in spf
    [ar] = got.header("Authentication-Results")
    assert ar.startswith("mx.filterd.test;") and "bank.example" not in ar


def test_released_quarantine_mail_has_no_forged_authentication_results(auth: Auth) -> None:
    """Before: the release re-injected the sender's "mx.filterd.test; dmarc=pass" as it came."""
    domain = unique("e2erelease")
    publish_txt(auth.dns, f"_dmarc.{domain}", "v=DMARC1; p=quarantine")
    msg, marker = make_message(
        "release forged ar",
        sender=f"x@{domain}",
        headers=[
            ("Authentication-Results", f"mx.filterd.test.; dmarc=pass header.from={domain}"),
            ("Received-SPF", "Pass (mx.filterd.test: forged) receiver=mx.filterd.test;"),
            ("Authentication-Results", "upstream.example.org; spf=pass smtp.mailfrom=x"),
        ],
    )
    assert auth.send(msg, f"a@{auth.spf_ok}") == {}
    store = QuarantineStore(QuarantineSettings(**auth.stack.base_config["quarantine"]))
    deadline = time.monotonic() + 10
    held = []
    while time.monotonic() < deadline and not held:
        held = [e for e in store.entries() if marker.encode() in e.original()]
        time.sleep(0.1)
    assert held, "the message is not in filterd's quarantine"
    release(store, held[0].id)
    got = auth.stack.sink.find(marker)
    assert got.header("Authentication-Results") == ["upstream.example.org; spf=pass smtp.mailfrom=x"]
    assert got.header("Received-SPF") == []
    store.delete(held[0].id)


def test_200_arc_sets_cost_no_lookup_through_postfix(auth: Auth) -> None:
    """Before: 400 key lookups (two per set) for one message; now a fail without any."""
    from tests.test_auth_budget import arc_sets

    under = unique("e2earc")
    msg, marker = make_message("arc flood", sender=f"a@{auth.spf_ok}")
    started = time.monotonic()
    got = auth.delivered(arc_sets(200, under) + msg, f"a@{auth.spf_ok}", marker)
    assert time.monotonic() - started < 10
    assert auth.dns.queries_under(under) == 0
    assert "arc=fail (i=200; more than 50 ARC sets" in ar_of(got)

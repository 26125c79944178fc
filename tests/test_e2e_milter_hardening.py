"""End to end through Postfix: the milter path never loops on 4xx and never goes quadratic.

Every message here ends delivered once at the sink or refused with a 5xx; a 4xx would be a
retry loop (the same bytes fail the same way on every retry: the message is never delivered).
"""

from __future__ import annotations

import smtplib
import time
import uuid
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from filterd.cli.filterctl import cli
from tests.harness.dns import LocalDns
from tests.harness.postfix import Postfix
from tests.harness.stack import Stack, make_message

pytestmark = pytest.mark.stack


class _PostfixWithoutSmtputf8(Postfix):
    """A second Postfix on the same filterd and sink, with `smtputf8_enable = no`: it passes a
    Latin-1 byte in MAIL FROM on as it came (the stack's own Postfix refuses it as bad UTF-8)."""

    def write_config(self, extra: dict[str, str] | None = None) -> None:
        super().write_config({"smtputf8_enable": "no", **(extra or {})})


@pytest.fixture(scope="module")
def ascii_postfix(stack: Stack) -> Iterator[Postfix]:
    postfix = _PostfixWithoutSmtputf8(
        stack.dir / "postfix-no-smtputf8", f"unix:{stack.filterd.socket_path}", stack.sink.port
    )
    postfix.start()
    yield postfix
    postfix.stop()


def _send_raw(
    stack: Stack,
    data: bytes,
    mail_from: str = "alice@example.org",
    encoding: str = "ascii",
    port: int | None = None,
) -> tuple[int, bytes]:
    """Send one message; return the reply to DATA (or to the first refused command)."""
    port = port or stack.postfix.port
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.example.org", timeout=120) as smtp:
        smtp.command_encoding = encoding  # an 8-bit MAIL FROM without the SMTPUTF8 parameter
        smtp.ehlo()
        code, reply = smtp.mail(mail_from)
        if code >= 400:
            return code, reply
        code, reply = smtp.rcpt("bob@example.net")
        if code >= 400:
            return code, reply
        return smtp.data(data)


def _delivered_or_5xx(stack: Stack, code: int, reply: bytes, marker: str) -> None:
    assert code < 400 or code >= 500, f"a retry loop: {code} {reply!r}"
    if code < 400:
        assert stack.sink.find(marker)
        time.sleep(0.2)
        assert stack.sink.count(marker) == 1


@pytest.mark.parametrize(
    ("count", "name", "expected"),
    [
        (10_000, "X-Spam-Flag", 552),  # forged: past max_forged_headers, refused (was 5 s, delivered)
        (30_000, "X-Spam-Flag", 552),  # (was 35 s, then Postfix's cleanup failed: 451 on every try)
        (10_000, "X-Filler", 250),  # not forged: delivered, scored TOO_MANY_HEADERS
    ],
)
def test_a_header_flood_ends_within_seconds_never_4xx(
    stack: Stack, count: int, name: str, expected: int
) -> None:
    flood = [(name, f"value {i}") for i in range(count)]
    msg, marker = make_message("header flood", headers=flood)
    started = time.monotonic()
    code, reply = _send_raw(stack, msg)
    elapsed = time.monotonic() - started
    _delivered_or_5xx(stack, code, reply, marker)
    assert code == expected, reply
    assert elapsed < 10, f"{elapsed:.1f} s for {count} headers"
    if code == 250:
        assert "TOO_MANY_HEADERS" in stack.sink.find(marker).header("X-Spam-Report")[0]


def _eight_bit(msg: bytes, old: bytes, new: bytes) -> bytes:
    assert old in msg
    return msg.replace(old, new, 1)


@pytest.mark.parametrize("byte", [b"\xe9", b"\xc3\xa9"], ids=["latin1", "utf8"])
def test_eight_bit_from_domain_is_delivered_not_tempfailed(stack: Stack, byte: bytes) -> None:
    msg, marker = make_message("8-bit from")
    msg = _eight_bit(msg, b"From: Alice <alice@example.org>", b"From: Alice <alice@exa" + byte + b"mple.org>")
    code, reply = _send_raw(stack, msg)
    _delivered_or_5xx(stack, code, reply, marker)


@pytest.mark.parametrize("byte", [b"\xe9", b"\xc3\xa9"], ids=["latin1", "utf8"])
def test_eight_bit_subject_rewritten_is_delivered_not_tempfailed(stack: Stack, byte: bytes) -> None:
    config = {
        "actions": {"rewrite_subject": 4.0, "subject_tag": "[SPAM]"},
        "scores": {"MISSING_MESSAGE_ID": 4.5},
    }
    with stack.configured(config):
        msg, marker = make_message("caf")
        msg = _eight_bit(msg, b"Subject: caf ", b"Subject: caf" + byte + b" ")
        msg = b"\r\n".join(line for line in msg.split(b"\r\n") if not line.startswith(b"Message-ID:"))
        code, reply = _send_raw(stack, msg)
        _delivered_or_5xx(stack, code, reply, marker)
        if code < 400:
            got = stack.sink.find(marker)
            assert b"[SPAM]" in got.data


@pytest.mark.parametrize(
    "sender", ["al\xe9@example.org", "al\u00e9@exampl\u00e9.org"], ids=["latin1", "utf8"]
)
def test_eight_bit_mail_from_is_delivered_not_tempfailed(stack: Stack, sender: str) -> None:
    msg, marker = make_message("8-bit envelope")
    code, reply = _send_raw(
        stack, msg, mail_from=sender, encoding="latin-1" if "exampl" not in sender else "utf-8"
    )
    _delivered_or_5xx(stack, code, reply, marker)


@pytest.mark.parametrize("spf", ["v=spf1 ip4:127.0.0.1 -all", "v=spf1 ip4:192.0.2.1 exp=why.%{d} -all"])
def test_eight_bit_mail_from_with_an_spf_record_is_delivered_or_5xx(
    stack: Stack, ascii_postfix: Postfix, local_dns: LocalDns, spf: str
) -> None:
    domain = f"spf8-{uuid.uuid4().hex[:8]}.example"
    local_dns.add(f'{domain}. 60 IN TXT "{spf}"')
    local_dns.add(f'why.{domain}. 60 IN TXT "Not our server: %{{s}} %{{l}}"')
    msg, marker = make_message("8-bit envelope spf", sender=f"alice@{domain}")
    code, reply = _send_raw(
        stack, msg, mail_from=f"al\xe9@{domain}", encoding="latin-1", port=ascii_postfix.port
    )
    _delivered_or_5xx(stack, code, reply, marker)


def test_many_headers_are_delivered_marked_too_many_headers_with_forged_ones_removed(stack: Stack) -> None:
    filler = [(f"X-Filler-{i}", f"value {i}") for i in range(1_500)]
    forged = [("X-Spam-Flag", "NO"), ("X-Spam-Status", "No, score=-50")]
    msg, marker = make_message("many headers", headers=[*filler[:10], *forged, *filler[10:], *forged])
    code, reply = _send_raw(stack, msg)
    assert code == 250, reply
    got = stack.sink.find(marker)
    assert "TOO_MANY_HEADERS" in got.header("X-Spam-Report")[0]
    assert got.header("X-Spam-Flag") == []  # a forged one past the kept headers is removed too
    assert got.header("X-Spam-Status") == ["No, score=3.00 required=5.00"]
    assert len(got.header("X-Filler-1499")) == 1


def test_quarantined_copy_has_no_forged_headers_when_released(stack: Stack) -> None:
    config = {
        "actions": {"add_header": 2.0, "quarantine": 3.0},
        "scores": {"MISSING_DATE": 4.0},
        "network": {"hostname": "mx.filterd.test"},
    }
    forged = [
        ("X-Spam-Flag", "NO"),
        ("X-Spam-Status", "No, score=-50"),
        ("Authentication-Results", "mx.filterd.test; spf=pass smtp.mailfrom=example.org; dkim=pass"),
        ("Authentication-Results", "other.example; spf=fail"),  # not ours: kept
    ]
    with stack.configured(config) as filterd:
        msg, marker = make_message("quarantined", headers=forged)
        msg = b"\r\n".join(line for line in msg.split(b"\r\n") if not line.startswith(b"Date:"))
        assert _send_raw(stack, msg)[0] == 250
        time.sleep(1.0)
        assert stack.sink.count(marker) == 0
        stored = [p for p in stack.quarantine_dir.glob("*.json") if marker in p.read_text()]
        assert len(stored) == 1
        stored_bytes = stored[0].with_suffix(".eml").read_bytes()
        args = ["--config", str(filterd.config_path), "quarantine", "release", stored[0].stem]
        released = CliRunner().invoke(cli, args, catch_exceptions=False)
        assert released.exit_code == 0, released.output
        got = stack.sink.find(marker)
    results = got.header("Authentication-Results")
    assert not any("dkim=pass" in r for r in results)  # the forged one, in our name, is gone
    assert any(r.startswith("other.example;") for r in results)
    assert got.header("X-Spam-Flag") == [] and got.header("X-Spam-Status") == []
    assert b"score=-50" not in stored_bytes and b"dkim=pass" not in stored_bytes  # nor kept on disk


def test_a_message_past_the_workers_inflight_budget_gets_452_and_the_budget_comes_back(stack: Stack) -> None:
    with stack.configured({"milter": {"max_inflight_bytes": 1_000_000}}):
        line = "0123456789" * 7 + "\r\n"
        big, big_marker = make_message("over budget", body=line * (2_000_000 // len(line)))
        code, reply = _send_raw(stack, big)
        assert (code, reply[:5]) == (452, b"4.3.1"), reply
        for _ in range(3):  # what the refused message took was given back: these fit, one by one
            fits, marker = make_message("within budget", body=line * (600_000 // len(line)))
            assert _send_raw(stack, fits)[0] == 250
            stack.sink.find(marker)
    time.sleep(0.5)
    assert stack.sink.count(big_marker) == 0

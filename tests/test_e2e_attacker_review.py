"""End to end through Postfix and filterd: the smaller holes of the attacker review stay closed."""

from __future__ import annotations

import math
import smtplib
import uuid

import pytest
import redis

from tests.harness.stack import Stack, make_message

pytestmark = pytest.mark.stack

SPAMMY = (
    "Dear friend,\r\nYou have been selected to receive a FREE credit card merchant account with no setup "
    "fees! Accept credit cards TODAY and increase your sales. Click here to apply now:\r\n"
    "http://www.merchant-offer.example.biz/apply\r\nTo be removed from our mailing list reply with REMOVE.\r\n"
)


def test_a_rejected_message_stores_no_bayes_signature(stack: Stack, redis_server) -> None:
    """Rejected mail is never in a mailbox: no signature key for it in Redis.  Delivered mail keeps one."""
    prefix = f"e2e-sig-{uuid.uuid4().hex[:8]}:"
    client = redis.Redis.from_url(redis_server.url)
    bayes = {"enabled": True}
    base = {"redis": {"url": redis_server.url, "key_prefix": prefix}, "checks": {"bayes": bayes}}
    rejecting = {**base, "actions": {"reject": 3.0, "add_header": math.inf}}
    with stack.configured(rejecting):
        msg, marker = make_message("Accept credit cards today", SPAMMY)
        with pytest.raises(smtplib.SMTPDataError) as refused:
            stack.send(msg)
        assert refused.value.smtp_code == 550
    assert list(client.scan_iter(f"{prefix}bayes:sig:*")) == []  # filterd stopped: its queue was sent
    with stack.configured(base):
        msg, marker = make_message("Accept credit cards today", SPAMMY)
        assert stack.send(msg) == {}
        [sig] = stack.sink.find(marker).header("X-Filterd-Signature")
    assert [k.decode() for k in client.scan_iter(f"{prefix}bayes:sig:*")] == [f"{prefix}bayes:sig:{sig}"]
    client.close()


def _without_date(msg: bytes) -> bytes:
    return b"\r\n".join(line for line in msg.split(b"\r\n") if not line.startswith(b"Date:"))


def test_recipient_allow_list_applies_only_when_every_recipient_is_on_it(stack: Stack) -> None:
    """A message scored 16 (reject at 15): to the allow-listed recipient alone it is delivered
    (16 - 20); to it and an ordinary recipient it is rejected for both, as spam to bob must be.
    A clean message to the mix reaches both, without RCPT_ALLOWED in the report."""
    allow = stack.dir / f"rcpt-allow-{uuid.uuid4().hex[:6]}"
    allow.write_text("postmaster@example.net\nabuse@example.net\n")
    config = {
        "checks": {"recipient_lists": {"allow_file": str(allow)}},
        "scores": {"MISSING_DATE": 16.0},
    }
    with stack.configured(config):
        spam, marker = make_message("to the allowed only")
        assert stack.send(_without_date(spam), rcpts=["postmaster@example.net", "abuse@example.net"]) == {}
        got = stack.sink.find(marker)
        assert sorted(got.rcpts) == ["abuse@example.net", "postmaster@example.net"]
        report = " ".join(got.header("X-Spam-Report"))
        assert "RCPT_ALLOWED" in report and "MISSING_DATE" in report

        spam, marker = make_message("to a mix")
        with pytest.raises(smtplib.SMTPDataError) as refused:
            stack.send(_without_date(spam), rcpts=["postmaster@example.net", "bob@example.net"])
        assert refused.value.smtp_code == 550

        clean, clean_marker = make_message("clean, to a mix")
        assert stack.send(clean, rcpts=["postmaster@example.net", "bob@example.net"]) == {}
        got = stack.sink.find(clean_marker)
        assert sorted(got.rcpts) == ["bob@example.net", "postmaster@example.net"]
        assert "RCPT_ALLOWED" not in " ".join(got.header("X-Spam-Report"))
    assert stack.sink.count(marker) == 0

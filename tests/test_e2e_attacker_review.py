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

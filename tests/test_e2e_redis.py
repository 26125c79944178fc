"""End to end through Postfix: greylisting, rate limits and reputation with the real redis-server,
Redis going away and coming back, two filterd instances sharing one Redis, and the HELO and sender
domain heuristics with the local DNS server."""

from __future__ import annotations

import smtplib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.dns import LocalDns
from tests.harness.redis import RedisServer
from tests.harness.stack import Stack, make_message

pytestmark = pytest.mark.stack

DELAY = 2  # seconds: greylisting's delay in these tests


def redis_config(server: RedisServer, prefix: str | None = None) -> dict[str, Any]:
    return {"url": server.url, "key_prefix": prefix or f"e2e{uuid.uuid4().hex[:8]}:"}


def greylisting(server: RedisServer, prefix: str | None = None, **greylist: Any) -> dict[str, Any]:
    settings = {"enabled": True, "delay": DELAY, "auto_allowlist": 0, "redis_retry_after": 0.0, **greylist}
    return {"redis": redis_config(server, prefix), "checks": {"greylist": settings}}


def refused(stack: Stack, msg: bytes, **kwargs: Any) -> tuple[int, str]:
    """Send a message every recipient of which is refused; return the (code, text) Postfix gave."""
    with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
        stack.send(msg, **kwargs)
    code, text = next(iter(info.value.recipients.values()))
    return code, text.decode()


def report(stack: Stack, marker: str) -> str:
    return stack.sink.find(marker).header("X-Spam-Report")[0]


def test_first_attempt_is_deferred_and_the_retry_delivered(stack: Stack, redis_server: RedisServer) -> None:
    rcpt = f"grey-{uuid.uuid4().hex[:6]}@example.net"
    with stack.configured(greylisting(redis_server)):
        msg, marker = make_message("greylisted", to=rcpt)
        code, text = refused(stack, msg, rcpts=(rcpt,))
        assert code == 451
        assert text.startswith("4.7.1 Greylisted: first delivery attempt from your mail server")
        assert f"<{rcpt}>" in text and f"a retry in {DELAY} seconds or later will be accepted" in text
        code, text = refused(stack, msg, rcpts=(rcpt,))  # too soon
        assert code == 451 and "came too soon" in text
        time.sleep(DELAY + 0.2)
        assert stack.send(msg, rcpts=(rcpt,)) == {}
        assert "GREYLIST_PASSED" in report(stack, marker)
    assert stack.sink.count(marker) == 1


def test_one_recipient_greylisted_the_known_one_delivered(stack: Stack, redis_server: RedisServer) -> None:
    known, new = f"k-{uuid.uuid4().hex[:6]}@example.net", f"n-{uuid.uuid4().hex[:6]}@example.net"
    with stack.configured(greylisting(redis_server)):
        msg, _ = make_message("warm up", to=known)
        refused(stack, msg, rcpts=(known,))
        time.sleep(DELAY + 0.2)
        msg, marker = make_message("two recipients", to=known)
        result = stack.send(msg, rcpts=(known, new))
        assert result[new][0] == 451
        assert stack.sink.find(marker).rcpts == (known,)


def test_two_filterd_instances_share_the_greylist(stack: Stack, redis_server: RedisServer) -> None:
    """A second Postfix + filterd (another MX) on the same Redis: the retry may reach either."""
    config = greylisting(redis_server)
    other = Stack(config)
    other.start()
    try:
        rcpt = f"shared-{uuid.uuid4().hex[:6]}@example.net"
        with stack.configured(config):
            msg, marker = make_message("two MX", to=rcpt)
            assert refused(stack, msg, rcpts=(rcpt,))[0] == 451
            time.sleep(DELAY + 0.2)
            assert other.send(msg, rcpts=(rcpt,)) == {}
            assert "GREYLIST_PASSED" in other.sink.find(marker).header("X-Spam-Report")[0]
    finally:
        other.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


def test_redis_down_mail_flows_and_greylisting_resumes(stack: Stack, own_redis: RedisServer) -> None:
    with stack.configured(greylisting(own_redis)):
        msg, _ = make_message("redis up")
        assert refused(stack, msg, rcpts=("first@example.net",))[0] == 451

        own_redis.stop()
        msg, marker = make_message("redis down")
        assert stack.send(msg, rcpts=("second@example.net",)) == {}  # fail-open: delivered now
        got = report(stack, marker)
        assert "GREYLIST_REDIS_ERROR greylist skipped, Redis unavailable (fail-open)" in got

        own_redis.start()  # empty again: no persistence
        msg, _ = make_message("redis back")
        code, text = refused(stack, msg, rcpts=("third@example.net",))
        assert code == 451 and "Greylisted" in text


def test_redis_down_fail_closed_tempfails(stack: Stack, own_redis: RedisServer) -> None:
    with stack.configured(greylisting(own_redis, on_error="closed")):
        own_redis.stop()
        msg, marker = make_message("fail closed")
        code, text = refused(stack, msg)
        assert code == 451 and text.startswith("4.3.0")
        own_redis.start()
        msg, _ = make_message("fail closed, back")
        code, text = refused(stack, msg, rcpts=("back@example.net",))
        assert "Greylisted" in text
    assert stack.sink.count(marker) == 0


def test_rate_limit_takes_one_token_per_recipient(stack: Stack, redis_server: RedisServer) -> None:
    """A burst of 3: one message to 5 recipients is delivered to the first 3 and the other 2 are
    told to retry (451 at RCPT); the next message finds the bucket empty."""
    limits = {"enabled": True, "ip_rate": 1.0, "ip_burst": 3, "exempt_networks": []}
    rcpts = [f"r{i}@example.net" for i in range(5)]
    with stack.configured({"redis": redis_config(redis_server), "checks": {"ratelimit": limits}}):
        msg, marker = make_message("five recipients")
        refusals = stack.send(msg, rcpts=rcpts)
        assert stack.sink.find(marker).rcpts == tuple(rcpts[:3])
        assert sorted(refusals) == rcpts[3:]
        for code, text in refusals.values():
            assert code == 451
            assert text.decode().startswith(
                "4.7.1 Too many recipients from [127.0.0.1]: limit 1 per minute; please retry in"
            )
        msg, marker = make_message("over the limit")
        code, text = refused(stack, msg)
    assert code == 451 and "Too many recipients" in text
    assert stack.sink.count(marker) == 0


def test_reputation_moves_the_score_after_ham_and_spam(stack: Stack, redis_server: RedisServer) -> None:
    tag = uuid.uuid4().hex[:6]
    good, bad = f"good-{tag}.example", f"bad-{tag}.example"
    config = {
        "redis": redis_config(redis_server),
        "checks": {"reputation": {"enabled": True, "min_messages": 3}},
        "scores": {"MISSING_DATE": 6.0},
    }
    with stack.configured(config):
        for i in range(3):
            stack.send(make_message(f"ham {i}")[0], mail_from=f"news@{good}", helo=f"mx.{good}")
            spam, _ = make_message(f"spam {i}")
            spam = b"\r\n".join(line for line in spam.split(b"\r\n") if not line.startswith(b"Date:"))
            stack.send(spam, mail_from=f"win@{bad}", helo=f"host.{bad}")  # MISSING_DATE: spam
        msg, marker = make_message("from the good one")
        stack.send(msg, mail_from=f"news@{good}", helo=f"mx.{good}")
        good_report = report(stack, marker)
        msg, marker = make_message("from the bad one")
        stack.send(msg, mail_from=f"win@{bad}", helo=f"host.{bad}")
        bad_got = stack.sink.find(marker)
    assert f"REP_FROM_GOOD from {good}: 3 ham, 0 spam" in good_report
    assert f"REP_HELO_GOOD helo {good}: 3 ham, 0 spam" in good_report
    bad_report = bad_got.header("X-Spam-Report")[0]
    assert f"REP_FROM_BAD from {bad}: 0 ham, 3 spam" in bad_report
    assert f"REP_HELO_BAD helo {bad}: 0 ham, 3 spam" in bad_report
    assert float(bad_got.header("X-Spam-Score")[0]) > 1.0  # a clean message, scored on history


def test_helo_and_sender_domain_heuristics(stack: Stack, local_dns: LocalDns) -> None:
    tag = uuid.uuid4().hex[:6]
    local_dns.add(f"has-mx-{tag}.example. 300 IN MX 10 mx.has-mx-{tag}.example.")
    config = {
        "dns": {"nameservers": ["127.0.0.1"], "port": local_dns.port, "timeout": 0.5, "attempts": 1},
        "checks": {"helo": {"enabled": True}, "sender_dns": {"enabled": True}},
    }
    with stack.configured(config):
        msg, marker = make_message("bad helo, no MX")
        stack.send(msg, mail_from=f"a@no-mx-{tag}.example", helo="localhost")
        got = report(stack, marker)
        msg, marker = make_message("good")
        stack.send(msg, mail_from=f"a@has-mx-{tag}.example", helo=f"mail.has-mx-{tag}.example")
        clean = report(stack, marker)
    assert "HELO_NOT_FQDN HELO 'localhost' is not a fully qualified host name" in got
    assert f"SENDER_DOMAIN_NO_MX_A sender domain no-mx-{tag}.example has no MX, A or AAAA record" in got
    assert "HELO_" not in clean and "SENDER_" not in clean

"""Greylisting against the real redis-server: postgrey's behaviour, shared by several filterd instances."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from filterd.replies import TempFail
from filterd.results import Action
from filterd.settings import ConfigError
from tests.redis_state.conftest import Clock, build, check_of, deliver, keys_with_ttl, symbols

FAST = {"greylist": {"delay": 300, "auto_allowlist": 0}, "reputation": {"enabled": False}}


def reply_of(verdict: Any) -> str:
    assert isinstance(verdict.decision, TempFail)
    return str(verdict.decision.reply)


def test_first_attempt_is_deferred_and_a_retry_after_the_delay_passes(
    redis_server: Any, prefix: str, clock: Clock, rclient: Any
) -> None:
    p = build(redis_server.url, prefix, FAST, clock)
    _, first = deliver(p)
    assert first.action is Action.TEMPFAIL
    text = reply_of(first)
    assert text.startswith("451 4.7.1 Greylisted:")
    assert "<bob@ours.test>" in text and "5 minutes" in text

    clock.advance(100)
    _, early = deliver(p)
    assert early.action is Action.TEMPFAIL
    assert "too soon" in reply_of(early) and "3 minutes" in reply_of(early)

    clock.advance(201)
    _, retry = deliver(p)
    assert retry.action is Action.ACCEPT
    assert "GREYLIST_PASSED" in symbols(retry)
    assert "after 5 minutes" in next(s.reason for s in retry.symbols if s.name == "GREYLIST_PASSED")

    clock.advance(20 * 86400)  # a passed triplet is remembered, and refreshed on use
    _, later = deliver(p)
    assert later.action is Action.ACCEPT and "GREYLIST_KNOWN" in symbols(later)

    ttls = keys_with_ttl(rclient, prefix)
    greylist = {k: t for k, t in ttls.items() if ":gl:" in k}
    assert len(greylist) == 2  # the triplet and the network counter
    assert all(0 < ttl <= 35 * 86400 for ttl in ttls.values()), ttls  # every key expires
    p.close()


def test_retry_from_the_same_network_passes_and_from_another_does_not(
    redis_server: Any, prefix: str, clock: Clock
) -> None:
    p = build(redis_server.url, prefix, FAST, clock)
    assert deliver(p, client="192.0.2.10")[1].action is Action.TEMPFAIL
    clock.advance(301)
    assert deliver(p, client="192.0.2.77")[1].action is Action.ACCEPT  # same /24: a sender's pool
    assert deliver(p, client="198.51.100.1")[1].action is Action.TEMPFAIL
    # the sender's VERP/extension details do not make a new triplet
    assert deliver(p, sender="alice+bounce-1234@sender.test")[1].action is Action.ACCEPT
    # a new recipient is a new triplet
    assert deliver(p, rcpts=("carol@ours.test",))[1].action is Action.TEMPFAIL
    p.close()


def test_a_retry_after_the_window_starts_over(redis_server: Any, prefix: str, clock: Clock) -> None:
    p = build(redis_server.url, prefix, FAST, clock)
    assert deliver(p)[1].action is Action.TEMPFAIL
    clock.advance(2 * 86400 + 1)
    _, late = deliver(p)
    assert late.action is Action.TEMPFAIL and "first delivery attempt" in reply_of(late)
    p.close()


def test_real_time_delay(redis_server: Any, prefix: str) -> None:
    """No injected clock: one second of delay with the real one."""
    p = build(redis_server.url, prefix, {"greylist": {"delay": 1, "auto_allowlist": 0}})
    assert deliver(p)[1].action is Action.TEMPFAIL
    assert deliver(p)[1].action is Action.TEMPFAIL
    time.sleep(1.1)
    assert deliver(p)[1].action is Action.ACCEPT
    p.close()


def test_auto_allowlist_after_n_passes(redis_server: Any, prefix: str, clock: Clock) -> None:
    p = build(
        redis_server.url,
        prefix,
        {
            "greylist": {"auto_allowlist": 3, "allowlist_count_interval": 3600},
            "reputation": {"enabled": False},
        },
        clock,
    )
    for i in range(3):
        rcpt = (f"user{i}@ours.test",)
        assert deliver(p, rcpts=rcpt)[1].action is Action.TEMPFAIL
        clock.advance(301)
        assert deliver(p, rcpts=rcpt)[1].action is Action.ACCEPT
        # a pass counts once an hour at most: this second use within the hour adds nothing
        assert deliver(p, rcpts=rcpt)[1].action is Action.ACCEPT
        clock.advance(3600)
    _, new = deliver(p, client="192.0.2.200", sender="someone@else.test", rcpts=("new@ours.test",))
    assert new.action is Action.ACCEPT
    reason = next(s.reason for s in new.symbols if s.name == "GREYLIST_ALLOWLISTED")
    assert "192.0.2.0/24 passed greylisting 3 times" in reason
    # another network is still greylisted
    assert deliver(p, client="203.0.113.9", rcpts=("new@ours.test",))[1].action is Action.TEMPFAIL
    p.close()


def test_allow_lists_from_files(redis_server: Any, prefix: str, clock: Clock, tmp_path: Path) -> None:
    clients = tmp_path / "clients"
    clients.write_text("# our partners\n198.51.100.0/24  # partner MX pool\n")
    senders = tmp_path / "senders"
    senders.write_text("bigsender.test\n")
    rcpts = tmp_path / "rcpts"
    rcpts.write_text("# they asked for no delays\npostmaster@ours.test\n")
    p = build(
        redis_server.url,
        prefix,
        {
            "greylist": {
                "client_allow_file": str(clients),
                "sender_allow_file": str(senders),
                "recipient_allow_file": str(rcpts),
            },
            "reputation": {"enabled": False},
        },
        clock,
    )
    for kwargs, why in [
        ({"client": "198.51.100.9"}, "client 198.51.100.9 in greylist allow list (198.51.100.0/24)"),
        ({"sender": "news@bigsender.test"}, "sender <news@bigsender.test> in greylist allow list"),
        ({"rcpts": ("postmaster@ours.test",)}, "recipient <postmaster@ours.test> in greylist allow list"),
    ]:
        _, v = deliver(p, **kwargs)
        assert v.action is Action.ACCEPT, kwargs
        assert next(s.reason for s in v.symbols if s.name == "GREYLIST_SKIPPED").startswith(why)
    assert deliver(p)[1].action is Action.TEMPFAIL
    p.close()


def test_bad_allow_list_line_is_a_config_error(redis_server: Any, prefix: str, tmp_path: Path) -> None:
    bad = tmp_path / "clients"
    bad.write_text("192.0.2.0/24\nnot-a-network\n")
    with pytest.raises(ConfigError, match=r"clients:2: 'not-a-network' is not an IP address"):
        build(redis_server.url, prefix, {"greylist": {"client_allow_file": str(bad)}})


def test_config_errors(redis_server: Any, prefix: str) -> None:
    with pytest.raises(ConfigError, match="delay: 600 must be shorter than retry_window"):
        build(redis_server.url, prefix, {"greylist": {"delay": 600, "retry_window": 300}})
    with pytest.raises(ConfigError, match="mode"):
        build(redis_server.url, prefix, {"greylist": {"mode": "later"}})


def test_outbound_mail_is_not_greylisted(redis_server: Any, prefix: str, clock: Clock) -> None:
    p = build(redis_server.url, prefix, FAST, clock)
    _, v = deliver(p, auth_user="alice")
    assert v.action is Action.ACCEPT
    p.close()


def test_two_instances_share_the_greylist(redis_server: Any, prefix: str, clock: Clock) -> None:
    """Two pipelines with their own clients (two filterd hosts) on one Redis."""
    mx1 = build(redis_server.url, prefix, FAST, clock)
    mx2 = build(redis_server.url, prefix, FAST, clock)
    assert mx1.services is not mx2.services
    assert deliver(mx1)[1].action is Action.TEMPFAIL
    clock.advance(301)
    _, v = deliver(mx2)  # the retry reaches the other MX
    assert v.action is Action.ACCEPT and "GREYLIST_PASSED" in symbols(v)
    mx1.close()
    mx2.close()


def test_trusted_client_reputation_skips_greylisting(redis_server: Any, prefix: str, clock: Clock) -> None:
    p = build(
        redis_server.url,
        prefix,
        {"greylist": {"auto_allowlist": 0}, "reputation": {"min_messages": 3}},
        clock,
    )
    # build a good history for the client: three messages that passed and were ham
    for i in range(3):
        rcpt = (f"u{i}@ours.test",)
        deliver(p, rcpts=rcpt)  # greylisted: not counted
        clock.advance(301)
        assert deliver(p, rcpts=rcpt)[1].action is Action.ACCEPT
    _, v = deliver(p, rcpts=("brand-new@ours.test",))
    assert v.action is Action.ACCEPT
    assert "REP_CLIENT_TRUSTED" in symbols(v)
    assert "client reputation is TRUSTED" in next(s.reason for s in v.symbols if s.name == "GREYLIST_SKIPPED")
    p.close()


def test_trusted_spf_domain_skips_greylisting_from_any_address(
    redis_server: Any, prefix: str, clock: Clock
) -> None:
    """A large sender retrying from many addresses: its SPF-pass domain's reputation lets it through."""
    p = build(
        redis_server.url,
        prefix,
        {"greylist": {"auto_allowlist": 0}, "reputation": {"min_messages": 3}},
        clock,
    )
    for i in range(3):  # ham from three different networks, SPF-authenticated
        client, rcpt = f"203.0.{113 + i}.5", (f"u{i}@ours.test",)
        deliver(p, client=client, rcpts=rcpt, spf=("bigmail.test",))
        clock.advance(301)
        assert deliver(p, client=client, rcpts=rcpt, spf=("bigmail.test",))[1].action is Action.ACCEPT
    _, v = deliver(p, client="100.64.1.1", rcpts=("x@ours.test",), spf=("bigmail.test",))
    assert v.action is Action.ACCEPT
    assert "REP_AUTH_TRUSTED" in symbols(v)
    # the same domain claimed without SPF pass gets no such pass
    assert deliver(p, client="100.64.2.1", rcpts=("y@ours.test",))[1].action is Action.TEMPFAIL
    p.close()


def test_content_mode_greylists_only_in_the_score_band(redis_server: Any, prefix: str, clock: Clock) -> None:
    checks = {
        "greylist": {"mode": "content", "content_min_score": 2.0, "auto_allowlist": 0},
        "reputation": {"enabled": False},
        "header_sanity": {"enabled": True},
    }
    p = build(redis_server.url, prefix, checks, clock, scores={"MISSING_DATE": 3.0})
    assert check_of(p, "greylist").stage.label == "eom"
    _, clean = deliver(p)  # score 0: below the band
    assert clean.action is Action.ACCEPT and "GREYLIST_PASSED" not in symbols(clean)

    undated = b"From: a@sender.test\r\nMessage-ID: <1@sender.test>\r\nSubject: x\r\n\r\nbody\r\n"
    rcpts = ("b@ours.test", "a@ours.test")
    _, first = deliver(p, raw=undated, rcpts=rcpts)
    assert first.action is Action.TEMPFAIL
    assert "2 recipient(s)" in reply_of(first)
    assert "score 3.0 in greylist band [2, 15)" in first.decision.reason  # type: ignore[union-attr]
    clock.advance(301)
    _, retry = deliver(p, raw=undated, rcpts=tuple(reversed(rcpts)))  # same set, other order
    assert retry.action is Action.ACCEPT and "GREYLIST_PASSED" in symbols(retry)
    p.close()


def test_ipv6_clients_are_grouped_by_64(redis_server: Any, prefix: str, clock: Clock) -> None:
    p = build(redis_server.url, prefix, FAST, clock)
    assert deliver(p, client="2001:db8:1:2::25")[1].action is Action.TEMPFAIL
    clock.advance(301)
    assert deliver(p, client="2001:db8:1:2:a::99")[1].action is Action.ACCEPT  # same /64
    assert deliver(p, client="2001:db8:1:3::25")[1].action is Action.TEMPFAIL  # another /64
    p.close()

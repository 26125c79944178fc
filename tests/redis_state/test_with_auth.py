"""Reputation and greylisting with the real SPF check (local DNS): the authenticated domain's
history lets a big sender through from a network greylisting has never seen."""

from __future__ import annotations

import uuid
from typing import Any

from filterd.results import Action
from tests.harness.dns import LocalDns
from tests.redis_state.conftest import Clock, build, deliver, symbols


def test_spf_pass_domain_with_good_history_skips_greylisting(
    redis_server: Any, local_dns: LocalDns, prefix: str, clock: Clock
) -> None:
    domain = f"bigmail-{uuid.uuid4().hex[:6]}.test"
    local_dns.add(f'{domain}. 300 IN TXT "v=spf1 ip4:203.0.113.0/24 ip4:198.51.100.0/24 -all"')
    dns = {"nameservers": ["127.0.0.1"], "port": local_dns.port, "timeout": 0.5, "attempts": 1}
    checks = {
        "spf": {"enabled": True},
        "greylist": {"auto_allowlist": 0, "skip_trusted_clients": False},
        "reputation": {"min_messages": 3},
    }
    p = build(redis_server.url, prefix, checks, clock, dns=dns)
    sender = f"news@{domain}"
    for i in range(3):  # three messages that passed greylisting from the first network: ham
        rcpt = (f"u{i}@ours.test",)
        assert deliver(p, client="203.0.113.5", sender=sender, rcpts=rcpt)[1].action is Action.TEMPFAIL
        clock.advance(301)
        _, v = deliver(p, client="203.0.113.5", sender=sender, rcpts=rcpt)
        assert v.action is Action.ACCEPT and "SPF_PASS" in symbols(v)

    _, v = deliver(p, client="198.51.100.7", sender=sender, rcpts=("new@ours.test",))
    assert v.action is Action.ACCEPT
    s = symbols(v)
    assert "REP_AUTH_TRUSTED" in s and s["REP_AUTH_GOOD"] < 0
    assert next(x.reason for x in v.symbols if x.name == "REP_AUTH_GOOD").startswith(f"auth {domain}: 3 ham")
    assert "authenticated domain reputation is TRUSTED" in next(
        x.reason for x in v.symbols if x.name == "GREYLIST_SKIPPED"
    )
    # the same domain, forged from a network outside its SPF record: SPF fails (rejected by default)
    _, forged = deliver(p, client="192.0.2.66", sender=sender, rcpts=("new2@ours.test",))
    assert forged.action is Action.REJECT and "REP_AUTH_TRUSTED" not in symbols(forged)
    p.close()

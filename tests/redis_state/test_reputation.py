"""Reputation against the real redis-server: verdicts move the score, corrections move the counts."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner

from filterd.check import AddHeader, Check, CheckSettings, Output, Stage
from filterd.cli.filterctl import cli
from filterd.keys import Keys
from filterd.pipeline import Pipeline, context_for
from filterd.reputation import Entity, ReputationSettings, ReputationStore, category_of, retrain
from filterd.results import Action, Symbol, Verdict
from filterd.transaction import Transaction
from tests.redis_state.conftest import Clock, build, deliver, keys_with_ttl, message, symbols

NO_GREYLIST = {"greylist": {"enabled": False}, "reputation": {"min_messages": 4}}
SPAMMY = {"header_sanity": {"enabled": True}}  # with MISSING_DATE scored past the spam threshold
UNDATED = b"From: a@spam.test\r\nMessage-ID: <%s@spam.test>\r\nSubject: win\r\n\r\nbuy now\r\n"


def test_ham_verdicts_lower_the_score_and_spam_verdicts_raise_it(
    redis_server: Any, prefix: str, clock: Clock
) -> None:
    p = build(redis_server.url, prefix, {**NO_GREYLIST, **SPAMMY}, clock, scores={"MISSING_DATE": 6.0})
    good = {"client": "192.0.2.10", "sender": "alice@good.test", "helo": "mx1.good.test"}
    bad = {"client": "198.51.100.66", "sender": "x@spam.test", "helo": "host.spam.test"}

    _, before = deliver(p, learn=False, **good)
    assert before.score == 0.0 and not any(s.startswith("REP_") for s in symbols(before))

    for _ in range(4):
        assert deliver(p, **good)[1].action is Action.ACCEPT  # counted as ham
        _, v = deliver(p, raw=UNDATED.replace(b"%s", b"1"), **bad)  # counted as spam
        assert v.is_spam

    _, after_good = deliver(p, learn=False, **good)
    s = symbols(after_good)
    assert s["REP_IP_GOOD"] < 0 and s["REP_NET_GOOD"] < 0 and s["REP_HELO_GOOD"] < 0
    assert "REP_CLIENT_TRUSTED" in s
    assert after_good.score < 0
    reason = next(x.reason for x in after_good.symbols if x.name == "REP_IP_GOOD")
    assert reason == "ip 192.0.2.10: 4 ham, 0 spam, 0 virus, 0 rejected in 30 days"

    _, after_bad = deliver(p, learn=False, raw=message(), **bad)
    s = symbols(after_bad)
    assert s["REP_IP_BAD"] > 2.0 and s["REP_FROM_BAD"] > 0 and s["REP_HELO_BAD"] > 0
    assert after_bad.score > 5.0  # a clean-looking message from a known spam source is now spam
    p.close()


def test_not_enough_evidence_scores_nothing(redis_server: Any, prefix: str, clock: Clock) -> None:
    p = build(redis_server.url, prefix, NO_GREYLIST, clock)
    for _ in range(3):
        deliver(p)
    _, v = deliver(p, learn=False)
    assert not any(s.startswith("REP_") for s in symbols(v))
    deliver(p)
    _, v = deliver(p, learn=False)
    assert "REP_IP_GOOD" in symbols(v)
    p.close()


def test_counts_age_out_of_the_window(redis_server: Any, prefix: str, clock: Clock, rclient: Any) -> None:
    p = build(
        redis_server.url, prefix, {**NO_GREYLIST, "reputation": {"min_messages": 2, "window_days": 3}}, clock
    )
    deliver(p)
    deliver(p)
    assert "REP_IP_GOOD" in symbols(deliver(p, learn=False)[1])
    clock.advance(3 * 86400)
    assert "REP_IP_GOOD" not in symbols(deliver(p, learn=False)[1])
    deliver(p)  # the update prunes the old buckets
    key = Keys(prefix).reputation("ip", "192.0.2.10")
    fields = {f.decode() for f in rclient.hkeys(key)}
    assert fields == {"id", f"{int(clock.now // 86400)}:ham"}
    assert 0 < rclient.ttl(key) <= 3 * 86400
    p.close()


def test_forged_sender_domain_does_not_spoil_the_authenticated_domain(
    redis_server: Any, prefix: str, clock: Clock
) -> None:
    p = build(redis_server.url, prefix, {**NO_GREYLIST, **SPAMMY}, clock, scores={"MISSING_DATE": 6.0})
    for i in range(4):  # real mail from bank.test: SPF and DKIM pass
        deliver(p, client=f"203.0.113.{i}", sender="news@bank.test", spf=("bank.test",), dkim=("bank.test",))
    for i in range(6):  # spam claiming bank.test from elsewhere, not authenticated
        deliver(
            p, client=f"100.64.0.{i}", sender="alert@bank.test", raw=UNDATED.replace(b"%s", str(i).encode())
        )
    _, forged = deliver(p, client="100.64.9.9", sender="alert@bank.test", learn=False)
    assert "REP_FROM_BAD" in symbols(forged)  # the claim has a bad name now...
    _, real = deliver(p, client="203.0.113.50", sender="news@bank.test", spf=("bank.test",), learn=False)
    s = symbols(real)
    assert s["REP_AUTH_GOOD"] == -2.0 and "REP_AUTH_TRUSTED" in s  # ...the authenticated domain does not
    reason = next(x.reason for x in real.symbols if x.name == "REP_AUTH_GOOD")
    assert reason.startswith("auth bank.test: 4 ham, 0 spam")
    # a DKIM-only pass is scored at end of message by reputation_auth
    _, dkim_only = deliver(p, client="192.0.2.99", sender="x@other.test", dkim=("bank.test",), learn=False)
    assert symbols(dkim_only)["REP_AUTH_GOOD"] == -2.0  # 4 ham: 2.5 x (0.5 - 0.5/5) x 2
    p.close()


def test_train_correction_moves_the_count(redis_server: Any, prefix: str, clock: Clock) -> None:
    p = build(redis_server.url, prefix, {**NO_GREYLIST, "reputation": {"min_messages": 1}}, clock)
    raw = message("corrected-1")
    deliver(p, raw=raw)  # counted as ham
    store = ReputationStore(p.services.redis, Keys(prefix), ReputationSettings(min_messages=1))
    entity = Entity("ip", "192.0.2.10")
    assert store.read([entity], clock.now)[0].ham == 1
    assert store.retrain("<corrected-1@sender.test>", "spam") == "moved"
    counts = store.read([entity], clock.now)[0]
    assert (counts.ham, counts.spam) == (0, 1)
    assert store.retrain("<corrected-1@sender.test>", "spam") == "unchanged"  # idempotent
    assert store.retrain("<never-seen@sender.test>", "spam") == "unknown"
    _, v = deliver(p, learn=False)
    assert "REP_IP_BAD" in symbols(v)
    p.close()


def test_tempfailed_messages_are_not_counted(
    redis_server: Any, prefix: str, clock: Clock, rclient: Any
) -> None:
    p = build(redis_server.url, prefix, {"greylist": {"auto_allowlist": 0}}, clock)
    _, v = deliver(p)
    assert v.action is Action.TEMPFAIL
    assert not [k for k in keys_with_ttl(rclient, prefix) if ":rep:" in k]
    p.close()


def test_filterctl_reputation_show_and_reset(
    redis_server: Any, prefix: str, clock: Clock, tmp_path: Any
) -> None:
    p = build(redis_server.url, prefix, NO_GREYLIST)
    for _ in range(2):
        deliver(p, client="192.0.2.44", sender="a@shown.test")
    p.close()
    cfg = tmp_path / "filterd.toml"
    cfg.write_text(f'[redis]\nurl = "{redis_server.url}"\nkey_prefix = "{prefix}"\n')
    runner = CliRunner()
    out = runner.invoke(cli, ["--config", str(cfg), "reputation", "show", "192.0.2.44"])
    assert out.exit_code == 0, out.output
    assert "ip" in out.output and "192.0.2.44" in out.output and "192.0.2.0/24" in out.output
    line = next(x for x in out.output.splitlines() if x.startswith("ip "))
    assert line.split()[2:6] == ["2", "0", "0", "0"]

    out = runner.invoke(cli, ["--config", str(cfg), "reputation", "show", "shown.test"])
    assert out.exit_code == 0, out.output
    assert next(x for x in out.output.splitlines() if x.startswith("from ")).split()[2] == "2"

    out = runner.invoke(cli, ["--config", str(cfg), "reputation", "reset", "192.0.2.44"])
    assert out.exit_code == 0 and "deleted 2 record(s)" in out.output  # the IP and its network, out.output
    out = runner.invoke(cli, ["--config", str(cfg), "reputation", "show", "192.0.2.44"])
    assert next(x for x in out.output.splitlines() if x.startswith("ip ")).split()[2] == "0"

    out = runner.invoke(cli, ["--config", str(cfg), "reputation", "show", "not a thing!"])
    assert out.exit_code == 2 and "not an IP address or a domain" in out.output


def test_reputation_is_skipped_for_outbound(redis_server: Any, prefix: str, clock: Clock) -> None:
    p = build(redis_server.url, prefix, NO_GREYLIST, clock)
    tx, _ = deliver(p, auth_user="alice")
    assert tx.direction.value == "outbound"
    store = ReputationStore(p.services.redis, Keys(prefix), ReputationSettings())
    assert store.read([Entity("ip", "192.0.2.10")], clock.now)[0].total == 0
    p.close()


class SignatureStub(Check):
    """Stands in for the bayes check, which adds an X-Filterd-Signature id to each message."""

    name = "signature_stub"
    stage = Stage.EOM
    symbols: dict[str, float] = {}

    def run(self, tx: Transaction) -> list[Output]:
        return [AddHeader("X-Filterd-Signature", "sig-abc123")]


def test_train_by_signature_or_message_id_moves_the_count_once(
    redis_server: Any, prefix: str, clock: Clock
) -> None:
    p = build(redis_server.url, prefix, {**NO_GREYLIST, "reputation": {"min_messages": 1}}, clock)
    p = Pipeline(
        p.config,
        [*p.checks, SignatureStub(context_for(p.config, "signature_stub", p.services, CheckSettings()))],
        p.services,
    )
    deliver(p, raw=message("signed-1"))  # ham
    client = p.services.redis
    assert retrain(p.config, "spam", signature="sig-abc123", client=client) == "moved"
    # the same correction by the other id changes nothing more
    assert retrain(p.config, "spam", message_id="<signed-1@sender.test>", client=client) == "unchanged"
    store = ReputationStore(client, Keys(prefix), ReputationSettings())
    counts = store.read([Entity("ip", "192.0.2.10")], clock.now)[0]
    assert (counts.ham, counts.spam) == (0, 1)
    assert retrain(p.config, "ham", message_id="<signed-1@sender.test>", client=client) == "moved"
    counts = store.read([Entity("ip", "192.0.2.10")], clock.now)[0]
    assert (counts.ham, counts.spam) == (1, 0)
    assert retrain(p.config, "spam", signature="unknown-sig", client=client) == "unknown"
    p.close()


@pytest.mark.parametrize(
    ("action", "score", "symbol", "expected"),
    [
        (Action.ACCEPT, 0.0, "X", "ham"),
        (Action.ADD_HEADER, 6.0, "X", "spam"),
        (Action.QUARANTINE, 2.0, "X", "spam"),
        (Action.REJECT, 20.0, "X", "rejected"),
        (Action.DISCARD, 0.0, "CLAM_VIRUS", "virus"),
        (Action.REJECT, 20.0, "CLAM_VIRUS", "virus"),
        (Action.TEMPFAIL, 0.0, "X", None),
        (Action.GREYLIST, 6.0, "X", None),
    ],
)
def test_category_of_a_verdict(action: Action, score: float, symbol: str, expected: str | None) -> None:
    verdict = Verdict(score=score, required=5.0, action=action, symbols=[Symbol(symbol, score, "r")])
    assert category_of(verdict, ReputationSettings()) == expected


def test_filterctl_reputation_without_redis_says_so(tmp_path: Any) -> None:
    from tests.harness.net import free_port

    cfg = tmp_path / "filterd.toml"
    cfg.write_text(f'[redis]\nurl = "redis://127.0.0.1:{free_port()}/0"\n')
    out = CliRunner().invoke(cli, ["--config", str(cfg), "reputation", "show", "192.0.2.1"])
    assert out.exit_code == 1
    assert "cannot reach Redis at redis://127.0.0.1:" in out.output and "ConnectionError" in out.output

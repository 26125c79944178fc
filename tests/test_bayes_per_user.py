"""Per-user Bayes dictionaries layered on the global model ([checks.bayes] per_user), against a real
redis-server: training them (filterctl train --user, the learn worker), and scoring with them."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from click.testing import CliRunner

from filterd.bayes.model import Model, message_digest
from filterd.bayes.peruser import UserDictionaries, single_user
from filterd.cli.filterctl import cli
from filterd.combination import spamicity_of
from filterd.config import load_config, parse_config
from filterd.driver import SmtpContext, scan
from filterd.learnclient import RedisTarget, submit
from filterd.learner import Learner
from filterd.message import Message
from filterd.pipeline import Pipeline
from filterd.results import Action
from tests.bayes_helpers import ham_message, make_message, only_bayes, spam_message, trained_model
from tests.harness.net import free_port

ALICE, BOB = "alice@example.net", "bob@example.net"


def zorblax_spam(i: int) -> bytes:
    """Spam only alice sees: the global model never saw its words."""
    return make_message(
        f"zorblax offer {i}",
        f"zorblax quintessa blorvane {i} meeting agenda",
        message_id=f"<z{i}@example.com>",
    )


def probe() -> bytes:
    """A ham word, plus alice's spam words: the global model calls it ham."""
    return make_message("zorblax news", "meeting zorblax quintessa blorvane", message_id="<p@example.com>")


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "bayes.npz"
    trained_model(30).save(path)
    return path


@pytest.fixture
def prefix() -> str:
    return f"pu-{uuid.uuid4().hex[:8]}:"


@pytest.fixture
def client(redis_server) -> redis.Redis:
    return redis.Redis.from_url(redis_server.url)


def pipeline_for(url: str, prefix: str, model: Path, **bayes: Any) -> Pipeline:
    settings = {"model": str(model), "storage": "file", "signature": False, "per_user": True, **bayes}
    return Pipeline.from_config(
        parse_config(
            {"redis": {"url": url, "key_prefix": prefix, "timeout": 0.3}, "checks": only_bayes(settings)}
        )
    )


def score(pipeline: Pipeline, raw: bytes, *rcpts: str) -> tuple[float, str, Action]:
    tx, verdict = scan(pipeline, raw, SmtpContext(mail_from="x@example.com", rcpts=rcpts))
    value = spamicity_of(tx.findings)
    assert value is not None
    reason = next(s.reason for s in verdict.symbols if s.name in ("BAYES_SPAM", "BAYES_UNSURE", "BAYES_HAM"))
    return value, reason, verdict.action


def train_user(client: redis.Redis, prefix: str, user: str, n_spam: int, n_ham: int) -> None:
    """alice's mail: zorblax spam, and ham like everyone's."""
    model = Model.empty()
    users = UserDictionaries(client, prefix, 3600, 2000)
    items: list[tuple[str, bytes, np.ndarray, str | None]] = []
    for raw, label in [(zorblax_spam(i), "spam") for i in range(n_spam)] + [
        (ham_message(100 + i), "ham") for i in range(n_ham)
    ]:
        msg = Message(raw)
        items.append((user, message_digest(msg), model.features(msg)[1], label))
    users.train(items)


def test_a_users_own_spam_scores_higher_for_that_user(redis_server, client, prefix, model_file) -> None:
    train_user(client, prefix, ALICE, 10, 10)
    pipeline = pipeline_for(redis_server.url, prefix, model_file)
    for_alice, reason, _ = score(pipeline, probe(), f"<{ALICE.upper()}>")  # the same user, however written
    for_bob, bob_reason, _ = score(pipeline, probe(), BOB)
    assert for_bob < 0.2  # the global model alone: ham words
    assert for_alice > 0.9 and for_alice > for_bob
    assert f"with {ALICE}'s dictionary (10 spam, 10 ham, weight 10)" in reason
    assert "dictionary" not in bob_reason
    # both recipients the same user: still alice's dictionary
    assert score(pipeline, probe(), ALICE, f"<{ALICE}>")[0] == pytest.approx(for_alice)
    pipeline.close()


def test_too_little_training_means_the_global_model_alone(redis_server, client, prefix, model_file) -> None:
    train_user(client, prefix, ALICE, 10, 9)  # one ham short of min_user_learned
    pipeline = pipeline_for(redis_server.url, prefix, model_file)
    for_alice, reason, _ = score(pipeline, probe(), ALICE)
    assert for_alice == pytest.approx(score(pipeline, probe(), BOB)[0])
    assert "dictionary" not in reason
    train_user(client, prefix, ALICE, 10, 10)  # the tenth ham: the next look-up uses the dictionary
    assert "dictionary" not in score(pipeline, probe(), ALICE)[1]  # not looked up again for a while
    pipeline.checks[-1]._untrained_users.clear()  # as UNTRAINED_RECHECK seconds later
    assert "dictionary" in score(pipeline, probe(), ALICE)[1]
    pipeline.close()
    lower = pipeline_for(redis_server.url, prefix, model_file, min_user_learned=9)
    assert score(lower, probe(), ALICE)[0] > 0.9
    lower.close()


def test_several_users_mean_the_global_model_alone(redis_server, client, prefix, model_file) -> None:
    train_user(client, prefix, ALICE, 10, 10)
    pipeline = pipeline_for(redis_server.url, prefix, model_file)
    both, reason, _ = score(pipeline, probe(), ALICE, BOB)
    assert both == pytest.approx(score(pipeline, probe(), BOB)[0]) and both < 0.2
    assert "dictionary" not in reason
    pipeline.close()
    assert single_user([ALICE, BOB]) is None and single_user([]) is None
    assert single_user(["<Alice@EXAMPLE.net>", ALICE]) == ALICE


def test_per_user_off_by_default_ignores_dictionaries(redis_server, client, prefix, model_file) -> None:
    train_user(client, prefix, ALICE, 10, 10)
    pipeline = pipeline_for(redis_server.url, prefix, model_file, per_user=False)
    assert score(pipeline, probe(), ALICE)[0] < 0.2
    pipeline.close()


def test_user_training_is_idempotent_moves_and_unlearns(client, prefix) -> None:
    model = Model.empty()
    users = UserDictionaries(client, prefix, 3600, 2000)
    msg = Message(zorblax_spam(1))
    digest, buckets = message_digest(msg), model.features(msg)[1]
    [first] = users.train([(ALICE, digest, buckets, "spam")])
    [again] = users.train([(ALICE, digest, buckets, "spam")])
    assert first is not None and first.changed and again is not None and not again.changed
    counts = users.lookup(ALICE, buckets)
    assert (counts.nspam, counts.nham) == (1, 0) and (counts.spam == 1).all() and (counts.ham == 0).all()
    [moved] = users.train([(ALICE, digest, buckets, "ham")])
    assert moved is not None and (moved.before, moved.after) == ("spam", "ham")
    counts = users.lookup(ALICE, buckets)
    assert (counts.nspam, counts.nham) == (0, 1) and (counts.spam == 0).all() and (counts.ham == 1).all()
    users.train([(ALICE, digest, buckets, None)])  # unlearned: nothing left but the totals
    assert set(client.hkeys(users.key(ALICE))) == {b"nspam", b"nham"}
    assert 0 < client.ttl(users.key(ALICE)) <= 3600


def test_a_full_dictionary_takes_no_new_message(client, prefix) -> None:
    model = Model.empty()
    users = UserDictionaries(client, prefix, 3600, max_messages=2)
    items = []
    for i in range(3):
        msg = Message(spam_message(i))
        items.append((ALICE, message_digest(msg), model.features(msg)[1], "spam"))
    changes = users.train(items)
    assert [c is not None for c in changes] == [True, True, False]
    assert users.totals(ALICE) == (2, 0)
    [moved] = users.train([(ALICE, items[0][1], items[0][2], "ham")])  # a correction still applies
    assert moved is not None and moved.changed and users.totals(ALICE) == (1, 1)


def test_learn_worker_trains_the_reporting_users_dictionary(
    redis_server, client, prefix, model_file, tmp_path
):
    config = tmp_path / "filterd.toml"
    config.write_text(
        f'[redis]\nurl = "{redis_server.url}"\nkey_prefix = "{prefix}"\n'
        f'[checks.bayes]\nmodel = "{model_file}"\nstorage = "file"\nper_user = true\n'
    )
    target = RedisTarget(url=redis_server.url, key_prefix=prefix)
    for i in range(10):
        submit(target, "spam", "Alice@Example.NET", zorblax_spam(i))
        submit(target, "ham", "Alice@Example.NET", ham_message(100 + i))
    learner = Learner(load_config(str(config)), client, consumer="t")
    assert learner.step(block_ms=0) == 20
    users = UserDictionaries(client, prefix, 3600, 2000)
    assert users.totals(ALICE) == (10, 10)  # every report, though toe skipped some in the global model
    global_model = Model.load(model_file)  # the global model learned them too (toe: what it got wrong)
    assert global_model.records[message_digest(Message(zorblax_spam(0)))] == "spam"
    assert global_model.nspam > 30
    pipeline = pipeline_for(redis_server.url, prefix, model_file)
    assert f"with {ALICE}'s dictionary (10 spam, 10 ham" in score(pipeline, probe(), ALICE)[1]
    assert "dictionary" not in score(pipeline, probe(), BOB)[1]
    pipeline.close()
    learner.step(block_ms=0)  # nothing more queued: nothing changes
    assert users.totals(ALICE) == (10, 10)


def test_filterctl_train_user(redis_server, client, prefix, model_file, tmp_path) -> None:
    config = tmp_path / "filterd.toml"
    config.write_text(
        f'[redis]\nurl = "{redis_server.url}"\nkey_prefix = "{prefix}"\n'
        f'[checks.bayes]\nmodel = "{model_file}"\nstorage = "file"\nper_user = true\n'
    )
    spam_dir, ham_dir = tmp_path / "spam", tmp_path / "ham"
    spam_dir.mkdir(), ham_dir.mkdir()
    for i in range(10):
        (spam_dir / f"{i}.eml").write_bytes(zorblax_spam(i))
        (ham_dir / f"{i}.eml").write_bytes(ham_message(100 + i))
    for label, folder in (("spam", spam_dir), ("ham", ham_dir)):
        result = CliRunner().invoke(
            cli, ["--config", str(config), "train", label, "--user", ALICE, "-q", str(folder)]
        )
        assert result.exit_code == 0, result.output
        assert f"user {ALICE}: 10 changed, 0 already so" in result.output
    assert "dictionary: 10 spam, 10 ham" in result.output
    assert UserDictionaries(client, prefix, 3600, 2000).totals(ALICE) == (10, 10)


def test_redis_down_scores_with_the_global_model_and_delivers(model_file, prefix, caplog) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    pipeline = pipeline_for(dead, prefix, model_file)
    with caplog.at_level(logging.WARNING):
        value, reason, action = score(pipeline, probe(), ALICE)
    assert value < 0.2 and "dictionary" not in reason
    assert action is not Action.TEMPFAIL and action is not Action.REJECT
    _tx, verdict = scan(pipeline, probe(), SmtpContext(rcpts=(ALICE,)))
    assert any(s.name == "BAYES_REDIS_ERROR" for s in verdict.symbols)
    assert any("redis unavailable" in r.getMessage() for r in caplog.records)
    pipeline.close()


@pytest.mark.stack
def test_through_postfix_one_users_mail_uses_their_dictionary(stack, redis_server, client, prefix) -> None:
    """The milter path: Postfix's RCPT TO is the user; alice's dictionary applies to mail to her alone."""
    from tests.harness.stack import make_message as stack_message

    train_user(client, prefix, ALICE, 10, 10)
    config = {
        "redis": {"url": redis_server.url, "key_prefix": prefix},
        "checks": {"bayes": {"enabled": True, "per_user": True}},  # the shipped model: the global one
    }
    body = (
        "Hi Bob,\r\nI rebuilt the kernel with your patch and the tests pass; the release notes are in the "
        "wiki. Thanks for the review.\r\nzorblax quintessa blorvane\r\n"
    )
    reports = {}
    with stack.configured(config):
        for name, rcpts in (("alice", [ALICE]), ("bob", [BOB]), ("both", [ALICE, BOB])):
            msg, marker = stack_message("Re: the kernel patch", body, to=rcpts[0])
            assert stack.send(msg, rcpts=rcpts) == {}
            reports[name] = " ".join(stack.sink.find(marker).header("X-Spam-Report"))
    assert f"with {ALICE}'s dictionary (10 spam, 10 ham, weight 10)" in reports["alice"]
    assert "dictionary" not in reports["bob"] and "dictionary" not in reports["both"]

    def spamicity(report: str) -> float:
        return float(report.split("spamicity ", 1)[1].split()[0])

    assert spamicity(reports["alice"]) > 0.2 > spamicity(reports["bob"])  # measured: 0.50 and 0.005

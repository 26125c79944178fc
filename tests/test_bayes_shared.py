"""The model shared between hosts through a real redis-server."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import redis

from filterd.bayes.model import Model, message_digest
from filterd.bayes.shared import SharedModel
from filterd.message import Message
from tests.bayes_helpers import ham_message, spam_message, trained_model


@pytest.fixture
def client(redis_server) -> redis.Redis:
    c = redis.Redis.from_url(redis_server.url)
    yield c
    c.close()


@pytest.fixture
def prefix() -> str:
    return f"test-{uuid.uuid4().hex[:8]}:"


def item(model: Model, raw: bytes, label: str | None) -> tuple[bytes, np.ndarray, str | None]:
    msg = Message(raw)
    return message_digest(msg), model.features(msg)[1], label


def test_two_hosts_share_training_and_it_is_idempotent(client, prefix) -> None:
    seed = trained_model(5)
    host_a = SharedModel(client, prefix, seed)
    host_b = SharedModel(client, prefix, seed)
    host_a.load()
    host_b.load()
    spam = item(host_a.model, spam_message(50), "spam")
    [change] = host_a.train([spam])
    assert change.changed and host_a.model.nspam == 6
    assert seed.nspam == 5  # the seed itself is never changed
    assert host_b.model.nspam == 5
    assert host_b.sync() == 1
    assert host_b.model.nspam == 6 and host_b.model.records[spam[0]] == "spam"
    assert np.array_equal(host_a.model.counts.spam, host_b.model.counts.spam)
    # the same message again, from the other host: nothing changes anywhere
    [again] = host_b.train([spam])
    assert not again.changed and host_a.sync() == 0 and host_a.model.nspam == 6
    # moved to ham from host b: both see it moved
    [moved] = host_b.train([(spam[0], spam[1], "ham")])
    assert (moved.before, moved.after) == ("spam", "ham")
    host_a.sync()
    assert (host_a.model.nspam, host_a.model.nham) == (5, 6)
    assert np.array_equal(host_a.model.counts.ham, host_b.model.counts.ham)


def test_a_seed_record_counts_as_trained(client, prefix) -> None:
    """A message the model file was trained with is not counted twice by the shared log."""
    seed = trained_model(5)
    shared = SharedModel(client, prefix, seed)
    shared.load()
    [change] = shared.train([item(shared.model, spam_message(0), "spam")])
    assert not change.changed and change.before == "spam"
    [change] = shared.train([item(shared.model, spam_message(0), None)])
    assert change.changed and shared.model.nspam == 4


def test_new_host_starts_from_snapshot_and_trimmed_log_reloads(client, prefix) -> None:
    seed = trained_model(3)
    trainer = SharedModel(client, prefix, seed, log_max=5)
    trainer.load()
    follower = SharedModel(client, prefix, seed)
    follower.load()
    trainer.train([item(trainer.model, ham_message(100 + i), "ham") for i in range(3)])
    assert follower.sync() == 3
    trainer.train([item(trainer.model, ham_message(200 + i), "ham") for i in range(200)])
    trainer.snapshot()  # trims the log to 5 entries: past what the follower applied
    assert client.xlen(trainer.log_key) == 5
    assert follower.sync() == 0
    assert follower.model.nham == 3 + 203
    late = SharedModel(client, prefix, seed)
    late.load()
    assert late.model.nham == 206 and late.last_id == trainer.last_id


def test_signatures_round_trip_with_ttl(client, prefix) -> None:
    shared = SharedModel(client, prefix, trained_model(2))
    shared.load()
    digest, buckets, _ = item(shared.model, spam_message(9), None)
    sig_id = shared.store_signature(digest, buckets, ttl_seconds=3600)
    assert 0 < client.ttl(f"{prefix}bayes:sig:{sig_id}") <= 3600
    assert shared.signature(sig_id[:-1] + "x") is None
    sig = shared.signature(sig_id)
    assert sig is not None and sig.digest == digest
    assert np.array_equal(sig.buckets, np.unique(buckets))
    assert shared.signature("0123456789abcdef0123") is None
    assert shared.signature("../etc/passwd") is None

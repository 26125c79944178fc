"""The bayes check inside the pipeline (filterd.driver.scan), against a real redis-server."""

from __future__ import annotations

import math
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from filterd.bayes.model import Model
from filterd.check import AddHeader, Stage
from filterd.config import parse_config
from filterd.driver import scan
from filterd.pipeline import Pipeline
from filterd.results import Action, Verdict
from filterd.settings import ConfigError
from tests.bayes_helpers import ham_message, make_message, only_bayes, spam_message, trained_model
from tests.harness.net import free_port


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "bayes.npz"
    trained_model(30).save(path)
    return path


@pytest.fixture
def prefix() -> str:
    return f"chk-{uuid.uuid4().hex[:8]}:"


def pipeline_for(
    redis_url: str, prefix: str, scores: dict[str, float] | None = None, **bayes: Any
) -> Pipeline:
    config = parse_config(
        {
            "redis": {"url": redis_url, "key_prefix": prefix, "timeout": 0.3},
            "scores": scores or {},
            "checks": only_bayes(bayes, "header_sanity"),
        }
    )
    return Pipeline.from_config(config)


def bayes_symbols(verdict: Verdict) -> dict[str, tuple[float, str]]:
    return {s.name: (s.score, s.reason) for s in verdict.symbols if s.name.startswith("BAYES")}


def bayes_check(pipeline: Pipeline) -> Any:
    return next(c for c in pipeline.checks if c.name == "bayes")


def deliver(pipeline: Pipeline, raw: bytes) -> Verdict:
    """Scan as the milter would, and tell the checks the verdict (signatures are stored then)."""
    tx, verdict = scan(pipeline, raw)
    pipeline.after_verdict(tx, verdict)
    return verdict


def signature_of(verdict: Verdict) -> str | None:
    found = [h.value for h in verdict.add_headers if h.name == "X-Filterd-Signature"]
    return found[0] if found else None


def test_spam_gets_score_reason_and_signature(redis_server, model_file, prefix) -> None:
    pipeline = pipeline_for(redis_server.url, prefix, model=str(model_file))
    verdict = deliver(pipeline, spam_message(500))
    symbols = bayes_symbols(verdict)
    score, reason = symbols["BAYES_SPAM"]
    assert score == 4.5  # the top default band, spamicity >= 0.9999
    # the strongest clues: tokens of 30 spam and no ham (f = 0.997 with Robinson's s = 0.1)
    assert "spamicity 1.0000" in reason and "strongest:" in reason and "=0.99" in reason
    sig = signature_of(verdict)
    assert sig and len(sig) == 20
    assert bayes_check(pipeline).signatures.flush()  # written in the background
    client = redis.Redis.from_url(redis_server.url)
    ttl = client.ttl(f"{prefix}bayes:sig:{sig}")
    assert 13 * 86400 < ttl <= 14 * 86400
    _, verdict = scan(pipeline, ham_message(500))
    score, reason = bayes_symbols(verdict)["BAYES_HAM"]
    assert score == -2.0
    assert signature_of(verdict) != sig
    pipeline.close()


def test_signatures_written_in_batches_and_a_lost_write_stops_the_headers(
    tmp_path, model_file, prefix
) -> None:
    from tests.harness.redis import RedisServer

    server = RedisServer(tmp_path / "redis")
    server.start()
    pipeline = pipeline_for(server.url, prefix, model=str(model_file), redis_retry=60)
    try:
        sigs = [signature_of(deliver(pipeline, spam_message(600 + i))) for i in range(20)]
        check = bayes_check(pipeline)
        assert check.signatures.flush()
        client = redis.Redis.from_url(server.url)
        assert all(client.exists(f"{prefix}bayes:sig:{s}") for s in sigs)
        assert check.signatures.written == 20
        server.stop()  # the next write fails in the background thread...
        verdict = deliver(pipeline, spam_message(650))
        assert signature_of(verdict) is not None
        assert check.signatures.flush()
        assert check.signatures.lost == 1
        _, verdict = scan(pipeline, spam_message(651))  # ...and later messages are told, with no header
        assert signature_of(verdict) is None
        assert "BAYES_REDIS_ERROR" in bayes_symbols(verdict)
    finally:
        pipeline.close()
        server.stop()


def test_fail_closed_stores_the_signature_before_answering(redis_server, model_file, prefix) -> None:
    pipeline = pipeline_for(redis_server.url, prefix, model=str(model_file), on_error="closed")
    sig = signature_of(deliver(pipeline, spam_message(660)))
    assert redis.Redis.from_url(redis_server.url).exists(f"{prefix}bayes:sig:{sig}")  # no flush needed
    pipeline.close()


@pytest.mark.parametrize("on_error", ["open", "closed"])
def test_only_a_delivered_message_keeps_its_signature(redis_server, model_file, prefix, on_error) -> None:
    """A rejected message can never be in a mailbox, so nothing can retrain from its signature:
    none is kept (and a sender cannot fill Redis with mail that is refused anyway).  An accepted,
    tagged or quarantined one keeps its signature."""
    client = redis.Redis.from_url(redis_server.url)
    for threshold, action, kept in (
        ({"reject": 4.0}, Action.REJECT, False),
        ({"greylist": 4.0}, Action.GREYLIST, False),
        ({"quarantine": 4.0}, Action.QUARANTINE, True),
        ({"add_header": 4.0}, Action.ADD_HEADER, True),
        ({}, Action.ACCEPT, True),
    ):
        config = parse_config(
            {
                "redis": {"url": redis_server.url, "key_prefix": prefix, "timeout": 0.3},
                "actions": {"reject": math.inf, "add_header": math.inf, **threshold},
                "checks": only_bayes({"model": str(model_file), "on_error": on_error}, "header_sanity"),
            }
        )
        pipeline = Pipeline.from_config(config)
        check = bayes_check(pipeline)
        tx, verdict = scan(pipeline, spam_message(670 + len(action.value)))
        assert verdict.action is action
        sig = signature_of(verdict)
        assert sig is not None  # the header is chosen before the verdict is known
        pipeline.after_verdict(tx, verdict)
        assert check.signatures.flush()
        assert bool(client.exists(f"{prefix}bayes:sig:{sig}")) is kept, (action, on_error)
        assert len(check.pending) == 0
        pipeline.close()
    assert len(list(client.scan_iter(f"{prefix}bayes:sig:*"))) == 3
    client.close()


def test_a_message_without_a_verdict_leaves_nothing_pending(redis_server, model_file, prefix) -> None:
    """An aborted message (or an offline scan) never gets `after_verdict`: its pending signature
    goes away with the transaction, and nothing is written."""
    pipeline = pipeline_for(redis_server.url, prefix, model=str(model_file))
    check = bayes_check(pipeline)
    tx, verdict = scan(pipeline, spam_message(690))
    assert len(check.pending) == 1
    del tx
    assert len(check.pending) == 0
    assert check.signatures.flush() and check.signatures.written == 0
    assert not redis.Redis.from_url(redis_server.url).exists(f"{prefix}bayes:sig:{signature_of(verdict)}")
    pipeline.close()


def test_bands_and_cutoffs_are_configurable(redis_server, model_file, prefix) -> None:
    pipeline = pipeline_for(
        redis_server.url,
        prefix,
        model=str(model_file),
        bands=[[0.0, -0.5], [0.5, 7.0]],
        ham_cutoff=0.0,
        signature=False,
    )
    _, verdict = scan(pipeline, spam_message(501))
    assert bayes_symbols(verdict)["BAYES_SPAM"][0] == 7.0
    _, verdict = scan(pipeline, ham_message(501))
    assert bayes_symbols(verdict)["BAYES_UNSURE"][0] == -0.5  # nothing is below ham_cutoff 0
    pipeline.close()
    fixed = pipeline_for(
        redis_server.url, prefix, scores={"BAYES_SPAM": 9.0}, model=str(model_file), signature=False
    )
    _, verdict = scan(fixed, spam_message(501))
    assert bayes_symbols(verdict)["BAYES_SPAM"][0] == 9.0  # [scores] names it: the band does not apply
    pipeline = fixed
    assert signature_of(verdict) is None
    pipeline.close()
    with pytest.raises(ConfigError, match=r"checks\.bayes\.bands"):
        parse_config({"checks": {"bayes": {"bands": [[0.5, 1.0], [0.2, 2.0]]}}})
    with pytest.raises(ConfigError, match=r"checks\.bayes\.bands"):
        parse_config({"checks": {"bayes": {"bands": [[0.1, 1.0]]}}})


def test_redis_down_fails_open_with_a_symbol(model_file, prefix) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    pipeline = pipeline_for(dead, prefix, model=str(model_file))
    started = time.monotonic()
    _, verdict = scan(pipeline, spam_message(502))
    symbols = bayes_symbols(verdict)
    assert "BAYES_SPAM" in symbols  # classified with the model in memory
    assert "BAYES_REDIS_ERROR" in symbols and "nothing stored" in symbols["BAYES_REDIS_ERROR"][1]
    assert signature_of(verdict) is None
    assert verdict.action is not Action.TEMPFAIL
    # the next message does not wait for Redis again
    second = time.monotonic()
    _, verdict = scan(pipeline, ham_message(502))
    assert "BAYES_REDIS_ERROR" in bayes_symbols(verdict)
    assert time.monotonic() - second < max(0.2, (second - started) / 2)
    pipeline.close()


def test_without_redis_it_classifies_from_the_file_and_says_so_once(model_file, prefix, caplog) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    pipeline = pipeline_for(dead, prefix, model=str(model_file), redis_retry=0.0, sync_interval=0.001)
    with caplog.at_level("WARNING"):
        for i in range(3):  # each message tries Redis again (redis_retry 0) and fails
            time.sleep(0.01)  # past sync_interval: the check follows the shared model again
            _, verdict = scan(pipeline, spam_message(510 + i))
            assert {"BAYES_SPAM", "BAYES_REDIS_ERROR"} <= set(bayes_symbols(verdict)), (i, verdict)
    said = [r.getMessage() for r in caplog.records if "classifying with the model" in r.getMessage()]
    assert len(said) == 1 and "nothing stored" in said[0]
    pipeline.close()


def test_redis_down_fails_closed_when_asked(model_file, prefix) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    pipeline = pipeline_for(dead, prefix, model=str(model_file), on_error="closed")
    _, verdict = scan(pipeline, spam_message(503))
    assert verdict.action is Action.TEMPFAIL
    pipeline.close()


def test_untrained_model_scores_nothing(redis_server, tmp_path, prefix) -> None:
    pipeline = pipeline_for(redis_server.url, prefix, model=str(tmp_path / "none.npz"), storage="file")
    _, verdict = scan(pipeline, spam_message(504))
    symbols = bayes_symbols(verdict)
    assert list(symbols) == ["BAYES_UNTRAINED"]
    assert symbols["BAYES_UNTRAINED"][0] == 0.0 and "0 spam and 0 ham" in symbols["BAYES_UNTRAINED"][1]
    pipeline.close()


def test_teft_trains_what_it_classifies_once(redis_server, model_file, prefix) -> None:
    pipeline = pipeline_for(redis_server.url, prefix, model=str(model_file), train_mode="teft")
    raw = spam_message(505)
    _, verdict = scan(pipeline, raw)
    assert "learned as spam" in bayes_symbols(verdict)["BAYES_AUTOLEARN"][1]
    _, verdict = scan(pipeline, raw)
    assert "already trained as spam" in bayes_symbols(verdict)["BAYES_AUTOLEARN"][1]
    holder = pipeline.by_stage[Stage.EOM][-1].holder  # the bayes check's model (it runs last)
    assert holder.model.nspam == 31
    pipeline.close()


def test_autolearn_with_balance_guard(redis_server, model_file, prefix) -> None:
    old = make_message(
        "cheap pills", "viagra cheap pills", headers=(("Date", "Mon, 01 Jan 2001 00:00:00 +0000"),)
    )
    pipeline = pipeline_for(
        redis_server.url, prefix, scores={"DATE_IN_PAST": 20.0}, model=str(model_file), autolearn=True
    )
    _, verdict = scan(pipeline, old)
    assert (
        "learned as spam (autolearn: other checks scored 20)" in bayes_symbols(verdict)["BAYES_AUTOLEARN"][1]
    )
    pipeline.close()
    guarded = pipeline_for(
        redis_server.url,
        prefix + "g",
        scores={"DATE_IN_PAST": 20.0},
        model=str(model_file),
        autolearn=True,
        autolearn_ratio=1.0,
    )
    _, verdict = scan(guarded, old)
    assert "balance guard (30 spam >= 1 x 30)" in bayes_symbols(verdict)["BAYES_AUTOLEARN"][1]
    guarded.close()


def test_learning_inside_filterd_needs_redis_storage(model_file) -> None:
    for bayes in ({"train_mode": "teft"}, {"autolearn": True}):
        with pytest.raises(ConfigError, match="storage"):
            Pipeline.from_config(
                parse_config({"checks": only_bayes({"storage": "file", "model": str(model_file), **bayes})})
            )


def test_damaged_model_stops_the_start(tmp_path) -> None:
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a model")
    with pytest.raises(ConfigError, match=r"checks\.bayes\.model: .*not a filterd model"):
        Pipeline.from_config(parse_config({"checks": only_bayes({"model": str(bad)})}))


def test_model_file_is_reloaded_when_it_changes(redis_server, tmp_path, prefix) -> None:
    path = tmp_path / "bayes.npz"
    Model.empty().save(path)
    pipeline = pipeline_for(
        redis_server.url, prefix, model=str(path), storage="file", signature=False, sync_interval=0.01
    )
    _, verdict = scan(pipeline, spam_message(506))
    assert "BAYES_UNTRAINED" in bayes_symbols(verdict)
    trained_model(30).save(path)
    time.sleep(0.05)
    _, verdict = scan(pipeline, spam_message(506))
    assert "BAYES_SPAM" in bayes_symbols(verdict)
    pipeline.close()


def test_outputs_are_findings_and_one_header(redis_server, model_file, prefix) -> None:
    pipeline = pipeline_for(redis_server.url, prefix, model=str(model_file))
    tx, verdict = scan(pipeline, spam_message(507))
    ours = [h for h in verdict.add_headers if not h.name.startswith("X-Spam-")]  # the verdict headers aside
    assert [h for h in tx.add_headers if isinstance(h, AddHeader)] == ours
    assert len(ours) == 1
    pipeline.close()

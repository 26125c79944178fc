"""The hostile set (corpus/hostile, corpus/make_hostile.py) through every check.

A message built to break the filter must never make a check fail (CHECK_ERROR: the check is
skipped, fail-open) and must be scanned in bounded time.  And hiding a spam's body behind empty
parts or deep nesting must not lower its score.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from filterd.config import Config, parse_config, registered_checks
from filterd.driver import SmtpContext, scan
from filterd.pipeline import Pipeline
from filterd.quarantine.store import QuarantineSettings, QuarantineStore, meta_from
from filterd.results import Verdict
from filterd.services import Services
from tests.corpus_support import load_corpus_script
from tests.harness.clamd import ClamdServer
from tests.harness.dns import LocalDns
from tests.harness.redis import RedisServer

ROOT = Path(__file__).resolve().parent.parent


make_hostile = load_corpus_script("make_hostile")
CASES: dict[str, bytes] = make_hostile.cases()
CTX = SmtpContext(
    client_addr="192.0.2.10",
    helo="mx.free-prize.example",
    mail_from="prize@free-prize.example",
    rcpts=("victim@example.net",),
)
SECONDS_PER_MESSAGE = 5.0  # CPU; the slowest case (10,000 nesting levels) takes ~0.5 s


def every_check(local_dns: LocalDns, redis_url: str, clamd_socket: str) -> Config:
    checks: dict[str, dict[str, Any]] = {c.name: {"enabled": True} for c in registered_checks()}
    checks["antivirus"].update(sockets=[clamd_socket], timeout=5.0)
    checks["greylist"].update(mode="content")
    return parse_config(
        {
            "dns": {"nameservers": ["127.0.0.1"], "port": local_dns.port, "timeout": 0.4, "attempts": 1},
            "network": {"hostname": "mx.filterd.test"},
            "redis": {"url": redis_url, "key_prefix": f"hostile{secrets.token_hex(4)}:"},
            # recipient_exists reads [sql]; no database listens on port 9, so lookups answer from
            # the static values (on_error "stale", before any good answer): the message bytes
            # still meet every check
            "sql": {"enabled": True, "host": "127.0.0.1", "port": 9, "timeout": 0.3},
            "checks": checks,
        }
    )


@pytest.fixture(scope="module")
def full_pipeline(
    local_dns: LocalDns, redis_server: RedisServer, clamd_server: ClamdServer
) -> Iterator[Pipeline]:
    config = every_check(local_dns, redis_server.url, clamd_server.unix_address)
    p = Pipeline.from_config(config, Services(config))
    yield p
    p.close()


def test_the_committed_files_are_what_the_generator_writes() -> None:
    committed = {p.stem: p.read_bytes() for p in (ROOT / "corpus" / "hostile").glob("*.eml")}
    assert committed, "run: python corpus/make_hostile.py"
    small = {n: raw for n, raw in CASES.items() if len(raw) <= make_hostile.COMMIT_LIMIT}
    assert committed == small
    assert sum(map(len, committed.values())) < 200_000


def test_every_check_runs_on_the_full_pipeline(full_pipeline: Pipeline) -> None:
    ran = {c.name for c in full_pipeline.checks}
    assert {"antivirus", "bayes", "rules", "mime_structure", "dkim", "spf", "greylist"} <= ran


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_message_makes_no_check_fail(full_pipeline: Pipeline, name: str) -> None:
    started = time.process_time()
    _, verdict = scan(full_pipeline, CASES[name], CTX)
    spent = time.process_time() - started
    errors = [s.reason for s in verdict.symbols if s.name == "CHECK_ERROR"]
    assert errors == [], errors
    assert spent < SECONDS_PER_MESSAGE, f"{name}: {spent:.2f} s"


def rules_and_bayes(redis_url: str) -> Pipeline:
    checks: dict[str, dict[str, Any]] = {c.name: {"enabled": False} for c in registered_checks()}
    checks["rules"] = {"enabled": True}
    checks["bayes"] = {"enabled": True}  # the shipped model, models/bayes.npz
    checks["mime_structure"] = {"enabled": False}  # the comparison is of the content checks alone
    config = parse_config(
        {"redis": {"url": redis_url, "key_prefix": f"wrap{secrets.token_hex(4)}:"}, "checks": checks}
    )
    return Pipeline.from_config(config, Services(config))


WRAPPED_SPAMS = (
    "spamassassin-public/spam/spam_2__00005.ed0aba4d386c5e62bc737cf3f0ed9589",  # text/html
    "spamassassin-public/spam/spam_2__00001.317e78fa8ee2f54cd4890fdc09ba8176",  # text/plain
    "spamassassin-public/spam/spam_2__00003.590eff932f8704d8b0fcbe69d023b54d",
)


@pytest.mark.parametrize("wrapping", ["empty-parts-200", "nested-250", "nested-1000"])
def test_a_wrapped_spam_scores_as_the_spam(corpus: Path, redis_server: RedisServer, wrapping: str) -> None:
    p = rules_and_bayes(redis_server.url)
    try:
        for name in WRAPPED_SPAMS:
            raw = (corpus / name).read_bytes()
            if wrapping == "empty-parts-200":
                wrapped = make_hostile.wrap_after_empty_parts(raw, 200)
            else:
                wrapped = make_hostile.wrap_nested(raw, int(wrapping.split("-")[1]))
            plain, hidden = _score(p, raw), _score(p, wrapped)
            assert plain.score >= 5.0, name
            assert abs(hidden.score - plain.score) <= 1.0, (name, plain.symbols, hidden.symbols)
    finally:
        p.close()


def _score(p: Pipeline, raw: bytes) -> Verdict:
    _, verdict = scan(p, raw, CTX)
    assert not [s for s in verdict.symbols if s.name == "CHECK_ERROR"]
    return verdict


def test_hidden_structure_scores_on_its_own(redis_server: RedisServer) -> None:
    checks: dict[str, dict[str, Any]] = {c.name: {"enabled": False} for c in registered_checks()}
    checks["mime_structure"] = {"enabled": True}
    config = parse_config({"checks": checks})
    p = Pipeline.from_config(config, Services(config))
    try:
        names = {
            case: {s.name for s in scan(p, CASES[case], CTX)[1].symbols}
            for case in ("empty-parts-200", "nested-250", "nested-1000", "subject-bad-base64-word")
        }
    finally:
        p.close()
    assert names["empty-parts-200"] == {"MIME_TOO_MANY_PARTS"}
    assert names["nested-250"] == names["nested-1000"] == {"MIME_TOO_DEEP", "MIME_TOO_MANY_PARTS"}
    assert names["subject-bad-base64-word"] == set()


@pytest.mark.parametrize(
    "name", ["subject-bad-base64-word", "from-bad-base64-word", "content-disposition-8bit"]
)
def test_a_hostile_message_can_be_quarantined(tmp_path: Path, name: str) -> None:
    """A store that raised would tempfail the message on every retry, forever."""
    checks: dict[str, dict[str, Any]] = {c.name: {"enabled": False} for c in registered_checks()}
    checks["header_sanity"] = {"enabled": True}
    config = parse_config({"checks": checks})
    p = Pipeline.from_config(config, Services(config))
    try:
        tx, verdict = scan(p, CASES[name], CTX)
    finally:
        p.close()
    store = QuarantineStore(QuarantineSettings(directory=str(tmp_path / "q"), release_via="127.0.0.1:1"))
    entry = store.get(store.put(CASES[name], [("X-Spam-Status", "Yes")], meta_from(tx, verdict)))
    assert entry.original() == CASES[name]
    assert "gift card" in entry.meta["subject"] or name == "from-bad-base64-word"

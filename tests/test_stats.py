"""Verdict counters and the history list in Redis (filterd.stats), `filterctl stats` and its graphs.

Against the real redis-server fixture; each test writes under its own key prefix.  The unit
tests drive messages through the driver as the milter does (a client's mail: counted), and check
that an offline scan counts nothing; the end-to-end test goes through the real Postfix and filterd.
"""

from __future__ import annotations

import json
import logging
import os
import smtplib
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner

from filterd import stats
from filterd.cli.filterctl import cli
from filterd.cli.stats_cmd import plot
from filterd.config import parse_config
from filterd.driver import Driver, SmtpContext, scan
from filterd.pipeline import Pipeline
from filterd.replies import R451_GREYLIST_DEFERRED
from filterd.results import Action, Symbol, TempFail, Verdict
from filterd.stats import COUNTERS, StatsKeys, StatsRecorder, day_bucket, hour_bucket, read_buckets, totals
from filterd.transaction import Session, Transaction
from tests.harness.filterd import write_toml
from tests.harness.net import free_port, wait_for
from tests.harness.redis import RedisServer
from tests.harness.stack import Stack, make_message

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
HISTORY_FIELDS = {
    "ts",
    "qid",
    "action",
    "score",
    "from",
    "rcpts",
    "subject",
    "client",
    "direction",
    "symbols",
}


def prefix() -> str:
    return f"st{uuid.uuid4().hex[:8]}:"


def settings_for(server: RedisServer, key_prefix: str, **stats_settings: Any) -> dict[str, Any]:
    """A configuration counting in `server` under `key_prefix`; a message without a Message-ID
    is tagged (add_header), GTUBE rejected, anything else accepted."""
    return {
        "redis": {"url": server.url, "key_prefix": key_prefix},
        "stats": stats_settings,
        "actions": {"add_header": 3.0},
        "scores": {"MISSING_MESSAGE_ID": 4.5},
    }


def message(
    subject: str, body: str = "hello\r\n", message_id: bool = True, sender: str = "a@example.org"
) -> bytes:
    lines = [
        f"From: {sender}",
        "To: b@example.net",
        f"Subject: {subject}",
        "Date: Thu, 03 Dec 2026 12:00:00 +0000",
    ]
    if message_id:
        lines.append(f"Message-ID: <{uuid.uuid4().hex}@example.org>")
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


def deliver(
    pipeline: Pipeline,
    raw: bytes,
    sender: str = "a@example.org",
    rcpts: tuple[str, ...] = ("b@example.net",),
    queue_id: str = "4F3A21C0D2",
) -> Verdict:
    """One message as the milter drives it (a client's mail, so it is counted); `scan` is the
    same walk for an offline scan, which counts nothing."""
    driver = Driver(pipeline, Session(client_addr="192.0.2.7", client_name="mx.example.org"))
    driver.connect()
    driver.helo("mx.example.org")
    step = driver.mail(sender, queue_id=queue_id)
    assert step.proceeds
    for rcpt in rcpts:
        driver.rcpt(rcpt)
    tx = driver.current()
    tx.raw_message, tx.size = raw, len(raw)
    verdict = driver.end_of_message()
    driver.message_done(verdict)
    return verdict


def client(server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(server.url)


def hash_of(r: redis.Redis, key: str) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in r.hgetall(key).items()}


def counted(r: redis.Redis, key_prefix: str, period: str) -> dict[str, int]:
    """The counters of this hour or day and the one before, added up (a test that ran across
    the boundary counted in both), without the zeros."""
    return {name: n for name, n in totals(read_buckets(r, key_prefix, period, 2)).items() if n}


# -- counting --------------------------------------------------------------------------------------


def test_each_verdict_counts_once_per_hour_and_day_with_top_lists(redis_server: RedisServer) -> None:
    key_prefix = prefix()
    pipeline = Pipeline.from_config(parse_config(settings_for(redis_server, key_prefix)))
    before = time.time()
    assert deliver(pipeline, message("hello")).action is Action.ACCEPT
    assert deliver(pipeline, message("buy", GTUBE + "\r\n"), sender="x@Spam.Example").action is Action.REJECT
    assert deliver(pipeline, message("tag me", message_id=False)).action is Action.ADD_HEADER
    assert (
        deliver(pipeline, message("again", GTUBE + "\r\n"), sender="y@spam.example").action is Action.REJECT
    )
    # an offline scan (filterctl scan) is not mail a client sent: not counted
    scan(pipeline, message("offline", GTUBE + "\r\n"), SmtpContext(mail_from="z@other.example"))
    assert stats.flush()
    pipeline.close()

    r, keys = client(redis_server), StatsKeys(key_prefix)
    expected = {"received": 4, "accepted": 1, "tagged": 1, "rejected": 2}
    assert counted(r, key_prefix, "hour") == expected
    assert counted(r, key_prefix, "day") == expected
    assert 0 < r.ttl(keys.hour(hour_bucket(before))) <= 8 * 86400 + 3600
    assert 399 * 86400 < r.ttl(keys.day(day_bucket(before))) <= 401 * 86400
    symbols = dict(r.zrange(keys.symbols(day_bucket(before)), 0, -1, withscores=True))
    assert symbols[b"GTUBE"] == 2 and symbols[b"MISSING_MESSAGE_ID"] == 1
    domains = r.zrange(keys.rejected_from(day_bucket(before)), 0, -1, withscores=True)
    assert domains == [(b"spam.example", 2.0)]  # domains compared without case


def test_history_entries_follow_the_contract_newest_first_and_trimmed(redis_server: RedisServer) -> None:
    key_prefix = prefix()
    pipeline = Pipeline.from_config(parse_config(settings_for(redis_server, key_prefix, history=3)))
    subjects = ["one", "=?utf-8?b?w6ljaG8gZMOpasOgIHZ1?=", "three", "four", "x" * 300]
    for i, subject in enumerate(subjects):
        deliver(
            pipeline,
            message(subject, GTUBE if i == 3 else "hi"),
            queue_id=f"QID{i}",
            rcpts=("b@x.net", "c@x.net"),
        )
    assert stats.flush()
    pipeline.close()

    r = client(redis_server)
    raw = r.lrange(StatsKeys(key_prefix).history, 0, -1)
    assert len(raw) == 3  # LTRIM to [stats] history
    entries = [json.loads(item) for item in raw]
    assert [e["qid"] for e in entries] == ["QID4", "QID3", "QID2"]  # newest first
    for e in entries:
        assert set(e) == HISTORY_FIELDS
        assert isinstance(e["ts"], float) and abs(e["ts"] - time.time()) < 60
        assert isinstance(e["score"], float) and isinstance(e["subject"], str)
        assert e["from"] == "a@example.org" and e["rcpts"] == ["b@x.net", "c@x.net"]
        assert e["client"] == "192.0.2.7" and e["direction"] == "inbound"
        assert all(isinstance(n, str) and isinstance(s, float) for n, s in e["symbols"])
    assert entries[0]["subject"] == "x" * 200  # at most 200 characters
    assert entries[1]["action"] == "reject" and entries[1]["score"] >= 15
    assert dict(entries[1]["symbols"])["GTUBE"] >= 15
    assert entries[2]["action"] == "accept" and entries[2]["subject"] == "three"
    # the decoded Subject of an RFC 2047 word (read from the list as the web console would)
    pipeline = Pipeline.from_config(parse_config(settings_for(redis_server, key_prefix, history=3)))
    deliver(pipeline, message(subjects[1]))
    assert stats.flush()
    pipeline.close()
    assert stats.read_history(r, key_prefix, 1)[0]["subject"] == "écho déjà vu"


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("=?utf-8?b?!!!notbase64?=", "=?utf-8?b?!!!notbase64?="),  # undecodable: shown as it is
        ("=?x-unknown-charset?q?caf=E9?=", None),  # an unknown charset: no exception, some text
        ("tab\there\x00nul", "tab here nul"),
        ("lone \udcff surrogate", "lone \ufffd surrogate"),
    ],
)
def test_a_hostile_subject_gives_a_readable_line_never_an_exception(
    subject: str, expected: str | None
) -> None:
    tx = Transaction(Session(), raw_headers=[("Subject", subject)])
    got = stats.decoded_subject(tx)
    json.dumps(got).encode("utf-8")  # valid for any JSON reader
    if expected is not None:
        assert got == expected
    assert "\x00" not in got and len(got) <= stats.SUBJECT_LIMIT


def test_a_refusal_at_rcpt_counts_as_a_verdict(redis_server: RedisServer, tmp_path: Path) -> None:
    deny = tmp_path / "rcpt-deny.txt"
    deny.write_text("blocked@example.net\n")
    key_prefix = prefix()
    config = settings_for(redis_server, key_prefix)
    config["checks"] = {"recipient_lists": {"deny_file": str(deny)}}
    pipeline = Pipeline.from_config(parse_config(config))
    driver = Driver(pipeline, Session(client_addr="192.0.2.9"))
    driver.connect()
    driver.mail("a@example.org")
    assert driver.rcpt("blocked@example.net").decision is not None
    assert driver.rcpt("next@example.net").decision is None  # the entry keeps the recipients as they were
    driver.abort()
    assert stats.flush()
    pipeline.close()
    r = client(redis_server)
    assert counted(r, key_prefix, "day") == {"received": 1, "rejected": 1}
    (entry,) = stats.read_history(r, key_prefix)
    assert (
        entry["action"] == "reject" and entry["rcpts"] == ["blocked@example.net"] and entry["subject"] == ""
    )


def test_a_greylisted_recipient_counts_as_greylisted(redis_server: RedisServer) -> None:
    key_prefix = prefix()
    config = settings_for(redis_server, key_prefix)
    config["checks"] = {"greylist": {"enabled": True, "delay": 60, "auto_allowlist": 0}}
    pipeline = Pipeline.from_config(parse_config(config))
    driver = Driver(pipeline, Session(client_addr="198.51.100.20"))
    driver.connect()
    driver.mail("new@sender.example")
    refusal = driver.rcpt("b@example.net").decision
    assert isinstance(refusal, TempFail) and refusal.reply.code == 451 and "Greylisted" in refusal.reply.text
    driver.abort()
    assert stats.flush()
    pipeline.close()
    r = client(redis_server)
    assert counted(r, key_prefix, "day") == {"received": 1, "greylisted": 1}
    assert stats.read_history(r, key_prefix)[0]["action"] == "tempfail"


def test_counting_survives_a_flushed_script_cache_without_a_second_history_entry(
    redis_server: RedisServer,
) -> None:
    key_prefix = prefix()
    r = client(redis_server)
    recorder = StatsRecorder(parse_config({}).stats, key_prefix, lambda: r)
    tx, verdict = Transaction(Session(), queue_id="Q1"), Verdict(0.0, 5.0, Action.ACCEPT, [])
    r.script_flush()  # as after a Redis restart: the script must be loaded again
    assert recorder.record(tx, verdict, ts=1_700_000_000.0)
    assert recorder.flush()
    r.script_flush()
    assert recorder.record(tx, verdict, ts=1_700_000_000.0)
    assert recorder.flush()
    assert (recorder.counted_total, recorder.lost_total) == (2, 0)
    got = hash_of(r, StatsKeys(key_prefix).hour(hour_bucket(1_700_000_000.0)))
    assert got == {"received": 2, "accepted": 2}
    assert r.llen(StatsKeys(key_prefix).history) == 2


def test_outcomes_greylisting_apart_from_other_tempfails() -> None:
    def verdict(action: Action, decision: Any = None) -> Verdict:
        return Verdict(0.0, 5.0, action, [], decision)

    greylisted = TempFail(R451_GREYLIST_DEFERRED, "greylisted (new triplet): 192.0.2.0/24, <a@b>, <c@d>, new")
    assert stats.outcome_of(verdict(Action.TEMPFAIL, greylisted)) == "greylisted"
    other = TempFail(R451_GREYLIST_DEFERRED, "worker busy")
    assert stats.outcome_of(verdict(Action.TEMPFAIL, other)) == "tempfailed"
    assert stats.outcome_of(verdict(Action.GREYLIST)) == "greylisted"
    assert stats.outcome_of(verdict(Action.TEMPFAIL)) == "tempfailed"
    assert stats.outcome_of(verdict(Action.REWRITE_SUBJECT)) == "tagged"
    assert stats.outcome_of(verdict(Action.QUARANTINE)) == "quarantined"
    assert stats.outcome_of(verdict(Action.DISCARD)) == "discarded"
    assert set(stats.OUTCOMES) == {stats.outcome_of(verdict(a)) for a in Action}


def test_a_virus_counts_beside_its_outcome(redis_server: RedisServer) -> None:
    key_prefix = prefix()
    recorder = StatsRecorder(parse_config({}).stats, key_prefix, lambda: client(redis_server))
    tx = Transaction(Session(), mail_from="v@virus.example", rcpts=["b@example.net"])
    virus = Verdict(20.0, 5.0, Action.REJECT, [Symbol("CLAM_VIRUS", 20.0, "Eicar-Test")])
    assert recorder.record(tx, virus, ts=1_700_000_000.0)
    assert recorder.flush()
    got = hash_of(client(redis_server), StatsKeys(key_prefix).hour(hour_bucket(1_700_000_000.0)))
    assert got == {"received": 1, "rejected": 1, "virus": 1}


# -- the queue and its sender thread ------------------------------------------------------------


def test_verdicts_from_many_threads_are_counted_exactly_once(redis_server: RedisServer) -> None:
    """Eight threads record 500 verdicts each, as a worker's milter threads would: after flush
    every verdict is in the counters once and in the history once, in batches of at most 200."""
    key_prefix, r = prefix(), client(redis_server)
    recorder = StatsRecorder(parse_config({}).stats, key_prefix, lambda: r)
    ts = 1_700_000_000.0
    sent_batches: list[int] = []
    send = recorder._send

    def counting_send(batch: Any) -> None:
        sent_batches.append(len(batch))
        send(batch)

    recorder._send = counting_send  # type: ignore[method-assign]

    def worker(n: int) -> None:
        for i in range(500):
            tx = Transaction(Session(), queue_id=f"T{n}N{i}", mail_from=f"s@d{n}.example")
            action = Action.REJECT if i % 5 == 0 else Action.ACCEPT
            assert recorder.record(tx, Verdict(0.0, 5.0, action, [Symbol(f"SYM{n}", 1.0, "")]), ts=ts)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert recorder.flush()
    assert (recorder.counted_total, recorder.lost_total) == (4000, 0)
    assert sum(sent_batches) == 4000 and len(sent_batches) >= 2  # in several batches
    keys = StatsKeys(key_prefix)
    assert hash_of(r, keys.hour(hour_bucket(ts))) == {"received": 4000, "accepted": 3200, "rejected": 800}
    assert hash_of(r, keys.day(day_bucket(ts))) == {"received": 4000, "accepted": 3200, "rejected": 800}
    symbols = dict(r.zrange(keys.symbols(day_bucket(ts)), 0, -1, withscores=True))
    assert symbols == {f"SYM{n}".encode(): 500.0 for n in range(8)}
    domains = dict(r.zrange(keys.rejected_from(day_bucket(ts)), 0, -1, withscores=True))
    assert domains == {f"d{n}.example".encode(): 100.0 for n in range(8)}
    qids = [e["qid"] for e in stats.read_history(r, key_prefix, 10_000)]
    assert sorted(qids) == sorted(f"T{n}N{i}" for n in range(8) for i in range(500))
    # each thread's verdicts newest first, as each thread recorded them
    for n in range(8):
        mine = [q for q in qids if q.startswith(f"T{n}N")]
        assert mine == [f"T{n}N{i}" for i in range(499, -1, -1)]


def test_the_hook_only_queues_and_the_sender_writes_within_its_interval(redis_server: RedisServer) -> None:
    key_prefix, r = prefix(), client(redis_server)
    recorder = StatsRecorder(parse_config({}).stats, key_prefix, lambda: r, interval=0.3)
    tx, verdict = Transaction(Session(), queue_id="Q1"), Verdict(0.0, 5.0, Action.ACCEPT, [])
    assert recorder.record(tx, verdict, ts=1_700_000_000.0)
    key = StatsKeys(key_prefix).hour(hour_bucket(1_700_000_000.0))
    assert hash_of(r, key) == {}  # nothing written on the mail path
    deadline = time.monotonic() + 5
    while not hash_of(r, key) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert hash_of(r, key) == {"received": 1, "accepted": 1}  # written by the thread, no flush


def test_a_batch_across_midnight_counts_each_day_in_its_own_keys(redis_server: RedisServer) -> None:
    key_prefix, r = prefix(), client(redis_server)
    recorder = StatsRecorder(parse_config({}).stats, key_prefix, lambda: r, interval=60)
    midnight = 1_700_006_400.0  # 2023-11-15 00:00 UTC
    tx = Transaction(Session(), mail_from="x@late.example")
    for ts in (midnight - 2, midnight - 1, midnight + 1):
        recorder.record(tx, Verdict(20.0, 5.0, Action.REJECT, [Symbol("GTUBE", 20.0, "")]), ts=ts)
    assert recorder.flush()
    keys = StatsKeys(key_prefix)
    before, after = day_bucket(midnight - 1), day_bucket(midnight)
    assert before != after
    assert hash_of(r, keys.day(before)) == {"received": 2, "rejected": 2}
    assert hash_of(r, keys.hour(hour_bucket(midnight - 1))) == {"received": 2, "rejected": 2}
    assert hash_of(r, keys.day(after)) == {"received": 1, "rejected": 1}
    assert (
        r.zscore(keys.symbols(before), "GTUBE") == 2
        and r.zscore(keys.rejected_from(after), "late.example") == 1
    )
    assert 399 * 86400 < r.ttl(keys.rejected_from(before)) <= 401 * 86400
    assert [e["ts"] for e in stats.read_history(r, key_prefix)] == [midnight + 1, midnight - 1, midnight - 2]


def test_batches_of_two_workers_keep_the_history_newest_first(redis_server: RedisServer) -> None:
    """Two workers' batches overlap in time; the one written second is merged into the list by
    "ts", so the list stays newest first as the contract says."""
    key_prefix, r = prefix(), client(redis_server)
    settings = parse_config({"stats": {"history": 7}}).stats
    first, second = (
        StatsRecorder(settings, key_prefix, lambda: r, interval=60),
        StatsRecorder(settings, key_prefix, lambda: r, interval=60),
    )
    verdict, ts = Verdict(0.0, 5.0, Action.ACCEPT, []), 1_700_000_000.0
    for i in (1, 3, 5, 7):  # the worker whose batch is written first has the newest verdict
        first.record(Transaction(Session(), queue_id=f"Q{i}"), verdict, ts=ts + i)
    for i in (0, 2, 4, 6):
        second.record(Transaction(Session(), queue_id=f"Q{i}"), verdict, ts=ts + i)
    assert first.flush() and second.flush()
    assert [e["qid"] for e in stats.read_history(r, key_prefix, 100)] == [f"Q{i}" for i in range(7, 0, -1)]
    # a batch all newer than the list is pushed as it is
    second.record(Transaction(Session(), queue_id="Q8"), verdict, ts=ts + 8)
    assert second.flush()
    assert [e["qid"] for e in stats.read_history(r, key_prefix, 3)] == ["Q8", "Q7", "Q6"]


def senders() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "stats-sender"]


def in_child(work: Any) -> int:
    """Run `work` in a forked child, as a worker runs after the parent forked it; its exit code."""
    pid = os.fork()
    if pid == 0:  # the child: never back into pytest
        code = 1
        try:
            code = 0 if work() else 2
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_the_sender_thread_starts_in_the_forked_worker_never_in_the_parent(redis_server: RedisServer) -> None:
    key_prefix, r = prefix(), client(redis_server)
    pipeline = Pipeline.from_config(parse_config(settings_for(redis_server, key_prefix)))
    assert stats.recorder_for(pipeline) is not None  # made, as the parent may: no thread yet
    before = len(senders())

    def worker() -> bool:
        for _ in range(3):
            deliver(pipeline, message("from a worker"))
        return stats.flush() and len(senders()) == 1

    assert in_child(worker) == 0
    assert len(senders()) == before  # none started in the parent
    assert counted(r, key_prefix, "day") == {"received": 3, "accepted": 3}
    # a process that recorded before forking: its child starts its own sender, queue empty
    deliver(pipeline, message("from the parent"))
    assert len(senders()) == before + 1
    assert in_child(worker) == 0
    assert stats.flush()
    assert counted(r, key_prefix, "day") == {"received": 7, "accepted": 7}
    pipeline.close()


def test_a_full_queue_drops_and_counts_and_warns_once_a_minute(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis slower than the mail: past the queue's bound verdicts are not counted (the mail
    path never waits), and that is said at most once a minute."""
    key_prefix, r = prefix(), client(redis_server)
    clock = Clock()
    recorder = StatsRecorder(
        parse_config({}).stats, key_prefix, lambda: r, clock, queue_limit=5, batch_size=100, interval=60
    )
    tx, verdict = Transaction(Session()), Verdict(0.0, 5.0, Action.ACCEPT, [])
    with caplog.at_level(logging.WARNING, logger="filterd.stats"):
        queued = [recorder.record(tx, verdict, ts=1_700_000_000.0) for _ in range(8)]
        clock.now += 30
        queued.append(recorder.record(tx, verdict, ts=1_700_000_000.0))
        clock.now += 31
        queued.append(recorder.record(tx, verdict, ts=1_700_000_000.0))
    assert queued == [True] * 5 + [False] * 5
    warnings = [rec.getMessage() for rec in caplog.records if rec.name == "filterd.stats"]
    assert len(warnings) == 2 and "5 verdicts queued" in warnings[0]
    assert "(1 since the last warning" in warnings[0] and "(4 since the last warning" in warnings[1]
    assert recorder.flush()
    assert (recorder.counted_total, recorder.lost_total) == (5, 5)
    assert hash_of(r, StatsKeys(key_prefix).hour(hour_bucket(1_700_000_000.0))) == {
        "received": 5,
        "accepted": 5,
    }
    assert recorder.record(tx, verdict)  # room again


def test_flush_gives_up_on_a_hung_redis_within_its_timeout() -> None:
    release = threading.Event()

    def hung() -> Any:
        release.wait(10)
        raise redis.TimeoutError("hung")

    recorder = StatsRecorder(parse_config({}).stats, "x:", hung)
    recorder.record(Transaction(Session()), Verdict(0.0, 5.0, Action.ACCEPT, []))
    started = time.monotonic()
    assert not recorder.flush(timeout=0.3)
    assert time.monotonic() - started < 1.0
    release.set()
    assert recorder.flush(timeout=5) and recorder.lost_total == 1


def test_auto_counts_only_where_redis_is_used(redis_server: RedisServer) -> None:
    assert not stats.counts(parse_config({}))  # the defaults use no Redis: nothing counted
    assert stats.counts(parse_config({"redis": {"url": redis_server.url}}))
    assert stats.counts(parse_config({"checks": {"greylist": {"enabled": True}}}))
    assert stats.counts(parse_config({"stats": {"enabled": "on"}}))
    assert not stats.counts(parse_config({"redis": {"url": redis_server.url}, "stats": {"enabled": "off"}}))


# -- Redis down: the mail goes on ------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_redis_down_loses_counts_never_mail_and_warns_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    config = parse_config({"redis": {"url": dead, "timeout": 0.2}, "stats": {"retry_after": 5.0}})
    pipeline = Pipeline.from_config(config)
    clock = Clock()
    recorder = StatsRecorder(config.stats, "x:", lambda: pipeline.services.redis, clock)
    stats._recorders[pipeline] = recorder
    with caplog.at_level(logging.WARNING, logger="filterd.stats"):
        for step in range(10):  # ten messages, 10 s apart: 100 s
            verdict = deliver(pipeline, message("still delivered", GTUBE if step % 2 else "hi"))
            assert verdict.action is (Action.REJECT if step % 2 else Action.ACCEPT)  # as without stats
            assert recorder.flush()
            clock.now += 10
    pipeline.close()
    warnings = [r.getMessage() for r in caplog.records if r.name == "filterd.stats"]
    assert len(warnings) == 2  # at 0 s and at 60 s
    assert "Redis unavailable" in warnings[0] and "mail is not affected" in warnings[0]
    assert "(6 since the last warning" in warnings[1]


def test_a_stalled_redis_is_backed_off(redis_server: RedisServer) -> None:
    """Within retry_after after an error no round trip is tried (a hung Redis costs one timeout)."""
    calls = []
    clock = Clock()

    def broken() -> Any:
        calls.append(1)
        raise redis.ConnectionError("down")

    recorder = StatsRecorder(parse_config({"stats": {"retry_after": 10.0}}).stats, "x:", broken, clock)
    tx, verdict = Transaction(Session()), Verdict(0.0, 5.0, Action.ACCEPT, [])
    assert recorder.record(tx, verdict)  # queued; the sender's round trip fails
    assert recorder.flush()
    clock.now += 5
    assert not recorder.record(tx, verdict)  # backed off: not even queued
    assert recorder.flush()
    assert len(calls) == 1 and recorder.lost_total == 2
    clock.now += 6
    recorder.client = lambda: client(redis_server)
    assert recorder.record(tx, verdict)
    assert recorder.flush()
    assert len(calls) == 1 and recorder.counted_total == 1


def test_redis_down_then_up_counts_again_after_the_back_off(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    own = RedisServer(tmp_path / "redis")
    own.start()
    try:
        key_prefix, clock = prefix(), Clock()
        config = parse_config({"redis": {"url": own.url, "timeout": 0.5}, "stats": {"retry_after": 5.0}})
        pipeline = Pipeline.from_config(config)
        recorder = StatsRecorder(config.stats, key_prefix, lambda: pipeline.services.redis, clock)
        tx, verdict = Transaction(Session()), Verdict(0.0, 5.0, Action.ACCEPT, [])
        ts = 1_700_000_000.0
        for _ in range(3):
            assert recorder.record(tx, verdict, ts=ts)
        assert recorder.flush() and recorder.counted_total == 3
        own.stop()
        with caplog.at_level(logging.WARNING, logger="filterd.stats"):
            for _ in range(4):  # one batch: lost, and Redis backed off
                assert recorder.record(tx, verdict, ts=ts)
            assert recorder.flush()
            assert not recorder.record(tx, verdict, ts=ts)  # within retry_after
        assert recorder.lost_total == 5
        assert any("Redis unavailable" in rec.getMessage() for rec in caplog.records)
        own.start()
        clock.now += 6
        for _ in range(2):
            assert recorder.record(tx, verdict, ts=ts)
        assert recorder.flush()
        assert (recorder.counted_total, recorder.lost_total) == (5, 5)
        got = hash_of(redis.Redis.from_url(own.url), StatsKeys(key_prefix).hour(hour_bucket(ts)))
        assert got == {"received": 2, "accepted": 2}  # the last two (this Redis keeps nothing on disk)
        pipeline.close()
    finally:
        own.stop()


# -- filterctl stats ---------------------------------------------------------------------------


def seed(server: RedisServer, key_prefix: str, now: float) -> dict[str, int]:
    """Record a known mix of verdicts over the last 20 hours; return the totals recorded."""
    recorder = StatsRecorder(parse_config({}).stats, key_prefix, lambda: client(server))
    recorded = dict.fromkeys(COUNTERS, 0)
    actions = [Action.ACCEPT, Action.ACCEPT, Action.ADD_HEADER, Action.REJECT, Action.TEMPFAIL, Action.ACCEPT]
    for i in range(60):
        action = actions[i % len(actions)]
        symbols = [Symbol("GTUBE", 1000.0, "")] if action is Action.REJECT else []
        if i % 10 == 0:
            symbols.append(Symbol("CLAM_VIRUS", 0.0, "Eicar"))
        tx = Transaction(Session(), mail_from=f"s{i % 3}@d{i % 3}.example", rcpts=["b@example.net"])
        assert recorder.record(tx, Verdict(0.0, 5.0, action, symbols), ts=now - 3600 * (i % 20))
        recorded["received"] += 1
        recorded[stats.outcome_of(Verdict(0.0, 5.0, action, []))] += 1
        recorded["virus"] += 1 if i % 10 == 0 else 0
    assert recorder.flush() and recorder.counted_total == 60
    return recorded


def config_file(tmp_path: Path, server: RedisServer, key_prefix: str) -> Path:
    path = tmp_path / "filterd.toml"
    write_toml(path, {"redis": {"url": server.url, "key_prefix": key_prefix}})
    return path


def test_stats_json_and_table_show_the_counters(redis_server: RedisServer, tmp_path: Path) -> None:
    key_prefix, now = prefix(), time.time()
    recorded = seed(redis_server, key_prefix, now)
    path = config_file(tmp_path, redis_server, key_prefix)
    result = CliRunner().invoke(cli, ["--config", str(path), "stats", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["period"] == "hour" and len(doc["buckets"]) == 24
    assert doc["totals"] == recorded
    assert sum(b["received"] for b in doc["buckets"]) == 60
    assert doc["top_symbols"][0] == {"symbol": "GTUBE", "count": 10}
    assert {d["domain"] for d in doc["top_rejected_domains"]} == {"d0.example"}  # i % 6 == 3: i % 3 == 0

    result = CliRunner().invoke(cli, ["--config", str(path), "stats", "--period", "day", "--last", "3"])
    assert result.exit_code == 0 and "total" in result.output and "GTUBE" in result.output
    assert "d0.example" in result.output


def test_stats_without_redis_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "filterd.toml"
    write_toml(path, {"redis": {"url": f"redis://127.0.0.1:{free_port()}/0", "timeout": 0.2}})
    result = CliRunner().invoke(cli, ["--config", str(path), "stats"])
    assert result.exit_code == 1 and "Redis:" in result.output and "Traceback" not in result.output


def test_graph_is_a_png_whose_lines_are_the_counters(redis_server: RedisServer, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    key_prefix, now = prefix(), time.time()
    recorded = seed(redis_server, key_prefix, now)
    buckets = read_buckets(client(redis_server), key_prefix, "hour", 24, now)
    plotted = plot(buckets, "hour", tmp_path / "direct.png", "test")
    for name in ("received", "accepted", "rejected", "tagged", "tempfailed", "virus"):
        assert plotted[name] == [b.counts[name] for b in buckets]  # every bucket as Redis holds it
        assert sum(plotted[name]) == recorded[name] == totals(buckets)[name]
    assert recorded["received"] == 60 and recorded["rejected"] == 10

    out = tmp_path / "day.png"
    path = config_file(tmp_path, redis_server, key_prefix)
    result = CliRunner().invoke(
        cli,
        ["--config", str(path), "stats", "graph", "--period", "day", "-o", str(out)],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert "60 messages received" in result.output
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert 10_000 < len(data) < 2_000_000
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (900, 600)


# -- end to end: Postfix -> filterd -> Redis -> filterctl stats --------------------------------------


@pytest.mark.stack
def test_e2e_accept_reject_tag_counted_and_in_history(stack: Stack, redis_server: RedisServer) -> None:
    key_prefix = prefix()
    with stack.configured(settings_for(redis_server, key_prefix)) as filterd:
        clean, clean_marker = make_message("clean")
        assert stack.send(clean) == {}
        spam, spam_marker = make_message("gtube", body=f"{GTUBE}\r\n")
        with pytest.raises(smtplib.SMTPDataError) as info:
            stack.send(spam)
        assert info.value.smtp_code == 550
        tagged, tagged_marker = make_message("tagged")
        tagged = b"\r\n".join(line for line in tagged.split(b"\r\n") if not line.startswith(b"Message-ID:"))
        assert stack.send(tagged) == {}
        stack.sink.find(tagged_marker)
        config_path = filterd.config_path
        result = subprocess.run(
            [
                *(sys.executable, "-c", "from filterd.cli.filterctl import main; main()"),
                *("--config", str(config_path), "stats", "--json", "--last", "2"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    doc = json.loads(result.stdout)
    expected = dict.fromkeys(COUNTERS, 0) | {"received": 3, "accepted": 1, "rejected": 1, "tagged": 1}
    assert doc["totals"] == expected
    history = stats.read_history(client(redis_server), key_prefix, 10)
    assert [e["action"] for e in history] == ["add_header", "reject", "accept"]
    for entry, marker in zip(history, (tagged_marker, spam_marker, clean_marker), strict=True):
        assert set(entry) == HISTORY_FIELDS
        assert marker in entry["subject"]
        assert entry["qid"] and entry["from"] == "alice@example.org" and entry["rcpts"] == ["bob@example.net"]
        assert entry["client"] == "127.0.0.1" and entry["direction"] == "inbound"
    assert any(name == "GTUBE" for name, _ in history[1]["symbols"])
    assert doc["top_rejected_domains"] == [{"domain": "example.org", "count": 1}]


@pytest.mark.stack
def test_e2e_redis_down_loses_no_mail(stack: Stack, tmp_path: Path) -> None:
    own = RedisServer(tmp_path / "redis")
    own.start()
    try:
        with stack.configured(settings_for(own, prefix())) as filterd:
            msg, marker = make_message("redis up")
            assert stack.send(msg) == {}
            own.stop()
            msg, marker = make_message("redis down")
            assert stack.send(msg) == {}  # counting failed; the message is delivered all the same
            stack.sink.find(marker)
            msg, marker = make_message("redis still down")
            assert stack.send(msg) == {}
            stack.sink.find(marker)
            assert "stats: Redis unavailable, verdicts not counted" in filterd.log()
    finally:
        own.stop()


@pytest.mark.stack
def test_e2e_a_reload_while_mail_flows_loses_no_counts(stack: Stack, redis_server: RedisServer) -> None:
    """The replaced workers write their queued verdicts before they exit (stats.flush in the
    drain watcher): every message Postfix took while filterd reloaded is counted exactly once."""
    key_prefix, r = prefix(), client(redis_server)
    with stack.configured(settings_for(redis_server, key_prefix)) as filterd:
        delivered: list[str] = []
        failed: list[BaseException] = []
        stop = threading.Event()

        def flow() -> None:
            while not stop.is_set():
                msg, marker = make_message("flowing")
                try:
                    stack.send(msg)
                except (smtplib.SMTPException, OSError) as exc:
                    failed.append(exc)
                else:
                    delivered.append(marker)

        senders = [threading.Thread(target=flow) for _ in range(3)]
        for t in senders:
            t.start()
        try:
            wait_for(lambda: len(delivered) >= 10, 30, "mail to flow")
            filterd.reload()
            wait_for(
                lambda: filterd.log().count("replaced by the reload, finished") >= 2,
                30,
                "the old workers to exit",
            )
        finally:
            stop.set()
            for t in senders:
                t.join()
        assert failed == [] and len(delivered) >= 10
        # the new workers write within their interval; the old ones wrote before exiting
        wait_for(
            lambda: counted(r, key_prefix, "day").get("received", 0) >= len(delivered),
            10,
            "the verdicts to be written",
        )
        time.sleep(0.5)  # and nothing more comes
        assert counted(r, key_prefix, "day") == {"received": len(delivered), "accepted": len(delivered)}
        markers = [e["subject"] for e in stats.read_history(r, key_prefix, 10_000)]
        assert len(markers) == len(delivered)
        assert sorted(m.split()[-1] for m in markers) == sorted(delivered)

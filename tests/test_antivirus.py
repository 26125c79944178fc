"""The antivirus check through the pipeline, against real clamd and redis-server."""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from filterd.checks.antivirus import Antivirus
from filterd.clamd import ScanResult
from filterd.config import Config, parse_config
from filterd.driver import SmtpContext, scan
from filterd.pipeline import Pipeline
from filterd.replies import Reject, TempFail
from filterd.report import is_forgeable
from filterd.results import Action, Verdict
from filterd.scancache import ScanCache, write_secret
from filterd.scanlimits import ScanLimits, exceeded
from filterd.services import Services
from filterd.settings import ConfigError
from filterd.transaction import Transaction
from tests.harness import avsamples
from tests.harness.clamd import ClamdServer, cache_key_file
from tests.harness.net import free_port
from tests.harness.redis import RedisServer

CTX = SmtpContext(
    client_addr="192.0.2.10", helo="mx.example.test", mail_from="a@example.test", rcpts=("b@example.test",)
)


def make_config(sockets: list[str], redis_url: str, prefix: str | None = None, **av: Any) -> Config:
    av.setdefault("cache_key_file", cache_key_file())
    return parse_config(
        {
            "redis": {"url": redis_url, "key_prefix": prefix or f"t{secrets.token_hex(4)}:"},
            "network": {"hostname": "mx.example.test"},
            "checks": {"antivirus": {"enabled": True, "sockets": sockets, "timeout": 2.0, **av}},
        }
    )


def cache_of(config: Config, check: Antivirus) -> ScanCache:
    return ScanCache(
        Services(config).redis, config.redis.key_prefix, 3600, check.s.cache_headers, check.cache_secret
    )


@pytest.fixture
def make_pipeline() -> Iterator[Any]:
    made: list[Pipeline] = []

    def build(config: Config) -> Pipeline:
        p = Pipeline.from_config(config)
        made.append(p)
        return p

    yield build
    for p in made:
        p.close()


def run(pipeline: Pipeline, raw: bytes) -> tuple[Transaction, Verdict]:
    return scan(pipeline, raw, CTX)


def headers_of(verdict: Verdict) -> dict[str, str]:
    return {h.name: h.value for h in verdict.add_headers}


def symbols_of(verdict: Verdict) -> dict[str, str]:
    return {s.name: s.reason for s in verdict.symbols}


@pytest.fixture
def private_clamd(tmp_path: Path) -> Iterator[ClamdServer]:
    """A clamd this test may stop or pause without disturbing the others."""
    server = ClamdServer(tmp_path / "clamd")
    server.start()
    yield server
    server.stop()


@pytest.mark.parametrize("make", [avsamples.eicar_plain, avsamples.eicar_base64, avsamples.eicar_zip])
def test_infected_is_rejected_naming_the_virus(
    make: Any, clamd_server: ClamdServer, redis_server: RedisServer, make_pipeline: Any
) -> None:
    p = make_pipeline(make_config([clamd_server.unix_address], redis_server.url))
    _, verdict = run(p, make())
    assert verdict.action is Action.REJECT
    assert isinstance(verdict.decision, Reject)
    reply = str(verdict.decision.reply)
    assert reply.startswith("554 5.7.1 ") and "Eicar-Test-Signature" in reply
    assert "Eicar-Test-Signature" in symbols_of(verdict)["CLAM_VIRUS"]


def test_corpus_malware_is_rejected(
    corpus: Path, clamd_server: ClamdServer, redis_server: RedisServer, make_pipeline: Any
) -> None:
    p = make_pipeline(make_config([clamd_server.tcp_address], redis_server.url))
    for mail in sorted((corpus / "malware-testmails" / "spam").glob("*.eml")):
        _, verdict = run(p, mail.read_bytes())
        assert verdict.action is Action.REJECT, mail.name
        assert "CLAM_VIRUS" in symbols_of(verdict), mail.name


def test_clean_mail_gets_the_headers(
    clamd_server: ClamdServer, redis_server: RedisServer, make_pipeline: Any
) -> None:
    p = make_pipeline(make_config([clamd_server.unix_address], redis_server.url))
    _, verdict = run(p, avsamples.clean())
    assert verdict.action is Action.ACCEPT
    h = headers_of(verdict)
    assert h["X-Virus-Status"] == "Clean"
    assert h["X-Virus-Scanned"].startswith("ClamAV ") and h["X-Virus-Scanned"].endswith(" at mx.example.test")
    assert not [s for s in verdict.symbols if s.name.startswith("CLAM_")]


def test_quarantine_and_discard_policies(
    clamd_server: ClamdServer, redis_server: RedisServer, make_pipeline: Any
) -> None:
    q = make_pipeline(make_config([clamd_server.unix_address], redis_server.url, on_infected="quarantine"))
    _, verdict = run(q, avsamples.eicar_zip())
    assert verdict.action is Action.QUARANTINE
    assert headers_of(verdict)["X-Virus-Status"].startswith("Infected (Eicar-Test-Signature")
    assert "Eicar-Test-Signature" in verdict.decision.reason  # type: ignore[union-attr]
    d = make_pipeline(make_config([clamd_server.unix_address], redis_server.url, on_infected="discard"))
    _, verdict = run(d, avsamples.eicar_zip())
    assert verdict.action is Action.DISCARD


def test_clamd_stopped_tempfails_by_default(
    private_clamd: ClamdServer, redis_server: RedisServer, make_pipeline: Any
) -> None:
    p = make_pipeline(make_config([private_clamd.unix_address], redis_server.url, cache_ttl=0))
    assert run(p, avsamples.clean())[1].action is Action.ACCEPT
    private_clamd.stop()
    _, verdict = run(p, avsamples.clean())
    assert verdict.action is Action.TEMPFAIL
    assert isinstance(verdict.decision, TempFail)
    assert str(verdict.decision.reply).startswith("451 4.3.0")
    assert "CLAM_VIRUS_FAIL" in symbols_of(verdict)
    private_clamd.start()  # and once it is back, mail flows again
    assert run(p, avsamples.eicar_plain())[1].action is Action.REJECT


def test_clamd_stopped_accept_policy_marks_not_scanned(
    private_clamd: ClamdServer, redis_server: RedisServer, make_pipeline: Any
) -> None:
    p = make_pipeline(
        make_config([private_clamd.unix_address], redis_server.url, cache_ttl=0, on_unavailable="accept")
    )
    private_clamd.stop()
    _, verdict = run(p, avsamples.eicar_plain())
    assert verdict.action is Action.ACCEPT
    assert headers_of(verdict)["X-Virus-Status"].startswith("Not scanned")
    assert "X-Virus-Scanned" not in headers_of(verdict)
    assert "clamd unavailable" in symbols_of(verdict)["CLAM_VIRUS_FAIL"]


def test_slow_clamd_tempfails_within_the_timeout(
    private_clamd: ClamdServer, redis_server: RedisServer, make_pipeline: Any
) -> None:
    p = make_pipeline(make_config([private_clamd.unix_address], redis_server.url, cache_ttl=0, timeout=0.5))
    private_clamd.pause()
    try:
        tx, verdict = run(p, avsamples.clean())
    finally:
        private_clamd.resume()
    assert verdict.action is Action.TEMPFAIL
    assert "timed out" in symbols_of(verdict)["CLAM_VIRUS_FAIL"]
    assert sum(tx.timings.values()) < 2.0


def test_second_identical_scan_is_a_cache_hit(
    private_clamd: ClamdServer, redis_server: RedisServer, make_pipeline: Any
) -> None:
    config = make_config([private_clamd.unix_address], redis_server.url)
    p = make_pipeline(config)
    check = next(c for c in p.checks if isinstance(c, Antivirus))
    cache = cache_of(config, check)
    first = avsamples.clean(to="one@example.test", msgid="<a@x>")
    assert run(p, first)[1].action is Action.ACCEPT
    assert cache.counters() == {"hits": 0, "misses": 1}
    # clamd gone: only the cache can answer.  Another copy of the same bulk mail (other To,
    # other Message-ID, same body) is a hit; the EICAR message is not, and so tempfails.
    private_clamd.stop()
    _, verdict = run(p, avsamples.clean(to="two@example.test", msgid="<b@x>"))
    assert verdict.action is Action.ACCEPT and headers_of(verdict)["X-Virus-Status"] == "Clean"
    assert cache.counters() == {"hits": 1, "misses": 1}
    assert run(p, avsamples.eicar_plain())[1].action is Action.TEMPFAIL
    assert cache.counters() == {"hits": 1, "misses": 2}


def test_infected_results_are_cached_too(
    clamd_server: ClamdServer, redis_server: RedisServer, make_pipeline: Any
) -> None:
    config = make_config([clamd_server.unix_address], redis_server.url)
    p = make_pipeline(config)
    check = next(c for c in p.checks if isinstance(c, Antivirus))
    for _ in range(3):
        _, verdict = run(p, avsamples.eicar_zip())
        assert verdict.action is Action.REJECT
    assert cache_of(config, check).counters() == {"hits": 2, "misses": 1}
    assert "(cached)" in symbols_of(verdict)["CLAM_VIRUS"]


def test_mime_headers_are_part_of_the_cache_key() -> None:
    """One body, two Content-Types: clamd decodes them differently, so they must not share a result."""
    from filterd.message import Message

    cache = ScanCache(None, "p:", 60, ("Content-Type",))
    zipped = avsamples.eicar_zip()
    relabelled = zipped.replace(b'multipart/mixed; boundary="b0undary"', b"text/plain")
    other_copy = zipped.replace(b"To: rcpt@example.test", b"To: other@example.test")
    key = cache.key("ClamAV 1.4.6", Message(zipped))
    assert cache.key("ClamAV 1.4.6", Message(other_copy)) == key
    assert cache.key("ClamAV 1.4.6", Message(relabelled)) != key
    assert cache.key("ClamAV 1.4.6/27000", Message(zipped)) != key  # a signature update
    assert key.startswith("p:av:")


def test_redis_down_does_not_stop_scanning(clamd_server: ClamdServer, make_pipeline: Any) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    p = make_pipeline(make_config([clamd_server.unix_address], dead))
    _, verdict = run(p, avsamples.eicar_base64())
    assert verdict.action is Action.REJECT
    assert "CLAM_CACHE_FAIL" in symbols_of(verdict)
    _, verdict = run(p, avsamples.clean())
    assert verdict.action is Action.ACCEPT
    assert headers_of(verdict)["X-Virus-Status"] == "Clean"
    assert (
        "skipped: it failed moments ago" in symbols_of(verdict)["CLAM_CACHE_FAIL"]
    )  # not retried per message


def test_redis_that_does_not_answer_costs_one_timeout_not_one_per_message(
    clamd_server: ClamdServer, make_pipeline: Any
) -> None:
    import socket as socketlib

    with socketlib.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        config = parse_config(
            {
                "redis": {"url": url, "timeout": 0.3},
                "checks": {
                    "antivirus": {
                        "enabled": True,
                        "sockets": [clamd_server.unix_address],
                        "cache_key_file": cache_key_file(),
                    }
                },
            }
        )
        p = make_pipeline(config)
        started = time.monotonic()
        verdicts = [run(p, avsamples.clean(msgid=f"<{i}@x>"))[1] for i in range(10)]
        elapsed = time.monotonic() - started
    assert all(v.action is Action.ACCEPT for v in verdicts)
    assert all("CLAM_CACHE_FAIL" in symbols_of(v) for v in verdicts)
    assert elapsed < 2.0, elapsed  # one 0.3 s timeout, not ten


@pytest.mark.parametrize(
    ("policy", "action", "code"),
    [
        ("accept", Action.ACCEPT, None),
        ("tempfail", Action.TEMPFAIL, "452 4.3.4"),
        ("reject", Action.REJECT, "552 5.3.4"),
    ],
)
def test_over_max_size(
    policy: str,
    action: Action,
    code: str | None,
    clamd_server: ClamdServer,
    redis_server: RedisServer,
    make_pipeline: Any,
) -> None:
    p = make_pipeline(
        make_config([clamd_server.unix_address], redis_server.url, max_size=200, on_oversize=policy)
    )
    _, verdict = run(p, avsamples.eicar_zip())
    if action is Action.ACCEPT:
        # delivered unscanned; the attachment rules may still tag it: eicar.com, a program, is
        # inside the zip (ATTACH_EXECUTABLE reads the archive's file names)
        assert verdict.action in (Action.ACCEPT, Action.ADD_HEADER)
        assert "ATTACH_EXECUTABLE" in symbols_of(verdict)
    else:
        assert verdict.action is action
    assert "not scanned" in symbols_of(verdict)["CLAM_SKIPPED_SIZE"]
    if code is None:
        assert headers_of(verdict)["X-Virus-Status"].startswith("Not scanned (message too large")
    else:
        assert str(verdict.decision.reply).startswith(code)  # type: ignore[union-attr]


@pytest.mark.parametrize("action", ["reject", "tempfail", "accept"])
def test_over_milter_max_scan_bytes_follows_oversize_action(
    action: str, clamd_server: ClamdServer, redis_server: RedisServer, make_pipeline: Any
) -> None:
    """Past [milter] max_scan_bytes the body is not kept: [milter] oversize_action decides (reject
    by default), and the antivirus check says Not scanned, never Clean."""
    milter: dict[str, Any] = {"max_scan_bytes": 300}
    if action != "reject":
        milter["oversize_action"] = action
    config = parse_config(
        {
            "milter": milter,
            "redis": {"url": redis_server.url},
            "checks": {"antivirus": {"enabled": True, "sockets": [clamd_server.unix_address]}},
        }
    )
    p = make_pipeline(config)
    tx, verdict = run(p, avsamples.eicar_zip())
    assert "SCAN_SKIPPED_SIZE" in symbols_of(verdict)
    if action == "reject":
        assert verdict.action is Action.REJECT
        assert str(verdict.decision.reply) == (  # type: ignore[union-attr]
            "552 5.3.4 Message size exceeds the limit of 300 bytes of this site's content filter"
        )
    elif action == "tempfail":
        assert verdict.action is Action.TEMPFAIL
        assert str(verdict.decision.reply).startswith("452 4.3.4 ")  # type: ignore[union-attr]
    else:
        assert verdict.action is Action.ACCEPT and "CLAM_SKIPPED_SIZE" in symbols_of(verdict)
        assert headers_of(verdict)["X-Virus-Status"] == f"Not scanned (message too large: {tx.size} bytes)"


def test_oversize_action_holds_with_the_message_size_check_off(
    clamd_server: ClamdServer, redis_server: RedisServer, make_pipeline: Any
) -> None:
    config = parse_config(
        {
            "milter": {"max_scan_bytes": 300},
            "redis": {"url": redis_server.url},
            "checks": {
                "message_size": {"enabled": False},
                "antivirus": {"enabled": True, "sockets": [clamd_server.unix_address]},
            },
        }
    )
    _, verdict = run(make_pipeline(config), avsamples.eicar_zip())
    assert verdict.action is Action.REJECT and "CLAM_SKIPPED_SIZE" in symbols_of(verdict)
    assert str(verdict.decision.reply).startswith("552 5.3.4 ")  # type: ignore[union-attr]


def test_oversize_action_applies_to_outbound_mail_too(
    clamd_server: ClamdServer, redis_server: RedisServer, make_pipeline: Any
) -> None:
    config = parse_config({"milter": {"max_scan_bytes": 300}, "redis": {"url": redis_server.url}})
    outbound = SmtpContext(auth_user="alice", mail_from="alice@example.test", rcpts=("x@example.org",))
    _, verdict = scan(make_pipeline(config), avsamples.eicar_zip(), outbound)
    assert verdict.action is Action.REJECT


def test_oversized_by_clamd_stream_max_length(
    tmp_path: Path, redis_server: RedisServer, make_pipeline: Any
) -> None:
    small = ClamdServer(tmp_path / "small", {"StreamMaxLength": "1K"})
    small.start()
    try:
        p = make_pipeline(make_config([small.unix_address], redis_server.url, on_oversize="tempfail"))
        big = avsamples.clean() + b"x" * 5000 + b"\r\n"
        _, verdict = run(p, big)
        assert verdict.action is Action.TEMPFAIL
        assert "StreamMaxLength" in symbols_of(verdict)["CLAM_SKIPPED_SIZE"]
    finally:
        small.stop()


def test_outbound_mail_is_scanned_too(
    clamd_server: ClamdServer, redis_server: RedisServer, make_pipeline: Any
) -> None:
    p = make_pipeline(make_config([clamd_server.unix_address], redis_server.url))
    outbound = SmtpContext(auth_user="alice", mail_from="alice@example.test", rcpts=("x@example.org",))
    _, verdict = scan(p, avsamples.eicar_zip(), outbound)
    assert verdict.action is Action.REJECT
    _, verdict = scan(p, avsamples.clean(), outbound)
    assert headers_of(verdict)["X-Virus-Status"] == "Clean"


def test_start_with_no_clamd_is_loud_not_fatal(
    tmp_path: Path, redis_server: RedisServer, make_pipeline: Any, caplog: pytest.LogCaptureFixture
) -> None:
    p = make_pipeline(make_config([f"unix:{tmp_path}/none.sock"], redis_server.url))
    assert "no clamd answers" in caplog.text
    assert run(p, avsamples.clean())[1].action is Action.TEMPFAIL


def test_failover_in_the_check(
    clamd_server: ClamdServer, redis_server: RedisServer, make_pipeline: Any, tmp_path: Path
) -> None:
    p = make_pipeline(
        make_config([f"unix:{tmp_path}/down.sock", clamd_server.tcp_address], redis_server.url, cache_ttl=0)
    )
    assert run(p, avsamples.eicar_plain())[1].action is Action.REJECT


def test_disabled_by_default_and_settings_validated() -> None:
    assert not parse_config({}).check_settings("antivirus").enabled
    with pytest.raises(ConfigError, match=r"checks\.antivirus\.sockets"):
        parse_config({"checks": {"antivirus": {"sockets": ["clamd.sock"]}}})
    with pytest.raises(ConfigError, match=r"checks\.antivirus\.sockets"):
        parse_config({"checks": {"antivirus": {"sockets": []}}})
    with pytest.raises(ConfigError, match=r"checks\.antivirus\.on_infected"):
        parse_config({"checks": {"antivirus": {"on_infected": "bounce"}}})


def test_incoming_virus_headers_are_forgeable() -> None:
    """The milter removes incoming headers that are forgeable before adding ours."""
    assert is_forgeable("X-Virus-Status") and is_forgeable("x-virus-scanned")
    assert not is_forgeable("X-Virusfree-Promise")


# -- past clamd's limits: never "Clean" ------------------------------------------------------------

PAST_LIMITS = {
    "mime19": (lambda: avsamples.eicar_nested_multipart(19), "MaxRecursion"),
    "zip18": (lambda: avsamples.eicar_nested_zip(18), "MaxRecursion"),
    # missed at MaxRecursion 16 (Debian's value, and contrib's): the test clamd runs with it
    "mime18": (lambda: avsamples.eicar_nested_multipart(18), "MaxRecursion"),
    "zip15": (lambda: avsamples.eicar_nested_zip(15), "MaxRecursion"),
    "zip-member-over-25MiB": (lambda: avsamples.eicar_behind_big_member(eicar_in_big=True), "MaxFileSize"),
}


@pytest.fixture(scope="module")
def clamd_without_alert(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClamdServer]:
    """A clamd as Debian ships it: no AlertExceedsMax, so it answers OK past its limits."""
    server = ClamdServer(tmp_path_factory.mktemp("clamd-noalert"), {"AlertExceedsMax": "no"})
    server.start()
    yield server
    server.stop()


@pytest.mark.parametrize("alert", [True, False], ids=["AlertExceedsMax", "no-AlertExceedsMax"])
@pytest.mark.parametrize("sample", list(PAST_LIMITS))
def test_eicar_past_clamd_limits_is_never_clean(
    sample: str,
    alert: bool,
    clamd_server: ClamdServer,
    clamd_without_alert: ClamdServer,
    redis_server: RedisServer,
    make_pipeline: Any,
) -> None:
    make, limit = PAST_LIMITS[sample]
    clamd = clamd_server if alert else clamd_without_alert
    p = make_pipeline(make_config([clamd.unix_address], redis_server.url))
    _, verdict = run(p, make())
    assert verdict.action is Action.REJECT
    reply = str(verdict.decision.reply)  # type: ignore[union-attr]
    assert reply.startswith("554 5.7.1 Message rejected: it cannot be fully scanned for viruses")
    assert limit in reply
    assert limit in symbols_of(verdict)["CLAM_UNSCANNABLE"]
    assert "X-Virus-Status" not in headers_of(verdict)


def test_clamd_alone_answers_ok_past_its_limits_without_alert(clamd_without_alert: ClamdServer) -> None:
    """Why filterd counts for itself: clamd without AlertExceedsMax calls all three samples clean,
    and even with it the oversized zip member (trimmed silently) comes back OK."""
    from filterd.clamd import ClamdPool

    def scan_with(address: str, raw: bytes) -> tuple[str, ...]:
        return ClamdPool((address,), 10.0, 1.0, 1.0).scan(raw).viruses

    for make, _ in PAST_LIMITS.values():
        assert scan_with(clamd_without_alert.unix_address, make()) == ()
    # just inside its limits (MaxRecursion 16), clamd does find EICAR
    assert scan_with(clamd_without_alert.unix_address, avsamples.eicar_nested_multipart(17))
    assert scan_with(clamd_without_alert.unix_address, avsamples.eicar_nested_zip(14))


def test_alert_exceeds_max_names_the_limit(clamd_server: ClamdServer) -> None:
    from filterd.clamd import ClamdPool

    pool = ClamdPool((clamd_server.unix_address,), 10.0, 1.0, 1.0)
    result = pool.scan(avsamples.eicar_nested_zip(18))
    assert result.viruses == ("Heuristics.Limits.Exceeded.MaxRecursion",)
    assert not result.infected and result.unscannable == result.viruses
    # ...but not for a zip member over MaxFileSize: clamd trims it and says OK
    assert pool.scan(avsamples.eicar_behind_big_member(eicar_in_big=True)).viruses == ()


@pytest.mark.parametrize("policy", ["accept", "quarantine"])
def test_unscannable_accept_and_quarantine_say_unscanned(
    policy: str, clamd_server: ClamdServer, redis_server: RedisServer, make_pipeline: Any
) -> None:
    p = make_pipeline(make_config([clamd_server.unix_address], redis_server.url, on_unscannable=policy))
    _, verdict = run(p, avsamples.eicar_nested_zip(18))
    # accepted, and its score (6 here, with HELO_IS_OURS) marks it as spam
    assert verdict.action is (Action.ADD_HEADER if policy == "accept" else Action.QUARANTINE)
    h = headers_of(verdict)
    assert h["X-Virus-Status"] == "Unscanned (limits exceeded: MaxRecursion)"
    assert h["X-Virus-Scanned"].startswith("ClamAV ")
    assert next(s.score for s in verdict.symbols if s.name == "CLAM_UNSCANNABLE") == 6.0


def test_a_cached_ok_is_not_clean_past_the_limits(
    clamd_without_alert: ClamdServer, redis_server: RedisServer, make_pipeline: Any
) -> None:
    """The limits are counted on every message, cache hit included."""
    p = make_pipeline(make_config([clamd_without_alert.unix_address], redis_server.url))
    for _ in range(2):
        _, verdict = run(p, avsamples.eicar_nested_multipart(19))
        assert verdict.action is Action.REJECT
    assert "(cached)" not in symbols_of(verdict)["CLAM_UNSCANNABLE"]  # clamd said OK; our count spoke


def test_a_virus_next_to_a_limit_is_a_virus(
    clamd_server: ClamdServer, redis_server: RedisServer, make_pipeline: Any
) -> None:
    p = make_pipeline(make_config([clamd_server.unix_address], redis_server.url))
    _, verdict = run(p, avsamples.eicar_behind_big_member())  # EICAR as its own member after the big one
    assert verdict.action is Action.REJECT
    assert "virus found: Eicar-Test-Signature" in str(verdict.decision.reply)  # type: ignore[union-attr]


def test_clean_nested_content_within_the_limits_is_clean(
    clamd_without_alert: ClamdServer, redis_server: RedisServer, make_pipeline: Any
) -> None:
    p = make_pipeline(make_config([clamd_without_alert.unix_address], redis_server.url))
    harmless = avsamples.nested_zip(5, inner=b"just text\n", inner_name="note.txt")
    raw = avsamples.attachment("five zips", "nested.zip", "application/zip", harmless)
    _, verdict = run(p, raw)
    assert verdict.action is Action.ACCEPT and headers_of(verdict)["X-Virus-Status"] == "Clean"


# -- filterd's own count (filterd/scanlimits.py), unit tests on generated archives ----------------

LIMITS = ScanLimits(max_recursion=17, max_file_size=1000, max_scan_size=5000, max_files=20)


def test_own_count_of_depth_and_sizes() -> None:
    from filterd.message import Message

    def problems(raw: bytes, limits: ScanLimits = LIMITS) -> list[str]:
        return exceeded(Message(raw), limits)

    clamds = ScanLimits(17, 25 * 1024 * 1024, 100 * 1024 * 1024, 10000)  # clamd's defaults
    assert problems(avsamples.eicar_zip(), clamds) == []
    assert problems(avsamples.eicar_nested_zip(15), clamds) == []  # MIME depth 1 + 15 zips
    assert problems(avsamples.eicar_nested_zip(16), clamds) == [
        "MaxRecursion (MIME depth 1 + archive depth 16 >= 17)"
    ]
    assert problems(avsamples.eicar_nested_multipart(16), clamds) == []
    assert problems(avsamples.eicar_nested_multipart(17), clamds) == ["MaxRecursion (MIME depth 17 >= 17)"]
    # a member over max_file_size, found from the central directory without unpacking it
    big = avsamples.attachment("big", "b.zip", "application/zip", avsamples.zip_with_big_member(1001))
    assert problems(big) == ["MaxFileSize (zip member 'big.bin' of 1001 bytes > 1000)"]
    # members adding up past max_scan_size, and too many members
    many = avsamples.attachment(
        "many", "m.zip", "application/zip", avsamples.zip_of([(f"f{i}", bytes(900)) for i in range(6)])
    )
    # the MIME parts count too (the text and the zip itself), as clamd counts what it scans
    [only] = problems(many)
    assert only.startswith("MaxScanSize (") and only.endswith(" bytes in parts and archive members > 5000)")
    assert problems(many, ScanLimits(17, 1000, 10_000, 5)) == ["MaxFiles (6 archive members > 5)"]


def test_own_count_reads_the_local_header_size_too() -> None:
    """clamd trusts the local header's size: a central directory that understates it is not believed."""
    from filterd.message import Message

    data = bytearray(avsamples.zip_of([("big.bin", bytes(2000))]))
    central = data.rfind(b"PK\x01\x02")
    assert central > 0
    data[central + 24 : central + 28] = (10).to_bytes(4, "little")  # the central directory says 10 bytes
    raw = avsamples.attachment("liar", "l.zip", "application/zip", bytes(data))
    assert exceeded(Message(raw), LIMITS) == ["MaxFileSize (zip member 'big.bin' of 2000 bytes > 1000)"]


def test_own_count_survives_broken_and_absurd_input() -> None:
    from filterd.message import Message

    broken = avsamples.attachment(
        "broken", "x.zip", "application/zip", b"PK\x03\x04" + bytes(100) + b"PK\x05\x06"
    )
    assert exceeded(Message(broken), LIMITS) == []  # unreadable: clamd's to judge, no exception
    deep = Message(avsamples.eicar_nested_multipart(5000))
    assert deep.mime_depth == 5000  # read to the bottom, without recursion
    assert exceeded(deep, LIMITS)[0].startswith("MaxRecursion")


def test_unscannable_names() -> None:
    from filterd.clamd import ScanResult, is_unscannable

    assert is_unscannable("Heuristics.Limits.Exceeded.MaxFileSize")
    assert is_unscannable("Heuristics.Broken.Executable") and is_unscannable("Heuristics.Encrypted.Zip")
    assert not is_unscannable("Heuristics.Phishing.Email.SpoofedDomain")
    assert not is_unscannable("Eicar-Test-Signature")
    mixed = ScanResult(("Heuristics.Limits.Exceeded.MaxRecursion", "Eicar-Test-Signature"), "x")
    assert mixed.infected and mixed.threats == ("Eicar-Test-Signature",)


# -- the cache is signed: Redis is not trusted -----------------------------------------------------


def test_forged_clean_entry_in_redis_does_not_let_eicar_through(
    clamd_server: ClamdServer, redis_server: RedisServer, make_pipeline: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Any local user can write to an unprotected Redis: a "clean" written there straight (as the
    old, unsigned format, and as a genuine signed "clean" copied from another message's key) is
    ignored, logged, and the message is scanned and rejected."""
    import redis as redislib

    from filterd.message import Message

    config = make_config([clamd_server.unix_address], redis_server.url)
    p = make_pipeline(config)
    check = next(c for c in p.checks if isinstance(c, Antivirus))
    cache = cache_of(config, check)
    eicar = avsamples.eicar_zip()
    key = cache.key(check.engine_version(), Message(eicar))
    attacker = redislib.Redis.from_url(redis_server.url)
    attacker.set(key, b"clean")  # the format the cache used before it was signed
    _, verdict = run(p, eicar)
    assert verdict.action is Action.REJECT and "Eicar-Test-Signature" in symbols_of(verdict)["CLAM_VIRUS"]
    assert "(cached)" not in symbols_of(verdict)["CLAM_VIRUS"]
    assert f"entry {key} has no valid signature" in caplog.text
    # a genuine signed "clean" of a clean message, replayed under EICAR's key
    clean_key = cache.key(check.engine_version(), Message(avsamples.clean()))
    assert run(p, avsamples.clean())[1].action is Action.ACCEPT
    attacker.set(key, attacker.get(clean_key))
    assert run(p, eicar)[1].action is Action.REJECT
    # and a "clean" signed with a key guessed wrong
    wrong = ScanCache(attacker, config.redis.key_prefix, 3600, check.s.cache_headers, b"0" * 32)
    wrong.put(key, ScanResult((), "x"))
    assert run(p, eicar)[1].action is Action.REJECT
    assert cache.forged() == 3
    # each time the fresh result overwrote the forgery: the next copy is a genuine cached hit
    _, verdict = run(p, eicar)
    assert verdict.action is Action.REJECT and "(cached)" in symbols_of(verdict)["CLAM_VIRUS"]


def test_no_key_file_means_no_cache(
    clamd_server: ClamdServer, redis_server: RedisServer, make_pipeline: Any
) -> None:
    config = make_config([clamd_server.unix_address], redis_server.url, cache_key_file="")
    p = make_pipeline(config)
    for _ in range(2):
        _, verdict = run(p, avsamples.eicar_zip())
        assert "(cached)" not in symbols_of(verdict)["CLAM_VIRUS"]
    assert ScanCache(Services(config).redis, config.redis.key_prefix, 1, ()).counters() == {
        "hits": 0,
        "misses": 0,
    }


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_key_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    key = tmp_path / "k"
    write_secret(key)
    key.chmod(mode)
    config = make_config([f"unix:{tmp_path}/none.sock"], "redis://127.0.0.1:1/0", cache_key_file=str(key))
    # the daemon builds the pipeline once at start (filterd/daemon.py build): it refuses to start
    with pytest.raises(ConfigError, match=r"cache_key_file: .* has mode 0\d{3}: group or other users"):
        Pipeline.from_config(config)


def test_key_file_problems_are_clear(tmp_path: Path) -> None:
    from filterd.scancache import SecretFileError, read_secret

    with pytest.raises(SecretFileError, match="cannot open"):
        read_secret(str(tmp_path / "missing"))
    short = tmp_path / "short"
    short.write_bytes(b"abc")
    short.chmod(0o600)
    with pytest.raises(SecretFileError, match="fewer than 16"):
        read_secret(str(short))
    link = tmp_path / "link"
    link.symlink_to(short)
    with pytest.raises(SecretFileError, match="cannot open"):
        read_secret(str(link))
    good = tmp_path / "good"
    write_secret(good)
    assert len(read_secret(str(good))) == 64 and (good.stat().st_mode & 0o777) == 0o600


def test_cache_on_a_password_protected_redis_over_a_unix_socket(
    tmp_path: Path, clamd_server: ClamdServer, make_pipeline: Any
) -> None:
    """The quick start's and contrib's Redis: requirepass, and only a unix socket of mode 0600."""
    password = secrets.token_hex(16)
    server = RedisServer(tmp_path / "redis", password=password, unix_socket=True)
    server.start()
    try:
        assert server.socket_path is not None and server.socket_path.stat().st_mode & 0o777 == 0o600
        base = make_config([clamd_server.unix_address], server.url)
        with_password = dataclasses.replace(base, redis=dataclasses.replace(base.redis, password=password))
        p = make_pipeline(with_password)
        for _ in range(2):
            _, verdict = run(p, avsamples.eicar_zip())
            assert verdict.action is Action.REJECT and "CLAM_CACHE_FAIL" not in symbols_of(verdict)
        assert "(cached)" in symbols_of(verdict)["CLAM_VIRUS"]
        # without the password Redis refuses (NOAUTH): the message is scanned all the same
        _, verdict = run(make_pipeline(base), avsamples.eicar_zip())
        assert verdict.action is Action.REJECT and "CLAM_CACHE_FAIL" in symbols_of(verdict)
        assert "(cached)" not in symbols_of(verdict)["CLAM_VIRUS"]
    finally:
        server.stop()

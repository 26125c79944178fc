"""End to end: client -> Postfix -> filterd (antivirus check, quarantine) -> clamd / Redis -> sink."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import smtplib
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from filterd.cli.filterctl import cli
from filterd.config import load_config
from tests.harness import avsamples
from tests.harness.clamd import ClamdServer, cache_key_file
from tests.harness.redis import RedisServer
from tests.harness.stack import Stack, make_message, private_dir

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def clamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClamdServer]:
    """This module's own clamd: one test stops and restarts it."""
    server = ClamdServer(tmp_path_factory.mktemp("e2e-clamd"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def qdir() -> Iterator[Path]:
    """A quarantine directory (under /tmp, not pytest's 0700 dirs: filterd may run as another user)."""
    path = private_dir("filterd-q-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def av_config(
    stack: Stack, clamd: ClamdServer, redis: RedisServer, quarantine_dir: Path, **av: Any
) -> dict[str, Any]:
    av.setdefault("cache_key_file", cache_key_file())
    return {
        "redis": {"url": redis.url, "key_prefix": f"e2e{secrets.token_hex(4)}:"},
        "network": {"hostname": "mx.filterd.test"},
        "checks": {"antivirus": {"enabled": True, "sockets": [clamd.unix_address], "timeout": 5.0, **av}},
        "quarantine": {
            "directory": str(quarantine_dir),
            "release_via": str(stack.postfix.reinject_socket),
        },
    }


def tagged(raw: bytes) -> tuple[bytes, str]:
    """The message with a unique marker appended to its Subject."""
    marker = f"m-{uuid.uuid4().hex[:12]}"
    head, sep, body = raw.partition(b"\r\n\r\n")
    lines = [
        line + b" " + marker.encode() if line.startswith(b"Subject:") else line
        for line in head.split(b"\r\n")
    ]
    if not any(line.startswith(b"Subject:") for line in lines):
        lines.append(b"Subject: " + marker.encode())
    return b"\r\n".join(lines) + sep + body, marker


def body_of(data: bytes) -> bytes:
    return data.partition(b"\r\n\r\n")[2]


@pytest.mark.parametrize(
    "make",
    [avsamples.eicar_plain, avsamples.eicar_base64, avsamples.eicar_zip],
    ids=["plain", "base64", "zip"],
)
def test_eicar_is_rejected_through_postfix(
    stack: Stack, clamd: ClamdServer, redis_server: RedisServer, qdir: Path, make: Any
) -> None:
    with stack.configured(av_config(stack, clamd, redis_server, qdir)):
        msg, marker = tagged(make())
        with pytest.raises(smtplib.SMTPDataError) as info:
            stack.send(msg)
    assert info.value.smtp_code == 554
    assert b"5.7.1" in info.value.smtp_error and b"Eicar-Test-Signature" in info.value.smtp_error
    time.sleep(0.5)
    assert stack.sink.count(marker) == 0


def test_corpus_malware_rejected_and_clean_mail_delivered_with_headers(
    stack: Stack, clamd: ClamdServer, redis_server: RedisServer, qdir: Path, corpus: Path
) -> None:
    with stack.configured(av_config(stack, clamd, redis_server, qdir)):
        for mail in sorted((corpus / "malware-testmails" / "spam").glob("*.eml")):
            raw = mail.read_bytes()
            if raw.startswith(b"From "):  # an mbox From_ line is not part of the message
                raw = raw.split(b"\n", 1)[1]
            msg, marker = tagged(raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
            with pytest.raises(smtplib.SMTPDataError) as info:
                stack.send(msg)
            assert info.value.smtp_code == 554, mail.name
        clean, marker = make_message(
            "clean", headers=[("X-Virus-Status", "Clean (forged)"), ("X-Virus-Scanned", "by the sender")]
        )
        stack.send(clean)
        got = stack.sink.find(marker)
    assert got.header("X-Virus-Status") == ["Clean"]
    scanned = got.header("X-Virus-Scanned")
    assert len(scanned) == 1 and scanned[0].startswith("ClamAV ") and "mx.filterd.test" in scanned[0]


def test_clamd_stopped_mid_run_gives_4xx_and_nothing_is_lost(
    stack: Stack, clamd: ClamdServer, redis_server: RedisServer, qdir: Path
) -> None:
    sent: dict[str, bytes] = {}
    deferred: list[str] = []
    with stack.configured(av_config(stack, clamd, redis_server, qdir)):
        for i in range(6):
            # different bodies: an identical one would be answered by the cache, clamd or not
            msg, marker = make_message(f"run {i}", body=f"Message number {i}, {uuid.uuid4()}\r\n")
            sent[marker] = msg
            if i == 3:
                clamd.stop()
            try:
                stack.send(msg)
            except smtplib.SMTPDataError as exc:
                assert exc.smtp_code == 451 and b"4.3.0" in exc.smtp_error, exc
                deferred.append(marker)
        assert len(deferred) == 3  # the three sent while clamd was down
        clamd.start()
        for marker in deferred:  # the client retries, as an MTA would
            stack.send(sent[marker])
        for marker in sent:
            stack.sink.find(marker)
    assert [stack.sink.count(m) for m in sent] == [1] * 6
    assert "CLAM_VIRUS_FAIL" in stack.filterd.log() or "clamd unavailable" in stack.filterd.log()


def _filterctl(config: Path, *args: str) -> Any:
    return CliRunner().invoke(cli, ["--config", str(config), *args], catch_exceptions=False)


def test_quarantine_list_show_release_arrives_byte_identical(
    stack: Stack, clamd: ClamdServer, redis_server: RedisServer, qdir: Path
) -> None:
    config = av_config(stack, clamd, redis_server, qdir, on_infected="quarantine")
    with stack.configured(config) as filterd:
        msg, marker = tagged(avsamples.eicar_zip())
        assert stack.send(msg) == {}  # accepted from the client...
        time.sleep(1.0)
        assert stack.sink.count(marker) == 0  # ...and held back, not delivered
        listing = _filterctl(filterd.config_path, "quarantine", "list", "--json")
        rows = [json.loads(line) for line in listing.output.splitlines()]
        assert len(rows) == 1 and marker in rows[0]["subject"]
        assert "Eicar-Test-Signature" in rows[0]["reason"] and rows[0]["rcpts"] == ["bob@example.net"]
        qid = rows[0]["id"]
        shown = _filterctl(filterd.config_path, "quarantine", "show", qid)
        assert "CLAM_VIRUS" in shown.output and "X-Virus-Status: Infected" in shown.output
        raw = CliRunner().invoke(
            cli, ["--config", str(filterd.config_path), "quarantine", "show", "--raw", qid]
        )
        assert body_of(raw.stdout_bytes) == body_of(msg)
        stored = (qdir / f"{qid}.eml").read_bytes()
        offset = json.loads((qdir / f"{qid}.json").read_text())["header_offset"]
        added, original = stored[:offset], stored[offset:]
        assert b"X-Virus-Scanned: ClamAV" in added and b"X-Spam-Status: " in added
        assert body_of(original) == body_of(msg)
        released = _filterctl(filterd.config_path, "quarantine", "release", qid)
        assert released.exit_code == 0, released.output
        got = stack.sink.find(marker)
        assert body_of(got.data) == body_of(msg)  # byte for byte
        assert got.rcpts == ("bob@example.net",)
        again = _filterctl(filterd.config_path, "quarantine", "release", qid)
        assert again.exit_code == 1 and "already released" in again.output
        time.sleep(1.0)
        assert stack.sink.count(marker) == 1


def test_score_quarantine_uses_the_same_store(
    stack: Stack, clamd: ClamdServer, redis_server: RedisServer, qdir: Path
) -> None:
    config = {
        **av_config(stack, clamd, redis_server, qdir),
        "actions": {"add_header": 2.0, "quarantine": 3.0},
        "scores": {"MISSING_DATE": 4.0},
    }
    with stack.configured(config):
        msg, marker = make_message("no date")
        msg = b"\r\n".join(line for line in msg.split(b"\r\n") if not line.startswith(b"Date:"))
        stack.send(msg)
        time.sleep(1.0)
        assert stack.sink.count(marker) == 0
    metas = [json.loads(p.read_text()) for p in qdir.glob("*.json")]
    assert len(metas) == 1 and marker in metas[0]["subject"]
    assert metas[0]["reason"].startswith("score 4") and metas[0]["queue_id"]


def test_quarantine_on_a_read_only_directory_tempfails(
    stack: Stack, clamd: ClamdServer, redis_server: RedisServer, qdir: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a read-only tmpfs")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(qdir)], check=True)
    try:
        with stack.configured(
            av_config(stack, clamd, redis_server, qdir, on_infected="quarantine")
        ) as filterd:
            msg, marker = tagged(avsamples.eicar_base64())
            with pytest.raises(smtplib.SMTPDataError) as info:
                stack.send(msg)
            assert info.value.smtp_code == 451
            assert "quarantine failed" in filterd.log()
        assert stack.sink.count(marker) == 0
    finally:
        subprocess.run(["umount", "-l", str(qdir)], check=False)


def wait_held(stack: Stack, marker: str, timeout: float = 10.0) -> list[Path]:
    """The files in Postfix's hold queue that carry `marker`, waiting up to `timeout` for one."""
    hold = stack.postfix.queue_dir / "hold"
    deadline = time.monotonic() + timeout
    while True:
        held = [p for p in hold.rglob("*") if p.is_file() and marker.encode() in p.read_bytes()]
        if held or time.monotonic() > deadline:
            return held
        time.sleep(0.1)


def test_hold_mode_puts_the_message_in_postfix_hold_queue(
    stack: Stack, clamd: ClamdServer, redis_server: RedisServer, qdir: Path
) -> None:
    config = av_config(stack, clamd, redis_server, qdir, on_infected="quarantine")
    config["quarantine"]["mode"] = "hold"
    with stack.configured(config):
        msg, marker = tagged(avsamples.eicar_plain())
        assert stack.send(msg) == {}
        held = wait_held(stack, marker)
    assert len(held) == 1
    assert list(qdir.iterdir()) == []
    assert stack.sink.count(marker) == 0
    held[0].unlink()


def test_oversized_quarantine_goes_to_the_hold_queue_whole(
    stack: Stack, clamd: ClamdServer, redis_server: RedisServer, qdir: Path
) -> None:
    """Past max_scan_bytes filterd did not keep the body, so it cannot store the message: Postfix holds it."""
    config = {
        **av_config(stack, clamd, redis_server, qdir),
        "milter": {"max_scan_bytes": 1000, "oversize_action": "accept"},
        "actions": {"add_header": 2.0, "quarantine": 3.0},
        "scores": {"MISSING_DATE": 4.0},
    }
    with stack.configured(config):
        msg, marker = make_message("big", body=("y" * 70 + "\r\n") * 100)
        msg = b"\r\n".join(line for line in msg.split(b"\r\n") if not line.startswith(b"Date:"))
        assert stack.send(msg) == {}
        held = wait_held(stack, marker)
    assert len(held) == 1
    assert held[0].read_bytes().count(b"y" * 70) == 100  # Postfix holds the whole body
    assert list(qdir.iterdir()) == []
    assert stack.sink.count(marker) == 0
    held[0].unlink()


@pytest.fixture(scope="module")
def clamd_without_alert(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClamdServer]:
    """clamd as Debian ships it (no AlertExceedsMax): it answers OK past its limits."""
    server = ClamdServer(tmp_path_factory.mktemp("e2e-clamd-noalert"), {"AlertExceedsMax": "no"})
    server.start()
    yield server
    server.stop()


PAST_LIMITS = {
    "mime19": (lambda: avsamples.eicar_nested_multipart(19), b"MaxRecursion"),
    "zip18": (lambda: avsamples.eicar_nested_zip(18), b"MaxRecursion"),
    "zip15": (lambda: avsamples.eicar_nested_zip(15), b"MaxRecursion"),  # missed at MaxRecursion 16
    # a 25 MiB + 69 byte member, deflated: the message is about 36 KB, far under the test
    # Postfix's message_size_limit (60 MiB)
    "zip-member-over-25MiB": (lambda: avsamples.eicar_behind_big_member(eicar_in_big=True), b"MaxFileSize"),
}


@pytest.mark.parametrize("alert", [True, False], ids=["AlertExceedsMax", "no-AlertExceedsMax"])
@pytest.mark.parametrize("sample", list(PAST_LIMITS))
def test_eicar_past_clamd_limits_is_rejected_through_postfix(
    stack: Stack,
    clamd: ClamdServer,
    clamd_without_alert: ClamdServer,
    redis_server: RedisServer,
    qdir: Path,
    sample: str,
    alert: bool,
) -> None:
    make, limit = PAST_LIMITS[sample]
    with stack.configured(av_config(stack, clamd if alert else clamd_without_alert, redis_server, qdir)):
        msg, marker = tagged(make())
        with pytest.raises(smtplib.SMTPDataError) as info:
            stack.send(msg)
    assert info.value.smtp_code == 554
    assert b"5.7.1" in info.value.smtp_error and b"cannot be fully scanned" in info.value.smtp_error
    assert limit in info.value.smtp_error
    time.sleep(0.5)
    assert stack.sink.count(marker) == 0


def test_unscannable_accepted_by_policy_is_marked_unscanned_never_clean(
    stack: Stack, clamd_without_alert: ClamdServer, redis_server: RedisServer, qdir: Path
) -> None:
    config = av_config(stack, clamd_without_alert, redis_server, qdir, on_unscannable="accept")
    with stack.configured(config):
        msg, marker = tagged(avsamples.eicar_nested_multipart(19))
        assert stack.send(msg) == {}
        got = stack.sink.find(marker)
    assert got.header("X-Virus-Status") == ["Unscanned (limits exceeded: MaxRecursion)"]
    assert "CLAM_UNSCANNABLE" in " ".join(got.header("X-Spam-Status") + got.header("X-Spam-Report"))


def test_forged_clean_cache_entry_does_not_let_eicar_through_postfix(
    stack: Stack, clamd: ClamdServer, redis_server: RedisServer, qdir: Path
) -> None:
    """A local user writes "clean" under EICAR's cache key straight into Redis: still 554."""
    import redis as redislib

    from filterd.clamd import ClamdPool
    from filterd.message import Message
    from filterd.scancache import ScanCache

    config = av_config(stack, clamd, redis_server, qdir)
    prefix = config["redis"]["key_prefix"]
    msg, marker = tagged(avsamples.eicar_base64())
    version = ClamdPool((clamd.unix_address,), 5.0, 1.0, 1.0).version()
    # the key depends on the body and the MIME headers only, so the attacker can compute it
    key = ScanCache(None, prefix, 3600, ("Content-Type", "Content-Transfer-Encoding", "MIME-Version")).key(
        version, Message(msg)
    )
    attacker = redislib.Redis.from_url(redis_server.url)
    attacker.set(key, b"clean", ex=3600)
    with stack.configured(config) as filterd:
        with pytest.raises(smtplib.SMTPDataError) as info:
            stack.send(msg)
        assert info.value.smtp_code == 554 and b"Eicar-Test-Signature" in info.value.smtp_error
        assert f"entry {key} has no valid signature" in filterd.log()
    assert attacker.get(key) != b"clean"  # overwritten by the signed result of the real scan
    time.sleep(0.5)
    assert stack.sink.count(marker) == 0


def _sized(subject: str, size: int, payload: bytes = b"") -> tuple[bytes, str]:
    """A message of exactly `size` bytes on the wire: `payload` (if any) in the body, then filler."""
    msg, marker = make_message(subject, body="")
    line = b"A" * 78 + b"\r\n"
    data = msg + payload + line * ((size - len(msg) - len(payload) - 3) // len(line))  # 3 or more left
    data += b"B" * (size - len(data) - 2) + b"\r\n"
    assert len(data) == size
    return data, marker


@pytest.mark.parametrize("action", [None, "tempfail", "accept"], ids=["default", "tempfail", "accept"])
def test_message_over_max_scan_bytes_through_postfix(
    stack: Stack, clamd: ClamdServer, redis_server: RedisServer, qdir: Path, action: str | None
) -> None:
    """EICAR past [milter] max_scan_bytes: by default 552 naming the limit, never delivered unscanned."""
    milter: dict[str, Any] = {"max_scan_bytes": 100_000}
    if action:
        milter["oversize_action"] = action
    config = {**av_config(stack, clamd, redis_server, qdir), "milter": milter}
    msg, marker = _sized("oversized", 150_000, avsamples.EICAR + b"\r\n")
    with stack.configured(config):
        if action == "accept":
            assert stack.send(msg) == {}
            got = stack.sink.find(marker)
        else:
            with pytest.raises(smtplib.SMTPDataError) as info:
                stack.send(msg)
    if action is None:
        assert info.value.smtp_code == 552
        assert info.value.smtp_error == (
            b"5.3.4 Message size exceeds the limit of 100000 bytes of this site's content filter"
        )
    elif action == "tempfail":
        assert info.value.smtp_code == 452 and info.value.smtp_error.startswith(b"4.3.4 ")
    else:  # the admin chose to deliver it unscanned: it says so
        [status] = got.header("X-Virus-Status")
        assert status.startswith("Not scanned (message too large: ")
        assert "SCAN_SKIPPED_SIZE" in got.header("X-Spam-Report")[0]
        return
    time.sleep(0.5)
    assert stack.sink.count(marker) == 0


def test_message_just_under_postfix_default_size_limit_is_scanned(
    stack: Stack, clamd: ClamdServer, redis_server: RedisServer, qdir: Path
) -> None:
    """Postfix's default message_size_limit (10240000) accepts at most about 10230000 bytes on the
    wire (measured); filterd counts within 50 bytes of the wire size, so its default max_scan_bytes
    (10 MiB = 10485760) scans every such message instead of refusing it."""
    assert load_config(None).milter.max_scan_bytes == 10 * 1024 * 1024
    with stack.configured(av_config(stack, clamd, redis_server, qdir)):
        msg, marker = _sized("big but scanned", 10_230_000)
        assert stack.send(msg) == {}
        got = stack.sink.find(marker, timeout=120)
        eicar, eicar_marker = _sized("big eicar", 10_230_000, avsamples.EICAR + b"\r\n")
        with pytest.raises(smtplib.SMTPDataError) as info:
            stack.send(eicar)
    assert stack.sink.count(eicar_marker) == 0
    assert got.header("X-Virus-Status") == ["Clean"]
    assert "SCAN_SKIPPED_SIZE" not in got.header("X-Spam-Report")[0]
    assert info.value.smtp_code == 554 and b"Eicar-Test-Signature" in info.value.smtp_error

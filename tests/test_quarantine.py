"""The quarantine store: durable writes, failures that raise, exactly-once release to a real SMTP sink."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from filterd.config import parse_config
from filterd.driver import SmtpContext, scan
from filterd.pipeline import Pipeline
from filterd.quarantine.release import release
from filterd.quarantine.store import (
    AlreadyReleased,
    InvalidId,
    QuarantineError,
    QuarantineSettings,
    QuarantineStore,
    ReleaseFailed,
    ReleaseLocked,
    UnknownId,
    matches,
    meta_from,
    parse_duration,
    render_headers,
)
from filterd.report import verdict_headers
from filterd.results import Action
from tests.harness import avsamples
from tests.harness.clamd import ClamdServer
from tests.harness.net import free_port
from tests.harness.redis import RedisServer
from tests.harness.smtpsink import SmtpSink

ROOT = Path(__file__).resolve().parent.parent
ADDED = [
    ("X-Spam-Status", "Yes, score=12.00 required=5.00"),
    ("X-Spam-Report", "action=quarantine\n\t* 12.0 X y"),
]
META = {
    "mail_from": "sender@example.test",
    "rcpts": ["b@example.test", "c@example.test"],
    "reason": "test",
    "score": 12.0,
}


def store_at(directory: Path, release_via: str = "127.0.0.1:1") -> QuarantineStore:
    return QuarantineStore(QuarantineSettings(directory=str(directory), release_via=release_via))


@contextlib.contextmanager
def tmpfs(path: Path, options: str) -> Iterator[Path]:
    """A private tmpfs (root only): read-only or tiny, to make real EROFS / ENOSPC."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_put_is_durable_exact_and_private(tmp_path: Path) -> None:
    store = store_at(tmp_path / "q")
    raw = avsamples.eicar_zip()
    qid = store.put(raw, ADDED, META)
    entry = store.get(qid)
    assert entry.original() == raw
    stored = entry.stored()
    assert stored.startswith(
        b"X-Spam-Status: Yes, score=12.00 required=5.00\r\nX-Spam-Report: action=quarantine\r\n\t* 12.0 X y\r\n"
    )
    assert stored.endswith(raw)
    for path in (tmp_path / "q").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE((tmp_path / "q").stat().st_mode) == 0o700
    assert sorted(p.name for p in (tmp_path / "q").iterdir()) == [f"{qid}.eml", f"{qid}.json"]
    meta = json.loads((tmp_path / "q" / f"{qid}.json").read_text())
    assert meta["id"] == qid and meta["rcpts"] == META["rcpts"] and meta["reason"] == "test"
    assert meta["subject"] == "eicar zip" and meta["size"] == len(raw) and meta["released"] is None
    assert meta["added_headers"] == [list(h) for h in ADDED]


def test_eight_bit_headers_do_not_stop_a_put(tmp_path: Path) -> None:
    """Latin-1 bytes in a Subject reach us as surrogate escapes; they must not make put() fail."""
    raw = b"Subject: caf\xe9 \xff\r\nFrom: J\xf6rg <j@example.test>\r\n\r\nbody\r\n"
    store = store_at(tmp_path)
    meta = {**META, "mail_from": "j\udcf6rg@example.test"}
    entry = store.get(store.put(raw, [("X-Spam-Status", "No")], meta))
    assert entry.original() == raw
    assert entry.meta["subject"] == "caf\ufffd \ufffd" and entry.meta["mail_from"] == "j\ufffdrg@example.test"


def test_headers_follow_the_message_line_ending() -> None:
    assert render_headers([("A", "1\n\t2")], b"\n") == b"A: 1\n\t2\n"
    assert render_headers([("A", "1\r\n\t2")], b"\r\n") == b"A: 1\r\n\t2\r\n"


def test_lf_message_keeps_lf(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    raw = b"Subject: lf\n\nbody\n"
    entry = store.get(store.put(raw, [("X-A", "1")], {}))
    assert entry.stored() == b"X-A: 1\n" + raw and entry.original() == raw


@pytest.mark.parametrize(
    "bad",
    [
        "../etc/passwd",
        "20240101-000000-abcdef0123/../x",
        "",
        "20240101-000000-ABCDEF0123",
        "x" * 30,
        "20240101-000000-abcdef012",
    ],
)
def test_ids_are_validated(tmp_path: Path, bad: str) -> None:
    store = store_at(tmp_path)
    for op in (store.get, lambda qid: release(store, qid), store.delete):
        with pytest.raises(InvalidId):
            op(bad)


def test_unknown_id(tmp_path: Path) -> None:
    with pytest.raises(UnknownId, match="no quarantined message with id 20240101-000000-0123456789"):
        store_at(tmp_path).get("20240101-000000-0123456789")


def _assert_put_fails_cleanly(store: QuarantineStore, expected_errno: int) -> None:
    before = sorted(p.name for p in store.dir.iterdir())
    with pytest.raises(QuarantineError, match="cannot store message in quarantine") as info:
        store.put(avsamples.clean() * 50, ADDED, META)
    assert isinstance(info.value.__cause__, OSError) and info.value.__cause__.errno == expected_errno
    assert sorted(p.name for p in store.dir.iterdir()) == before  # no half-written entry left
    assert list(store.entries()) == []


def test_read_only_directory_raises(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        with tmpfs(tmp_path / "ro", "ro,size=1m") as d:
            _assert_put_fails_cleanly(store_at(d), errno.EROFS)
    else:
        d = tmp_path / "ro"
        d.mkdir()
        d.chmod(0o500)
        try:
            _assert_put_fails_cleanly(store_at(d), errno.EACCES)
        finally:
            d.chmod(0o700)


def test_full_directory_raises(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tiny tmpfs (a full disk cannot be made otherwise)")
    with tmpfs(tmp_path / "full", "size=64k,mode=0700") as d:  # as the store makes its directory
        filler = d / "filler"
        with contextlib.suppress(OSError), filler.open("wb") as f:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
        _assert_put_fails_cleanly(store_at(d), errno.ENOSPC)
        filler.unlink()  # space again: the same store works
        qid = store_at(d).put(avsamples.clean(), ADDED, META)
        assert store_at(d).get(qid).original() == avsamples.clean()


def test_release_delivers_the_exact_bytes_once(tmp_path: Path) -> None:
    with SmtpSink() as sink:
        store = store_at(tmp_path, sink.address)
        raw = avsamples.eicar_zip().replace(b"\r\nSee the", b"\r\n.leading dot\r\nSee the")  # dot-stuffing
        qid = store.put(raw, ADDED, META)
        entry = release(store, qid)
        assert [m.data for m in sink.messages] == [raw]
        assert sink.messages[0].mail_from == "sender@example.test"
        assert sink.messages[0].rcpts == ("b@example.test", "c@example.test")
        assert entry.released is not None and entry.released["to"] == META["rcpts"]
        assert store.get(qid).released == entry.released
        with pytest.raises(AlreadyReleased, match="already released"):
            release(store, qid)
        assert len(sink.messages) == 1
        assert not (tmp_path / f"{qid}.lock").exists()


def test_release_drops_forged_verdict_headers_only(tmp_path: Path) -> None:
    raw = (
        b"Received: from x\r\n\tby y\r\nX-Spam-Status: No, score=-50\r\n\tfolded forged part\r\n"
        b"Subject: hi\r\nX-Virus-Status: Clean\r\nx-spam-flag: NO\r\n\r\nX-Spam-Status: body line\r\n"
    )
    with SmtpSink() as sink:
        store = store_at(tmp_path, sink.address)
        qid = store.put(raw, ADDED, META)
        release(store, qid)
        assert sink.messages[0].data == (
            b"Received: from x\r\n\tby y\r\nSubject: hi\r\n\r\nX-Spam-Status: body line\r\n"
        )
        assert store.get(qid).original() == raw  # the stored copy stays as received


def test_release_to_another_address_and_null_sender(tmp_path: Path) -> None:
    with SmtpSink() as sink:
        store = store_at(tmp_path, sink.address)
        qid = store.put(avsamples.clean(), [], {"mail_from": "", "rcpts": ["b@example.test"]})
        release(store, qid, ["admin@example.test"])
        assert sink.messages[0].rcpts == ("admin@example.test",)
        assert sink.messages[0].mail_from == "<>"  # aiosmtpd writes the null sender so


def test_release_with_a_refused_recipient(tmp_path: Path) -> None:
    with SmtpSink(refuse=("c@example.test",)) as sink:
        store = store_at(tmp_path, sink.address)
        qid = store.put(avsamples.clean(), [], META)
        entry = release(store, qid)
        assert sink.messages[0].rcpts == ("b@example.test",)
        assert entry.released is not None
        assert entry.released["to"] == ["b@example.test"]
        assert "550" in entry.released["refused"]["c@example.test"]


def test_failed_release_can_be_retried(tmp_path: Path) -> None:
    sink = SmtpSink()
    store = store_at(tmp_path, sink.address)
    qid = store.put(avsamples.clean(), [], META)
    with pytest.raises(ReleaseFailed, match="cannot re-inject"):
        release(store, qid)  # the sink is not running yet
    assert store.get(qid).released is None
    assert not (tmp_path / f"{qid}.lock").exists()
    with sink:
        release(store, qid)
        assert len(sink.messages) == 1


def test_interrupted_release_leaves_a_lock_that_refuses(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    qid = store.put(avsamples.clean(), [], META)
    (tmp_path / f"{qid}.lock").write_text("release pid=1\n")
    with pytest.raises(ReleaseLocked, match="remove the lock file"):
        release(store, qid)
    with pytest.raises(ReleaseLocked):
        store.delete(qid)


def test_two_concurrent_releases_deliver_once(tmp_path: Path) -> None:
    """Two filterctl processes release the same id at the same moment: one delivers, one is refused."""
    with SmtpSink(delay=1.0) as sink:
        qdir = tmp_path / "q"
        qid = store_at(qdir).put(avsamples.clean(), ADDED, META)
        config = tmp_path / "filterd.toml"
        config.write_text(f'[quarantine]\ndirectory = "{qdir}"\nrelease_via = "{sink.address}"\n')
        cmd = [
            sys.executable,
            "-c",
            "from filterd.cli.filterctl import main; main()",
            "--config",
            str(config),
        ]
        procs = [
            subprocess.Popen(
                [*cmd, "quarantine", "release", qid], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
            for _ in range(2)
        ]
        results = [(p.wait(timeout=60), p.stderr.read().decode()) for p in procs]  # type: ignore[union-attr]
        for p in procs:
            p.stdout.close()  # type: ignore[union-attr]
            p.stderr.close()  # type: ignore[union-attr]
        time.sleep(0.2)
        assert len(sink.messages) == 1, results
        codes = sorted(code for code, _ in results)
        assert codes == [0, 1], results
        refused = next(err for code, err in results if code == 1)
        assert "locked" in refused or "already released" in refused


def test_delete_removes_both_files(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    qid = store.put(avsamples.clean(), [], META)
    store.delete(qid)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(UnknownId):
        store.delete(qid)


def _backdate(store: QuarantineStore, qid: str, seconds: float) -> None:
    path = store.dir / f"{qid}.json"
    meta = json.loads(path.read_text())
    meta["timestamp"] -= seconds
    path.write_text(json.dumps(meta))


def test_purge_removes_old_entries_and_leftovers(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    old, new = store.put(avsamples.clean(), [], META), store.put(avsamples.clean(), [], META)
    _backdate(store, old, 31 * 86400)
    leftover = tmp_path / ".tmp-0123456789abcdef"
    leftover.write_bytes(b"half")
    orphan = tmp_path / "20200101-000000-0123456789.eml"
    orphan.write_bytes(b"no metadata")
    long_ago = time.time() - 40 * 86400
    for p in (leftover, orphan):
        os.utime(p, (long_ago, long_ago))
    assert sorted(store.purge(parse_duration("30d"), dry_run=True)) == sorted(
        [old, leftover.name, orphan.name]
    )
    assert (tmp_path / f"{old}.eml").exists()
    assert sorted(store.purge(parse_duration("30d"))) == sorted([old, leftover.name, orphan.name])
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{new}.eml", f"{new}.json"]


def test_filters() -> None:
    from filterd.quarantine.store import Entry

    e = Entry(
        "20240101-000000-0123456789",
        {**META, "timestamp": 1000.0, "header_from": "Boss <boss@corp.test>"},
        Path("/x"),
    )
    assert matches(e, since=999, reason="TES", sender="boss@", rcpt="C@example")
    assert not matches(e, since=1001)
    assert not matches(e, reason="virus")
    assert not matches(e, sender="nobody")
    assert not matches(e, rcpt="d@example.test")


def test_durations() -> None:
    assert (
        parse_duration("30d") == 30 * 86400 and parse_duration("12h") == 43200 and parse_duration("90") == 90
    )
    for bad in ("30 days", "d", "-1d", ""):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_infected_mail_quarantined_end_to_end_in_process(
    tmp_path: Path, clamd_server: ClamdServer, redis_server: RedisServer
) -> None:
    """What the milter does at end of message: scan, then put with meta_from, then (after) discard."""
    config = parse_config(
        {
            "redis": {"url": redis_server.url},
            "quarantine": {"directory": str(tmp_path / "q")},
            "checks": {
                "antivirus": {
                    "enabled": True,
                    "sockets": [clamd_server.unix_address],
                    "on_infected": "quarantine",
                }
            },
        }
    )
    pipeline = Pipeline.from_config(config)
    try:
        raw = avsamples.eicar_base64()
        ctx = SmtpContext(
            client_addr="192.0.2.7",
            client_name="mail.example.test",
            helo="mail.example.test",
            mail_from="a@example.test",
            rcpts=("b@example.test",),
        )
        tx, verdict = scan(pipeline, raw, ctx)
    finally:
        pipeline.close()
    assert verdict.action is Action.QUARANTINE
    added = verdict_headers(verdict) + [(h.name, h.value) for h in verdict.add_headers]
    store = QuarantineStore(config.quarantine)
    entry = store.get(store.put(tx.message.raw, added, meta_from(tx, verdict)))
    m = entry.meta
    assert entry.original() == raw
    assert m["client_addr"] == "192.0.2.7" and m["helo"] == "mail.example.test"
    assert m["mail_from"] == "a@example.test" and m["rcpts"] == ["b@example.test"]
    assert "Eicar-Test-Signature" in m["reason"] and m["action"] == "quarantine"
    assert any(s["name"] == "CLAM_VIRUS" for s in m["symbols"])
    assert b"X-Virus-Status: Infected (Eicar-Test-Signature" in entry.stored()


def test_quarantine_settings_validated() -> None:
    from filterd.settings import ConfigError

    with pytest.raises(ConfigError, match=r"quarantine\.directory"):
        parse_config({"quarantine": {"directory": "relative/q"}})
    with pytest.raises(ConfigError, match=r"quarantine\.max_age"):
        parse_config({"quarantine": {"max_age": "forever"}})
    with pytest.raises(ConfigError, match=r"quarantine\.release_via"):
        parse_config({"quarantine": {"release_via": "localhost"}})
    with pytest.raises(ConfigError, match=r"quarantine\.mode"):
        parse_config({"quarantine": {"mode": "drop"}})
    assert (
        parse_config({"quarantine": {"release_via": f"127.0.0.1:{free_port()}"}}).quarantine.mode == "store"
    )


def test_release_via_a_unix_socket(tmp_path: Path) -> None:
    """`release_via` takes the path of a UNIX-domain socket (the shipped private listener)."""
    from filterd.settings import ConfigError

    assert parse_config({"quarantine": {"release_via": "/var/spool/postfix/private/x"}}).quarantine
    with pytest.raises(ConfigError, match=r"quarantine\.release_via"):
        parse_config({"quarantine": {"release_via": "relative/socket"}})
    store = store_at(tmp_path / "q", str(tmp_path / "no-such-socket"))
    qid = store.put(avsamples.clean(), ADDED, META)
    with pytest.raises(ReleaseFailed, match=r"cannot re-inject through .*no-such-socket: No such file"):
        release(store, qid)
    assert store.get(qid).released is None

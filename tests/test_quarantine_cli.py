"""`filterctl quarantine ...` and `filterctl antivirus status`, through click's CliRunner."""

from __future__ import annotations

import json
import os
import pwd
from pathlib import Path

import pytest
from click.testing import CliRunner

from filterd.cli.filterctl import cli
from filterd.quarantine.store import QuarantineSettings, QuarantineStore
from tests.harness import avsamples
from tests.harness.clamd import ClamdServer
from tests.harness.redis import RedisServer
from tests.harness.smtpsink import SmtpSink

NOBODY = pwd.getpwnam("nobody").pw_uid
SYMBOLS = [{"name": "CLAM_VIRUS", "score": 20.0, "reason": "virus Eicar-Test-Signature found by clamd"}]


@pytest.fixture
def sink() -> SmtpSink:
    with SmtpSink() as s:
        yield s  # type: ignore[misc]


@pytest.fixture
def setup(tmp_path: Path, sink: SmtpSink) -> tuple[Path, QuarantineStore, list[str]]:
    qdir = tmp_path / "q"
    config = tmp_path / "filterd.toml"
    config.write_text(f'[quarantine]\ndirectory = "{qdir}"\nrelease_via = "{sink.address}"\n')
    store = QuarantineStore(QuarantineSettings(directory=str(qdir), release_via=sink.address))
    ids = [
        store.put(
            avsamples.eicar_zip(),
            [("X-Virus-Status", "Infected (Eicar-Test-Signature)")],
            {
                "mail_from": "bad@evil.test",
                "rcpts": ["alice@example.test"],
                "reason": "virus Eicar-Test-Signature found by clamd",
                "score": 20.0,
                "symbols": SYMBOLS,
                "client_addr": "192.0.2.66",
                "helo": "evil.test",
                "queue_id": "4XyZ1",
            },
        ),
        store.put(
            avsamples.clean(subject="Deal [b]x[/b]"),
            [("X-Spam-Status", "Yes, score=9.10")],
            {
                "mail_from": "promo@shop.test",
                "rcpts": ["bob@example.test"],
                "reason": "score 9.1 >= 8.0",
                "score": 9.1,
            },
        ),
    ]
    return config, store, ids


def run(config: Path, *args: str) -> object:
    return CliRunner().invoke(cli, ["--config", str(config), *args], catch_exceptions=False)


def test_list_table_and_filters(setup: tuple[Path, QuarantineStore, list[str]]) -> None:
    config, _, (virus, spam) = setup
    result = run(config, "quarantine", "list")
    assert result.exit_code == 0, result.output
    for text in (virus, spam, "bad@evil.test", "alice@example.test", "Deal [b]x[/b]", "20.00", "eicar zip"):
        assert text in result.output
    result = run(config, "quarantine", "list", "--json")
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert [r["id"] for r in rows] == [virus, spam]
    assert rows[0]["rcpts"] == ["alice@example.test"] and rows[1]["subject"] == "Deal [b]x[/b]"

    def ids(*filters: str) -> list[str]:
        out = run(config, "quarantine", "list", "--json", *filters).output
        return [json.loads(line)["id"] for line in out.splitlines()]

    assert ids("--reason", "virus") == [virus]
    assert ids("--from", "promo@") == [spam]
    assert ids("--rcpt", "alice") == [virus]
    assert ids("--since", "1h") == [virus, spam]
    assert ids("--since", "2999-01-01") == []
    bad = run(config, "quarantine", "list", "--since", "last tuesday")
    assert bad.exit_code == 2 and "neither a duration" in bad.output


def test_show_and_show_raw(setup: tuple[Path, QuarantineStore, list[str]]) -> None:
    config, store, (virus, _) = setup
    result = run(config, "quarantine", "show", virus)
    assert result.exit_code == 0
    for text in (
        "192.0.2.66",
        "evil.test",
        "4XyZ1",
        "CLAM_VIRUS",
        "X-Virus-Status: Infected",
        "Subject: eicar zip",
        "See the attachment.",
    ):
        assert text in result.output, text
    raw = CliRunner().invoke(cli, ["--config", str(config), "quarantine", "show", "--raw", virus])
    assert raw.exit_code == 0
    assert raw.stdout_bytes == avsamples.eicar_zip() == store.get(virus).original()


def test_show_eight_bit_headers(tmp_path: Path) -> None:
    config = tmp_path / "filterd.toml"
    config.write_text(f'[quarantine]\ndirectory = "{tmp_path / "q"}"\n')
    store = QuarantineStore(QuarantineSettings(directory=str(tmp_path / "q")))
    raw = b"Subject: caf\xe9\r\nX-Odd: \xff\xfe\r\n\r\nbody \xe9\r\n"
    qid = store.put(raw, [], {"rcpts": ["a@example.test"]})
    shown = run(config, "quarantine", "show", qid)
    assert shown.exit_code == 0 and "X-Odd: \ufffd\ufffd" in shown.output
    assert "caf\ufffd" in run(config, "quarantine", "list").output


def test_release_then_second_release_refused(
    setup: tuple[Path, QuarantineStore, list[str]], sink: SmtpSink
) -> None:
    config, _, (_, spam) = setup
    result = run(config, "quarantine", "release", spam)
    assert result.exit_code == 0 and "released to bob@example.test" in result.output
    assert [m.data for m in sink.messages] == [avsamples.clean(subject="Deal [b]x[/b]")]
    again = run(config, "quarantine", "release", spam)
    assert again.exit_code == 1 and "already released" in again.output
    assert len(sink.messages) == 1
    listing = run(config, "quarantine", "list").output
    assert "released" in listing and "held" in listing


def test_release_to(setup: tuple[Path, QuarantineStore, list[str]], sink: SmtpSink) -> None:
    config, _, (virus, _) = setup
    assert run(config, "quarantine", "release", virus, "--to", "admin@example.test").exit_code == 0
    assert sink.messages[0].rcpts == ("admin@example.test",)


def test_delete_and_unknown_or_bad_ids(setup: tuple[Path, QuarantineStore, list[str]]) -> None:
    config, _, (virus, spam) = setup
    assert run(config, "quarantine", "delete", virus).exit_code == 0
    for command in ("show", "release", "delete"):
        gone = run(config, "quarantine", command, virus)
        assert gone.exit_code == 1 and f"no quarantined message with id {virus}" in gone.output
        bad = run(config, "quarantine", command, "../../etc/passwd")
        assert bad.exit_code == 2 and "is not a quarantine id" in bad.output
    assert [json.loads(x)["id"] for x in run(config, "quarantine", "list", "--json").output.splitlines()] == [
        spam
    ]


def test_purge(setup: tuple[Path, QuarantineStore, list[str]]) -> None:
    config, store, (virus, spam) = setup
    meta_path = store.dir / f"{virus}.json"
    meta = json.loads(meta_path.read_text())
    meta["timestamp"] -= 45 * 86400
    meta_path.write_text(json.dumps(meta))
    result = run(config, "quarantine", "purge", "--older-than", "30d")
    assert result.exit_code == 0 and f"removed {virus}" in result.output
    assert sorted(p.name for p in store.dir.iterdir()) == [f"{spam}.eml", f"{spam}.json"]
    assert run(config, "quarantine", "purge").exit_code == 0  # default: [quarantine] max_age
    assert run(config, "quarantine", "purge", "--older-than", "a while").exit_code == 2


def test_list_of_an_empty_or_missing_quarantine(tmp_path: Path) -> None:
    config = tmp_path / "filterd.toml"
    config.write_text(f'[quarantine]\ndirectory = "{tmp_path / "none"}"\n')
    result = run(config, "quarantine", "list", "--json")
    assert result.exit_code == 0 and result.output == ""


def test_antivirus_status(tmp_path: Path, clamd_server: ClamdServer, redis_server: RedisServer) -> None:
    config = tmp_path / "filterd.toml"
    config.write_text(
        f'[redis]\nurl = "{redis_server.url}"\nkey_prefix = "status-test:"\n'
        f'[checks.antivirus]\nenabled = true\nsockets = ["unix:{tmp_path}/down.sock", "{clamd_server.tcp_address}"]\n'
    )
    result = run(config, "antivirus", "status", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert [c["ok"] for c in report["clamd"]] == [False, True]
    assert report["cache"] == {"hits": 0, "misses": 0, "hit_ratio": None, "ttl": 3600}
    text = run(config, "antivirus", "status").output
    assert "NOT ANSWERING" in text and "OK, ClamAV" in text and "0 hits, 0 misses" in text
    config.write_text(f'[checks.antivirus]\nsockets = ["unix:{tmp_path}/down.sock"]\ncache_ttl = 0\n')
    down = run(config, "antivirus", "status")
    assert down.exit_code == 1 and "cache: off" in down.output


def test_train_from_the_quarantine_and_release_as_ham(tmp_path: Path, sink: SmtpSink) -> None:
    from filterd.bayes.model import Model
    from tests.bayes_helpers import ham_message, spam_message

    qdir, model = tmp_path / "q", tmp_path / "models" / "bayes.npz"
    config = tmp_path / "filterd.toml"
    config.write_text(
        f'[quarantine]\ndirectory = "{qdir}"\nrelease_via = "{sink.address}"\n'
        f'[checks.bayes]\nstorage = "file"\nmodel = "{model}"\ntrain_mode = "teft"\n'
    )
    store = QuarantineStore(QuarantineSettings(directory=str(qdir), release_via=sink.address))
    meta = {"mail_from": "a@shop.test", "rcpts": ["bob@example.test"], "reason": "score 9 >= 8", "score": 9.0}
    spam = store.put(spam_message(1), [("X-Spam-Status", "Yes, score=9.00")], meta)
    ham = store.put(ham_message(1), [("X-Spam-Status", "Yes, score=8.50")], meta)

    result = run(config, "quarantine", "train", "spam", spam)
    assert result.exit_code == 0 and "1 learned as spam" in result.output
    result = run(config, "quarantine", "release", ham, "--train")
    assert result.exit_code == 0 and "released to bob@example.test" in result.output
    assert "1 learned as ham" in result.output
    trained = Model.load(model)
    assert (trained.nspam, trained.nham) == (1, 1)
    assert [m.data for m in sink.messages] == [ham_message(1)]
    # the message as received was learned, not filterd's headers: training it again changes nothing
    again = run(config, "train", "ham", "--quarantine", ham)
    assert "1 already ham" in again.output
    bad = CliRunner().invoke(
        cli, ["--config", str(config), "train", "spam", "--quarantine", "20240101-000000-abcdef0123"]
    )
    assert bad.exit_code == 2 and "no quarantined message" in bad.output


# ESC, a CSI sequence (clear screen), an OSC window-title sequence ended by BEL, the one-character
# C1 CSI (U+009B), a carriage return that would overwrite the line, and a bidi override.
HOSTILE = "\x1b[2J\x1b]0;pwned\x07\u009b31m\rfake\u202etxt"
RAW_CONTROLS = [chr(c) for c in (*range(0x00, 0x09), *range(0x0B, 0x20), *range(0x7F, 0xA0))] + ["\u202e"]


def test_show_and_list_never_write_the_senders_control_characters(tmp_path: Path) -> None:
    """Whatever the sender put in the subject, envelope or text, `show` and `list` (table and
    JSON) write it with its control characters escaped, never raw to the admin's terminal."""
    config = tmp_path / "filterd.toml"
    config.write_text(f'[quarantine]\ndirectory = "{tmp_path / "q"}"\n')
    store = QuarantineStore(QuarantineSettings(directory=str(tmp_path / "q")))
    raw = (
        f"Subject: hi {HOSTILE}\r\nFrom: x@example.test\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        f"body {HOSTILE}\r\n"
    ).encode()
    qid = store.put(
        raw,
        [("X-Spam-Status", "Yes")],
        {"mail_from": f"a{HOSTILE}@evil.test", "rcpts": [f"b{HOSTILE}@example.test"], "reason": HOSTILE},
    )
    outputs = {
        "show": run(config, "quarantine", "show", qid),
        "list": run(config, "quarantine", "list"),
        "list --json": run(config, "quarantine", "list", "--json"),
    }
    for name, result in outputs.items():
        assert result.exit_code == 0, (name, result.output)
        leaked = sorted({c for c in result.output if c in RAW_CONTROLS})
        assert leaked == [], (name, leaked)
    assert "hi \\x1b[2J\\x1b]0;pwned\\x07\\x9b31m" in outputs["show"].output
    assert "body \\x1b[2J" in outputs["show"].output
    assert "\\x1b[2J" in outputs["list"].output
    row = json.loads(outputs["list --json"].output)
    assert row["subject"] == f"hi {HOSTILE}"  # the JSON still decodes to what was received
    assert row["mail_from"] == f"a{HOSTILE}@evil.test"


def _planted(setup: tuple[Path, QuarantineStore, list[str]], suffix: str) -> tuple[Path, str, Path]:
    """The path of one entry's file of `suffix` in the quarantine, the entry's id, and a secret
    file outside the quarantine that only root can read."""
    config, store, (virus, _) = setup
    secret = config.parent / "secret"
    secret.write_bytes(b"Subject: root only\r\n\r\nroot:$6$hash\r\n")
    secret.chmod(0o600)
    return store.dir / f"{virus}{suffix}", virus, secret


@pytest.mark.parametrize("suffix", [".eml", ".json"])
def test_show_and_release_refuse_a_planted_symlink(
    setup: tuple[Path, QuarantineStore, list[str]], sink: SmtpSink, suffix: str
) -> None:
    """Someone who can write the quarantine (the filterd user, say) replaces an entry's file by a
    symlink to a file only root may read: root's `show` and `release` refuse it, and its content
    is neither printed nor mailed."""
    config, _, _ = setup
    path, qid, secret = _planted(setup, suffix)
    if suffix == ".json":
        secret.write_text(json.dumps({"rcpts": ["attacker@evil.test"], "header_offset": 0}))
    path.unlink()
    path.symlink_to(secret)
    for command in ("show", "release"):
        result = run(config, "quarantine", command, qid)
        assert result.exit_code == 1, (command, result.output)
        assert f"refusing to read {path}: it is a symbolic link" in result.output
        assert "root:$6$hash" not in result.output
    assert sink.messages == []
    assert secret.read_bytes().startswith((b"Subject: root only", b"{"))  # untouched


def test_show_refuses_a_hard_link_a_foreign_owned_or_writable_file(
    setup: tuple[Path, QuarantineStore, list[str]],
) -> None:
    config, _, _ = setup
    path, qid, secret = _planted(setup, ".eml")
    path.unlink()
    os.link(secret, path)
    result = run(config, "quarantine", "show", qid)
    assert result.exit_code == 1 and "it has 2 hard links" in result.output, result.output
    assert "root:$6$hash" not in result.output
    path.unlink()
    path.write_bytes(b"Subject: planted\r\n\r\nx\r\n")
    os.chown(path, NOBODY, -1)
    result = run(config, "quarantine", "show", qid)
    assert result.exit_code == 1 and f"owned by uid {NOBODY}" in result.output, result.output
    os.chown(path, 0, -1)
    path.chmod(0o666)
    result = run(config, "quarantine", "show", qid)
    assert result.exit_code == 1 and "writable by group or others (mode 0666)" in result.output


def test_a_world_writable_or_symlinked_directory_is_refused(
    setup: tuple[Path, QuarantineStore, list[str]],
) -> None:
    config, store, (virus, _) = setup
    store.dir.chmod(0o1777)
    result = run(config, "quarantine", "show", virus)
    assert result.exit_code == 1 and "writable by group or others (mode 1777" in result.output, result.output
    store.dir.chmod(0o700)
    real = store.dir.rename(store.dir.with_name("real"))
    store.dir.symlink_to(real)
    result = run(config, "quarantine", "show", virus)
    assert result.exit_code == 1 and "it is a symbolic link" in result.output, result.output


def test_ids_with_path_characters_are_refused(setup: tuple[Path, QuarantineStore, list[str]]) -> None:
    config, _, (virus, _) = setup
    for bad in (f"{virus}\n", f"../{virus}", f"{virus}/x", "x\x00y"):
        result = run(config, "quarantine", "show", bad)
        assert result.exit_code == 2 and "is not a quarantine id" in result.output, (bad, result.output)


def test_a_missing_data_file_is_an_error_not_a_traceback(
    setup: tuple[Path, QuarantineStore, list[str]], sink: SmtpSink
) -> None:
    config, store, (virus, _) = setup
    (store.dir / f"{virus}.eml").unlink()
    for command in ("show", "release"):
        result = run(config, "quarantine", command, virus)
        assert result.exit_code == 1 and f"the data of {virus} is missing" in result.output, result.output
    assert sink.messages == []


def test_error_messages_quoting_metadata_are_escaped(setup: tuple[Path, QuarantineStore, list[str]]) -> None:
    config, store, (virus, _) = setup
    meta = dict(store.get(virus).meta)
    meta["released"] = {"time": HOSTILE, "to": [f"b{HOSTILE}@example.test"]}
    store.replace_meta(virus, meta)
    result = run(config, "quarantine", "release", virus)
    assert result.exit_code == 1 and "already released at \\x1b[2J" in result.output, result.output
    assert not {c for c in result.output if c in RAW_CONTROLS}

"""Learning from mailbox moves: a real Dovecot runs contrib/dovecot/'s IMAPSieve scripts, which call
filterd-learn (filterd/learnclient.py); `filterctl learn-worker` (filterd/learner.py) trains the
queued reports into the model -- the file, or the shared model in Redis."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from filterd.bayes.model import Model, message_digest
from filterd.bayes.shared import SharedModel
from filterd.combination import spamicity_of
from filterd.config import RedisSettings, parse_config
from filterd.driver import scan
from filterd.learnclient import QUEUE_KEY, RedisTarget
from filterd.learner import GROUP, LOG_KEY, USERS_KEY, Learner
from filterd.message import Message
from filterd.pipeline import Pipeline
from tests.bayes_helpers import make_message, only_bayes, trained_model
from tests.harness.dovecot import USER, DovecotServer, dovecot_available
from tests.harness.net import wait_for

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
FILTERCTL = [sys.executable, "-c", "from filterd.cli.filterctl import main; main()"]
CLIENT = [sys.executable, "-m", "filterd.learnclient"]
# Without site (-S): no third-party package can be imported, which shows the client needs none, and
# the editable install's import hook (~10 ms of every start of this venv) is not counted: an
# installed filterd has no such hook.
BARE_CLIENT = [sys.executable, "-S", "-m", "filterd.learnclient"]

needs_dovecot = pytest.mark.skipif(
    not dovecot_available(), reason="dovecot-imapd and dovecot-sieve are not installed (scripts/install)"
)


def novel_message(tag: str) -> bytes:
    """Words the seed model never saw: its spamicity is what this test's training made it."""
    words = " ".join(f"{tag}{w}" for w in ("quorvex", "blandish", "tromple", "vexillar", "ganderoo"))
    return make_message(
        f"{tag} quarterly zintark", f"{words}\r\n{words} zintark", message_id=f"<{tag}@example.com>"
    )


@dataclass
class Learning:
    """One test's filterd configuration, seed model and Redis keys."""

    storage: str
    config: Path
    model: Path
    seed: Model
    prefix: str
    url: str

    @property
    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def current(self) -> Model:
        """The model as the worker left it: the file, or the seed plus the shared log."""
        if self.storage == "file":
            return Model.load(self.model)
        shared = SharedModel(self.redis, self.prefix, self.seed)
        shared.load()
        return shared.model

    def events(self) -> list[dict[str, str]]:
        return [
            {k.decode(): v.decode() for k, v in fields.items()}
            for _id, fields in self.redis.xrange(self.prefix + LOG_KEY)
        ]

    def wait_events(
        self, n: int, dovecot: DovecotServer | None = None, timeout: float = 60
    ) -> list[dict[str, str]]:
        try:
            wait_for(lambda: len(self.events()) >= n, timeout, f"{n} learn events")
        except TimeoutError as exc:
            raise AssertionError(f"{exc}; dovecot log:\n{dovecot.log_text() if dovecot else ''}") from None
        return self.events()

    def pipeline(self) -> Pipeline:
        """filterd's own scoring: the bayes check as the milter runs it."""
        bayes = {"model": str(self.model), "storage": self.storage, "signature": False, "sync_interval": 0.01}
        return Pipeline.from_config(
            parse_config({"redis": {"url": self.url, "key_prefix": self.prefix}, "checks": only_bayes(bayes)})
        )


def spamicity(pipeline: Pipeline, raw: bytes) -> float:
    pipeline.checks[-1].holder.refresh(force=True)
    tx, _verdict = scan(pipeline, raw)
    value = spamicity_of(tx.findings)
    assert value is not None
    return value


@pytest.fixture(params=["file", "redis"])
def learning(request: pytest.FixtureRequest, redis_server, tmp_path: Path) -> Learning:
    storage = request.param
    model = tmp_path / "models" / "bayes.npz"
    model.parent.mkdir()
    seed = trained_model(30)
    seed.save(model)
    prefix = f"learn-{uuid.uuid4().hex[:8]}:"
    config = tmp_path / "filterd.toml"
    # train_mode stays the default (toe): a user's report trains as `filterctl train` would
    config.write_text(
        f'[redis]\nurl = "{redis_server.url}"\nkey_prefix = "{prefix}"\n'
        f'[checks.bayes]\nmodel = "{model}"\nstorage = "{storage}"\n'
    )
    return Learning(storage, config, model, seed, prefix, redis_server.url)


def start_worker(learning: Learning, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*FILTERCTL, "--config", str(learning.config), "learn-worker", *args],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


@pytest.fixture
def worker(learning: Learning) -> Iterator[subprocess.Popen[bytes]]:
    proc = start_worker(learning)
    yield proc
    proc.terminate()
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out.decode()


@pytest.fixture
def dovecot(learning: Learning) -> Iterator[DovecotServer]:
    server = DovecotServer(learning.config)
    server.start()
    yield server
    server.stop()


def move(imap, source: str, target: str) -> None:
    """MOVE every message of `source` to `target` (RFC 6851, as mail clients do)."""
    assert imap.select(source)[0] == "OK"
    typ, data = imap.uid("MOVE", "1:*", target)
    assert typ == "OK", data


@pytest.mark.stack
@needs_dovecot
def test_moves_into_and_out_of_junk_train_the_classifier(learning, dovecot, worker) -> None:
    pipeline = learning.pipeline()
    raw = novel_message("first")
    digest = message_digest(Message(raw))
    before = spamicity(pipeline, raw)
    assert 0.2 < before < 0.8  # nothing known about it yet
    imap = dovecot.imap()
    assert imap.append("INBOX", None, None, raw)[0] == "OK"  # APPEND to INBOX: no report

    move(imap, "INBOX", "Junk")
    [event] = learning.wait_events(1, dovecot)
    assert (event["user"], event["label"], event["result"], event["digest"]) == (
        USER,
        "spam",
        "learned",
        digest.hex(),
    )
    model = learning.current()
    assert (model.nspam, model.nham, model.records[digest]) == (31, 30, "spam")
    as_spam = spamicity(pipeline, raw)
    assert as_spam > 0.99

    move(imap, "Junk", "INBOX")
    event = learning.wait_events(2, dovecot)[1]
    assert (event["user"], event["label"], event["result"]) == (USER, "ham", "moved")
    model = learning.current()
    assert (model.nspam, model.nham, model.records[digest]) == (30, 31, "ham")
    assert spamicity(pipeline, raw) < 0.01

    # APPEND straight into Junk (how some clients move) reports spam; then Junk -> Trash: nothing
    second = novel_message("second")
    assert imap.append("Junk", None, None, second)[0] == "OK"
    assert learning.wait_events(3, dovecot)[2]["label"] == "spam"
    move(imap, "Junk", "Trash")
    move(imap, "INBOX", "Trash")  # not from Junk: nothing either
    # a report after them, so that any report of the Trash moves would have come before it
    third = novel_message("third")
    assert imap.append("INBOX", None, None, third)[0] == "OK"
    move(imap, "INBOX", "Junk")
    events = learning.wait_events(4, dovecot)
    assert [(e["label"], e["digest"]) for e in events[3:]] == [("spam", message_digest(Message(third)).hex())]
    model = learning.current()
    assert (model.nspam, model.nham) == (32, 31)
    assert model.records[message_digest(Message(second))] == "spam"
    imap.logout()
    counts = {k.decode(): int(v) for k, v in learning.redis.hgetall(learning.prefix + USERS_KEY).items()}
    assert counts == {f"spam:{USER}": 3, f"ham:{USER}": 1}
    assert learning.redis.xlen(learning.prefix + QUEUE_KEY) == 0  # acknowledged and deleted
    assert "Error" not in dovecot.log_text()
    pipeline.close()


def queue(
    learning: Learning, label: str, raw: bytes, user: str = "bob"
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*CLIENT, label, "--user", user, "--config", str(learning.config)],
        input=raw,
        env=ENV,
        capture_output=True,
    )


@pytest.mark.stack
def test_reports_wait_for_a_stopped_worker(learning) -> None:
    """No worker running (filterd restarting): the reports stay queued, and are trained in order
    when a worker comes."""
    raw = novel_message("waiting")
    assert queue(learning, "spam", raw).returncode == 0
    assert queue(learning, "ham", raw).returncode == 0
    assert queue(learning, "spam", novel_message("other"), user="carol").returncode == 0
    assert learning.redis.xlen(learning.prefix + QUEUE_KEY) == 3
    done = subprocess.run(
        [*FILTERCTL, "--config", str(learning.config), "learn-worker", "--once"],
        env=ENV,
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0 and b"3 reports trained" in done.stdout, done.stderr
    model = learning.current()
    assert model.records[message_digest(Message(raw))] == "ham"  # the last report wins
    assert (model.nspam, model.nham) == (31, 31)
    assert [(e["user"], e["label"], e["result"]) for e in learning.events()] == [
        ("bob", "spam", "learned"),
        ("bob", "ham", "moved"),
        ("carol", "spam", "learned"),
    ]
    assert learning.redis.xlen(learning.prefix + QUEUE_KEY) == 0


@pytest.mark.stack
def test_a_report_read_but_not_acknowledged_is_trained_after_a_crash(learning) -> None:
    """A worker that died between reading a report and acknowledging it: the next worker of that
    name reads its pending reports first; training is idempotent, so twice counts once."""
    from filterd.config import load_config

    raw = novel_message("crash")
    assert queue(learning, "spam", raw).returncode == 0
    cfg = load_config(str(learning.config))
    client = learning.redis
    first = Learner(cfg, client, consumer="host-a")
    [report] = first.read(block_ms=0)
    first.train([report])  # trained, then "killed": never acknowledged
    assert client.xpending(learning.prefix + QUEUE_KEY, GROUP)["pending"] == 1
    second = Learner(cfg, client, consumer="host-a")
    assert second.step(block_ms=0) == 1
    assert client.xpending(learning.prefix + QUEUE_KEY, GROUP)["pending"] == 0
    assert [e["result"] for e in learning.events()] == ["unchanged"]  # the first worker had trained it
    model = learning.current()
    assert (model.nspam, model.nham) == (31, 30)
    assert second.step(block_ms=0) == 0


def test_client_defaults_are_filterds() -> None:
    """filterd-learn reads [redis] without importing filterd.config: same defaults."""
    settings = RedisSettings()
    assert {name: getattr(settings, name) for name in RedisTarget._fields} == RedisTarget()._asdict()


@pytest.mark.stack
def test_client_is_small_and_fast(learning, tmp_path) -> None:
    """What Dovecot runs per moved message: no classifier, numpy or redis-py; time and memory of a
    call (measured here: 20-40 ms CPU, 12-14 MB RSS; the budget is 50 ms and 30 MB)."""
    probe = (
        "import sys, filterd.learnclient as c; sys.argv[1:] = ['spam', '--user', 'u', '--config', sys.argv[1]];"
        "rc = c.main(); heavy = [m for m in ('numpy', 'redis', 'sklearn', 'scipy', 'filterd.bayes', "
        "'filterd.pipeline', 'filterd.config') if m in sys.modules]; print(rc, heavy)"
    )
    msg = tmp_path / "msg.eml"
    msg.write_bytes(novel_message("probe") * 20)  # ~10 KB
    with msg.open("rb") as stdin:
        out = subprocess.run(
            [sys.executable, "-c", probe, str(learning.config)], stdin=stdin, env=ENV, capture_output=True
        )
    assert out.stdout.decode().splitlines()[-1] == "0 []", out.stderr
    # Measured from a small Python parent, not from pytest: a child's peak RSS (ru_maxrss) counts
    # the memory of the process it was forked from, and pytest's is hundreds of MB.
    measure = (
        "import json, os, subprocess, sys, time\n"
        "walls, cpus, rss = [], [], []\n"
        "for _ in range(10):\n"
        "    start = time.perf_counter()\n"
        "    with open(sys.argv[1], 'rb') as stdin:\n"
        "        proc = subprocess.Popen(sys.argv[2:], stdin=stdin)\n"
        "        _pid, status, usage = os.wait4(proc.pid, 0)\n"
        "    assert os.waitstatus_to_exitcode(status) == 0\n"
        "    walls.append(time.perf_counter() - start)\n"
        "    cpus.append(usage.ru_utime + usage.ru_stime)\n"
        "    rss.append(usage.ru_maxrss / 1024)\n"
        "print(json.dumps([walls, cpus, rss]))\n"
    )
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            measure,
            str(msg),
            *BARE_CLIENT,
            "spam",
            "-q",
            "--config",
            str(learning.config),
        ],
        env=ENV,
        capture_output=True,
        check=True,
    )
    walls, cpus, rss = json.loads(done.stdout)
    print(
        f"filterd-learn: wall median {statistics.median(walls) * 1000:.1f} ms (least "
        f"{min(walls) * 1000:.1f}), CPU median {statistics.median(cpus) * 1000:.1f} ms (least "
        f"{min(cpus) * 1000:.1f}), peak RSS {max(rss):.1f} MB"
    )
    # The budget is 50 ms: the least of ten calls is what a call costs; load on a shared 2-core
    # machine stretches wall time (and the median most), so those get a margin.
    assert min(cpus) <= 0.050 and min(walls) <= 0.150
    assert statistics.median(walls) <= 0.400
    assert max(rss) <= 30
    assert learning.redis.xlen(learning.prefix + QUEUE_KEY) == 11


@pytest.mark.stack
def test_client_failures_have_exit_statuses(learning, tmp_path) -> None:
    down = tmp_path / "down.toml"
    down.write_text('[redis]\nurl = "redis://127.0.0.1:1/0"\n')
    run = subprocess.run(
        [*CLIENT, "spam", "--config", str(down)], input=novel_message("x"), env=ENV, capture_output=True
    )
    assert run.returncode == 75 and b"redis at redis://127.0.0.1:1/0" in run.stderr
    assert queue(learning, "spam", b"\r\n").returncode == 65
    assert subprocess.run([*CLIENT, "maybe"], input=b"x", env=ENV, capture_output=True).returncode == 64
    missing = subprocess.run(
        [*CLIENT, "spam", "--config", str(tmp_path / "nope.toml")], input=b"x", env=ENV, capture_output=True
    )
    assert missing.returncode == 78


@pytest.mark.stack
@needs_dovecot
def test_a_move_is_done_even_when_redis_is_down(tmp_path) -> None:
    """filterd-learn failing (Redis unreachable) never fails the user's MOVE: Dovecot logs the
    failure and the message is in Junk."""
    config = tmp_path / "filterd.toml"
    config.write_text('[redis]\nurl = "redis://127.0.0.1:1/0"\n')
    server = DovecotServer(config)
    server.start()
    try:
        imap = server.imap()
        assert imap.append("INBOX", None, None, novel_message("down"))[0] == "OK"
        move(imap, "INBOX", "Junk")
        assert imap.select("Junk") == ("OK", [b"1"])
        imap.logout()
        wait_for(lambda: "redis at redis://127.0.0.1:1/0" in server.log_text(), 10, "the failure in the log")
        assert "Terminated with non-zero exit code 75" in server.log_text()
    finally:
        server.stop()


@pytest.mark.stack
def test_client_speaks_to_a_password_protected_unix_socket_redis(tmp_path) -> None:
    """The quick start's Redis: AUTH required, a unix socket only; and a database other than 0."""
    from tests.harness.redis import RedisServer

    server = RedisServer(tmp_path / "redis", password="s3cret pass", unix_socket=True)
    server.start()
    try:
        config = tmp_path / "filterd.toml"
        config.write_text(
            f'[redis]\nurl = "unix://{server.socket_path}?db=2"\npassword = "s3cret pass"\nkey_prefix = "x:"\n'
        )
        run = subprocess.run(
            [*CLIENT, "ham", "--user", "dora", "--config", str(config)],
            input=novel_message("unix"),
            env=ENV,
            capture_output=True,
        )
        assert run.returncode == 0, run.stderr
        client = redis.Redis(unix_socket_path=str(server.socket_path), password="s3cret pass", db=2)
        [(_id, fields)] = client.xrange("x:" + QUEUE_KEY)
        assert (fields[b"label"], fields[b"user"]) == (b"ham", b"dora")
        assert fields[b"message"] == novel_message("unix")
        config.write_text(f'[redis]\nurl = "unix://{server.socket_path}"\npassword = "wrong"\n')
        run = subprocess.run(
            [*CLIENT, "ham", "--config", str(config)], input=b"x", env=ENV, capture_output=True
        )
        assert run.returncode == 75 and b"WRONGPASS" in run.stderr
    finally:
        server.stop()


@pytest.mark.stack
def test_a_pending_report_deleted_by_hand_is_dropped(learning) -> None:
    from filterd.config import load_config

    assert queue(learning, "spam", novel_message("kept")).returncode == 0
    assert queue(learning, "spam", novel_message("deleted")).returncode == 0
    cfg = load_config(str(learning.config))
    client = learning.redis
    kept, deleted = Learner(cfg, client, consumer="host-b").read(block_ms=0)
    client.xdel(learning.prefix + QUEUE_KEY, deleted.entry_id)
    assert Learner(cfg, client, consumer="host-b").step(block_ms=0) == 1
    assert client.xpending(learning.prefix + QUEUE_KEY, GROUP)["pending"] == 0
    assert [e["queued"] for e in learning.events()] == [kept.entry_id]

"""filterd's mail log: where it goes, its severities, the queue id on every line of a message,
the per-message line's layout (read here with mailgraph's own patterns), and the report header's
folding.  The last test runs it all through the real Postfix, with filterd logging to a private
syslog socket this test reads."""

from __future__ import annotations

import email
import email.policy
import io
import logging
import os
import re
import smtplib
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from filterd import maillog
from filterd.maillog import LogSettings, handling
from filterd.report import (
    HEADER_WIDTH,
    REASON_LIMIT,
    REPORT_HEADER,
    line_level,
    log_line,
    log_verdict,
    report_value,
    shorten,
    verdict_headers,
)
from filterd.results import Action, Stage, Symbol, Verdict
from filterd.settings import ConfigError, build
from filterd.transaction import Session, Transaction

QID = "4F3A21C0D2"


class Message:
    """What the milter hands `handling`: anything with a queue_id."""

    def __init__(self, queue_id: str | None) -> None:
        self.queue_id = queue_id


class SyslogServer:
    """A private unix datagram socket standing in for /dev/log: the datagrams it received."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        os.chmod(path, 0o666)
        self.sock.settimeout(0.2)
        self.lines: list[str] = []
        self.lock = threading.Lock()
        self.copy_to: Path | None = None  # also append each line to this file (filterd's log)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopped.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            line = data.decode("utf-8", "replace")
            with self.lock:
                self.lines.append(line)
                if self.copy_to is not None:
                    with self.copy_to.open("a") as f:
                        f.write(line + "\n")

    def wait_for(self, predicate: object, timeout: float = 10.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                found = [line for line in self.lines if predicate(line)]  # type: ignore[operator]
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(2)
        self.sock.close()
        self.path.unlink(missing_ok=True)


@pytest.fixture
def sockdir() -> Iterator[Path]:
    # a short path: a unix socket's name is at most 107 bytes (pytest's tmp_path can be longer)
    path = Path(tempfile.mkdtemp(prefix="fd-log-"))
    yield path
    for p in path.iterdir():
        p.unlink()
    path.rmdir()


@pytest.fixture
def syslog(sockdir: Path) -> Iterator[SyslogServer]:
    server = SyslogServer(sockdir / "log")
    yield server
    server.close()


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
        if h not in handlers:
            h.close()
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


def syslog_settings(path: Path, **kw: str) -> LogSettings:
    return LogSettings(destination="syslog", socket=str(path), **kw)  # type: ignore[arg-type]


# What syslog(3) sends: <PRI>Mmm dd hh:mm:ss ident[pid]: text
DATAGRAM = re.compile(r"^<(\d+)>([A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d) ([^\[: ]+)\[(\d+)\]: (.*)$", re.S)


def parse_datagram(line: str) -> tuple[int, int, str, int, str]:
    """(facility, severity, ident, pid, text) of a datagram."""
    m = DATAGRAM.match(line)
    assert m, f"not a syslog(3) datagram: {line!r}"
    pri = int(m.group(1))
    return pri // 8, pri % 8, m.group(3), int(m.group(4)), m.group(5)


# -- destinations and severities -------------------------------------------------------------


def test_syslog_lines_have_facility_mail_real_severities_and_one_prefix(syslog: SyslogServer) -> None:
    maillog.configure(syslog_settings(syslog.path), "debug")
    log = logging.getLogger("filterd.test")
    log.debug("d")
    log.info("a verdict")
    log.warning("policy applied")
    log.error("a failure")
    lines = syslog.wait_for(lambda line: "a failure" in line)
    assert lines
    got = [parse_datagram(line) for line in syslog.lines]
    assert [(f, s, t) for f, s, _, _, t in got] == [
        (2, 7, "debug: d"),
        (2, 6, "a verdict"),  # info: no label
        (2, 4, "warning: policy applied"),
        (2, 3, "error: a failure"),
    ]
    assert {(ident, pid) for _, _, ident, pid, _ in got} == {("filterd", os.getpid())}
    assert all(line.count("filterd[") == 1 for line in syslog.lines)  # the prefix, once


def test_facility_and_ident_are_configurable_and_validated(syslog: SyslogServer) -> None:
    maillog.configure(syslog_settings(syslog.path, facility="local3", ident="filterd-mx2"), "info")
    logging.getLogger("filterd").info("hello")
    (line,) = syslog.wait_for(lambda line: "hello" in line)
    assert parse_datagram(line)[:3] == (19, 6, "filterd-mx2")  # local3 = 19
    with pytest.raises(ConfigError, match=r"log\.facility.*expected a syslog facility"):
        build(LogSettings, {"facility": "mial"}, "log")
    with pytest.raises(ConfigError, match=r"log\.socket"):
        build(LogSettings, {"socket": "dev/log"}, "log")
    with pytest.raises(ConfigError, match=r"log\.ident"):
        build(LogSettings, {"ident": "filter d"}, "log")
    with pytest.raises(ConfigError, match=r"log\.destination"):
        build(LogSettings, {"destination": "journal"}, "log")


def test_without_syslog_the_log_falls_back_to_stderr_and_says_so(
    sockdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    maillog.configure(syslog_settings(sockdir / "absent"), "info")
    logging.getLogger("filterd").info("still seen")
    err = capsys.readouterr().err
    assert f"cannot log to syslog at {sockdir / 'absent'}" in err and "logging to stderr" in err
    assert f"filterd[{os.getpid()}]: still seen" in err


def test_a_restarted_syslog_gets_the_next_line(syslog: SyslogServer) -> None:
    maillog.configure(syslog_settings(syslog.path), "info")
    log = logging.getLogger("filterd")
    log.info("before")
    assert syslog.wait_for(lambda line: "before" in line)
    path = syslog.path
    syslog.close()  # syslog restarts: its socket goes and comes back
    again = SyslogServer(path)
    try:
        log.info("after the restart")
        assert again.wait_for(lambda line: "after the restart" in line)
    finally:
        again.close()


def test_a_line_syslog_cannot_take_goes_to_stderr(
    syslog: SyslogServer, capsys: pytest.CaptureFixture[str]
) -> None:
    maillog.configure(syslog_settings(syslog.path), "info")
    syslog.close()  # gone for good
    logging.getLogger("filterd").warning("not lost")
    err = capsys.readouterr().err
    assert "warning: not lost" in err and "unreachable" in err


def test_a_stuck_syslog_delays_a_line_half_a_second_at_most(
    sockdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stuck = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # bound, never read: its queue fills
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.bind(str(sockdir / "stuck"))
    try:
        maillog.configure(syslog_settings(sockdir / "stuck"), "info")
        log = logging.getLogger("filterd")
        for i in range(5000):
            started = time.monotonic()
            log.info("line %d %s", i, "x" * 2000)
            took = time.monotonic() - started
            if "did not take it" in capsys.readouterr().err:
                break
        else:
            pytest.fail("the queue never filled")
        assert took < maillog.SEND_TIMEOUT + 0.3
    finally:
        stuck.close()


def _stderr_lines(settings: LogSettings, emit: object) -> list[str]:
    stream = io.StringIO()
    real = sys.stderr
    sys.stderr = stream
    try:
        maillog.configure(settings, "info")
        emit()  # type: ignore[operator]
    finally:
        sys.stderr = real
    return stream.getvalue().splitlines()


def test_journald_stderr_carries_the_severity_and_no_prefix() -> None:
    def emit() -> None:
        log = logging.getLogger("filterd")
        log.info("a verdict")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("a failure")

    lines = _stderr_lines(LogSettings(destination="journald-stderr"), emit)
    assert lines[0] == "<6>a verdict"
    assert lines[1] == "<3>error: a failure"
    assert len(lines) > 3 and all(line.startswith("<3>") for line in lines[2:])  # the traceback too
    assert not any("filterd[" in line for line in lines)  # journald adds it: never twice


def test_plain_stderr_has_one_prefix_and_becomes_journald_when_stderr_is_the_journal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def emit() -> None:
        logging.getLogger("filterd").warning("x")

    assert _stderr_lines(LogSettings(destination="stderr"), emit) == [f"filterd[{os.getpid()}]: warning: x"]
    # systemd's $JOURNAL_STREAM names stderr's device and inode when stderr is the journal
    with tempfile.TemporaryFile("w+") as journal:
        st = os.fstat(journal.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        real = sys.stderr
        sys.stderr = journal
        try:
            maillog.configure(LogSettings(destination="stderr"), "info")
            logging.getLogger("filterd").warning("x")
            logging.getLogger().handlers[0].flush()
        finally:
            sys.stderr = real
        journal.seek(0)
        assert journal.read() == "<4>warning: x\n"


# -- the queue id ------------------------------------------------------------------------------


def test_every_line_logged_while_a_message_is_handled_starts_with_its_queue_id(syslog: SyslogServer) -> None:
    maillog.configure(syslog_settings(syslog.path), "info")
    message = Message(None)
    with handling(message):
        # a service deep in a check: knows nothing of the message
        logging.getLogger("filterd.clamd").warning("clamd unix:/x failed, trying the next one: refused")
        message.queue_id = QID  # Postfix gives the id at DATA
        logging.getLogger("filterd.redis").warning("greylist: Redis unavailable: timeout")
        logging.getLogger("filterd.pipeline").warning("%s: check spf failed: boom", QID)  # names it itself
    logging.getLogger("filterd").info("listening on unix:/x")  # outside a message: no id
    syslog.wait_for(lambda line: "listening" in line)
    texts = [parse_datagram(line)[4] for line in syslog.lines]
    assert texts == [
        "NOQUEUE: warning: clamd unix:/x failed, trying the next one: refused",
        f"{QID}: warning: greylist: Redis unavailable: timeout",
        f"{QID}: warning: check spf failed: boom",  # not "QID: warning: QID: ..."
        "listening on unix:/x",
    ]


def test_a_backend_breaker_opening_on_a_message_names_that_message(syslog: SyslogServer) -> None:
    """One of the warnings that named no message: a circuit breaker, deep in a service."""
    from filterd.breaker import Breaker, BreakerSettings

    maillog.configure(syslog_settings(syslog.path), "info")
    breaker = Breaker("clamd unix:/run/clamd.ctl", BreakerSettings(failures=2))
    with handling(Message(QID)):
        breaker.failure("refused")
        breaker.failure("refused")
    (line,) = syslog.wait_for(lambda line: "circuit breaker open" in line)
    _, sev, _, _, text = parse_datagram(line)
    assert sev == 4 and text.startswith(f"{QID}: warning: clamd unix:/run/clamd.ctl: circuit breaker open")


def test_the_queue_id_stays_with_its_own_thread() -> None:
    """libmilter runs connections in threads: one connection's id never shows on another's lines."""
    seen: dict[str, str | None] = {}
    barrier = threading.Barrier(2)

    def connection(qid: str) -> None:
        with handling(Message(qid)):
            barrier.wait()  # both inside their callbacks at once
            seen[qid] = maillog.current_queue_id()
            barrier.wait()
        seen[qid + " after"] = maillog.current_queue_id()

    threads = [threading.Thread(target=connection, args=(q,)) for q in ("AAA111", "BBB222")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {"AAA111": "AAA111", "BBB222": "BBB222", "AAA111 after": None, "BBB222 after": None}


def test_the_milters_smtp_reply_warning_names_the_queue_id(
    caplog: pytest.LogCaptureFixture, syslog: SyslogServer
) -> None:
    """The warnings that carried no queue id (found at an earlier commit) now do, whichever path."""
    from filterd.milter import FilterdMilter

    maillog.configure(syslog_settings(syslog.path), "info")
    milter = object.__new__(FilterdMilter)  # only what the wrapper and _setreply touch

    class Tx:
        queue_id = QID

    class FakeDriver:
        tx = Tx()

    milter.driver = FakeDriver()  # type: ignore[assignment]
    milter.setreply = lambda *a: (_ for _ in ()).throw(RuntimeError("no"))  # type: ignore[method-assign]
    from filterd.replies import R451_CHECK_FAILED

    with handling(milter):
        milter._setreply(R451_CHECK_FAILED)
    (line,) = syslog.wait_for(lambda line: "could not set the SMTP reply" in line)
    facility, sev, _, _, text = parse_datagram(line)
    assert (facility, sev) == (2, 4) and text.startswith(f"{QID}: warning: could not set the SMTP reply")


# -- the per-message line -----------------------------------------------------------------------


def transaction(**kw: object) -> Transaction:
    session = Session(client_addr="192.0.2.7", client_name="mail.example.org", helo="mail.example.org")
    tx = Transaction.start(session)
    tx.queue_id = QID
    tx.mail_from = "alice@example.org"
    tx.rcpts = ["bob@example.net"]
    tx.timings[Stage.EOM] = 0.0012
    for k, v in kw.items():
        setattr(tx, k, v)
    return tx


def verdict(
    action: Action, score: float, *symbols: tuple[str, float, str], reason: str | None = None
) -> Verdict:
    from filterd.replies import R550_SPAM, Reject

    v = Verdict(score=score, required=5.0, action=action, symbols=[Symbol(*s) for s in symbols])
    if reason is not None:
        v.decision = Reject(R550_SPAM, reason)
    return v


def fields(line: str) -> tuple[str, dict[str, str]]:
    """A Postfix-style line: 'QID: k=v, k=v, ...' (reason last: it may hold ', ')."""
    qid, _, rest = line.partition(": ")
    head, _, reason = rest.partition(", reason=")
    out = dict(part.split("=", 1) for part in head.split(", "))
    if reason:
        out["reason"] = reason
    return qid, out


def test_the_line_starts_with_the_queue_id_and_is_postfix_key_value() -> None:
    v = verdict(Action.REJECT, 17.2, ("GTUBE", 1000.0, "the GTUBE test string"), reason="score 17.2 >= 15.0")
    line = log_line(transaction(), v)
    qid, f = fields(line)
    assert qid == QID and line.startswith(
        f"{QID}: action=reject, spam_status=yes, score=17.20/5.00, symbols="
    )
    assert f["symbols"] == "GTUBE(1000)"
    assert f["client"] == "mail.example.org[192.0.2.7]" and f["from"] == "<alice@example.org>"
    assert f["rcpts"] == "<bob@example.net>" and f["direction"] == "inbound"
    assert f["reason"] == "'score 17.2 >= 15.0'" and "virus_status" not in f
    assert log_line(transaction(queue_id=None), v).startswith("NOQUEUE: action=reject")


def test_a_hostile_envelope_cannot_split_the_line_or_its_fields() -> None:
    tx = transaction(mail_from="a@b.example, score=0.00", rcpts=["x@y\nQID: action=accept"])
    tx.session.helo = "evil\r\nfilterd[1]: FAKE: action=accept"
    line = log_line(tx, verdict(Action.ACCEPT, 0.0, reason="first\nsecond\x00 third"))
    assert "\n" not in line and "\r" not in line and "\x00" not in line
    _, f = fields(line)
    assert f["action"] == "accept" and f["score"] == "0.00/5.00"  # not the sender's ", score=0.00"
    assert f["reason"] == "'first second\\\\x00 third'"


def test_long_lists_and_reasons_are_bounded_and_never_cut_inside_a_word() -> None:
    rcpts = [f"user{i}@example.net" for i in range(1000)]
    symbols = [(f"RULE_NUMBER_{i}", 0.5, "r") for i in range(400)]
    reason = "word " * 400
    line = log_line(transaction(rcpts=rcpts), verdict(Action.REJECT, 200.0, *symbols, reason=reason))
    assert len(line.encode()) < 8000  # rsyslog's default maximum message size is 8 KiB
    _, f = fields(line)
    shown_rcpts = f["rcpts"].strip("<>").split(",")
    assert shown_rcpts[-1].startswith("...(+") and all(r in rcpts for r in shown_rcpts[:-1])
    assert int(shown_rcpts[-1][5:-1]) + len(shown_rcpts) - 1 == 1000  # the rest counted
    shown = f["symbols"].split(",")
    assert all(s.startswith("RULE_NUMBER_") and s.endswith("(0.5)") for s in shown[:-1])
    assert f["reason"].endswith("word...'") and set(f["reason"].strip("'.").split()) == {"word"}


def test_the_line_is_logged_at_its_severity_and_keeps_its_shape(syslog: SyslogServer) -> None:
    maillog.configure(syslog_settings(syslog.path), "info")
    failed_open = verdict(Action.ACCEPT, 0.0, ("CHECK_ERROR", 0.0, "spf skipped (fail-open): TimeoutError"))
    with handling(Message(QID)):
        log_verdict(transaction(), failed_open)
        log_verdict(transaction(), verdict(Action.ACCEPT, 0.0))
    syslog.wait_for(lambda line: "CHECK_ERROR" not in line)  # the second, sent after the first
    (f1, s1, _, _, t1), (f2, s2, _, _, t2) = (parse_datagram(line) for line in syslog.lines[:2])
    assert (f1, s1) == (2, 4) and t1.startswith(f"{QID}: action=accept, ")  # no "warning: " inside
    assert (f2, s2) == (2, 6) and t2.startswith(f"{QID}: action=accept, ")


def test_severity_of_the_line() -> None:
    assert line_level(verdict(Action.REJECT, 20.0, ("GTUBE", 20.0, "x"))) == logging.INFO
    assert (
        line_level(verdict(Action.ACCEPT, 0.0, ("CHECK_ERROR", 0.0, "spf skipped (fail-open)")))
        == logging.WARNING
    )
    assert (
        line_level(verdict(Action.ACCEPT, 0.0, ("CLAM_VIRUS_FAIL", 0.0, "clamd unavailable")))
        == logging.WARNING
    )
    assert line_level(verdict(Action.ACCEPT, 0.0, ("GREYLIST_REDIS_ERROR", 0.0, "x"))) == logging.WARNING
    assert line_level(verdict(Action.ACCEPT, 0.0, ("INTERNAL_ERROR", 0.0, "x"))) == logging.ERROR
    assert line_level(verdict(Action.ACCEPT, 0.0, ("SPF_FAIL", 0.0, "the sender's verdict"))) == logging.INFO


# -- mailgraph ----------------------------------------------------------------------------------
# mailgraph.pl (1.14, David Schweikert) reads syslog lines with Parse::Syslog into (time, host,
# program, pid, text) and picks its rules by program.  The rules below are its patterns,
# re-implemented here from its process_line: Postfix's smtpd/cleanup reject lines, amavis, and
# the two whose words filterd's line carries -- "filter-module" (spam) and "clamsmtpd" (virus).

SYSLOG_LINE = re.compile(
    r"^(\w{3} [ \d]\d \d\d:\d\d:\d\d(?:\.\d+)?) (?:(\S+) )?([^\[:\s]+)(?:\[(\d+)\])?: (.*)$"
)
QUEUED_REJECT = re.compile(r"^(?:[0-9A-Za-z]+: |NOQUEUE: )?(?:milter-)?reject: ")
CLEANUP_REJECT = re.compile(r"^[0-9A-Za-z]+: (?:reject|discard): ")
MILTER_REJECT = re.compile(r"^(?:[0-9A-Za-z]+: |NOQUEUE: )?milter-reject: ")
AMAVIS_SPAM = re.compile(r"^\([\w-]+\) (Passed|Blocked) SPAM(?:MY)?\b")
AMAVIS_VIRUS = re.compile(r"^\([\w-]+\) (Passed |Blocked )?INFECTED\b")
FILTER_MODULE_SPAM = re.compile(r"\bspam_status\=(?:yes|spam)")
CLAMSMTPD_VIRUS = re.compile(r"status=VIRUS")


def mailgraph_events(line: str, filterd_known: bool = True) -> list[str]:
    """What mailgraph counts for one syslog line.  `filterd_known`: with the branch the README
    gives mailgraph for filterd (its clamsmtpd virus rule, else its filter-module spam rule)."""
    m = SYSLOG_LINE.match(line)
    if not m:
        return []
    prog, text = m.group(3), m.group(5)
    if prog.startswith("postfix") and "/" in prog:
        service = prog.split("/", 1)[1]
        if service == "smtpd":
            if MILTER_REJECT.match(text):
                return ["spam" if "Blocked by SpamAssassin" in text else "rejected"]
            if QUEUED_REJECT.match(text):
                return ["rejected"]
        if service == "cleanup" and CLEANUP_REJECT.match(text):
            return ["rejected"]
        return []
    if prog in ("amavis", "amavisd"):
        if AMAVIS_SPAM.match(text):
            return ["spam"]
        return ["virus"] if AMAVIS_VIRUS.match(text) else []
    if prog == "filter-module":
        return ["spam"] if FILTER_MODULE_SPAM.search(text) else []
    if prog == "clamsmtpd":
        return ["virus"] if CLAMSMTPD_VIRUS.search(text) else []
    if prog == "filterd" and filterd_known:
        if CLAMSMTPD_VIRUS.search(text):
            return ["virus"]
        return ["spam"] if FILTER_MODULE_SPAM.search(text) else []
    return []


def as_mail_log(datagram: str, host: str = "mx") -> str:
    """What rsyslog writes for a datagram in /var/log/mail.log: the priority goes, the host comes."""
    m = DATAGRAM.match(datagram)
    assert m
    return f"{m.group(2)} {host} {m.group(3)}[{m.group(4)}]: {m.group(5)}"


def test_mailgraph_counts_filterds_spam_and_virus_lines_and_not_its_ham(syslog: SyslogServer) -> None:
    maillog.configure(syslog_settings(syslog.path), "info")
    log = logging.getLogger("filterd")
    spam = verdict(Action.REJECT, 1000.0, ("GTUBE", 1000.0, "GTUBE"), reason="score 1000 >= 15")
    virus = verdict(
        Action.REJECT, 20.0, ("CLAM_VIRUS", 20.0, "virus Eicar found"), reason="virus Eicar found"
    )
    tagged = verdict(Action.ADD_HEADER, 6.0, ("BAYES_SPAM", 6.0, "x"))
    ham = verdict(Action.ACCEPT, 0.5, ("SPF_PASS", 0.5, "spam_status words in a reason: spam_status=yes"))
    for v in (spam, virus, tagged, ham):
        log.info(log_line(transaction(), v))
    assert len(syslog.wait_for(lambda line: "SPF_PASS" in line)) == 1
    mail_log = [as_mail_log(line) for line in syslog.lines]
    assert [mailgraph_events(line) for line in mail_log] == [["spam"], ["virus"], ["spam"], []]
    assert all(SYSLOG_LINE.match(line).group(5).startswith(f"{QID}: action=") for line in mail_log)  # type: ignore[union-attr]
    # the amavis rules need "(log-id) Blocked SPAM" first: a queue id first rules them out
    assert not any(AMAVIS_SPAM.match(line) or AMAVIS_VIRUS.match(line) for line in mail_log)
    # stock mailgraph picks rules by program: without the filterd branch, nothing is counted
    assert [mailgraph_events(line, filterd_known=False) for line in mail_log] == [[], [], [], []]


# -- the report header ---------------------------------------------------------------------------


def test_the_report_header_folds_at_white_space_and_never_cuts_a_reason_inside_a_word() -> None:
    long_reason = (
        " ".join(f"w{i:03d}" for i in range(40)) + " http://example.com/" + "a" * 80
    )  # 299 characters
    v = verdict(
        Action.ADD_HEADER,
        7.0,
        ("MISSING_DATE", 1.0, "no Date header"),
        ("LONG_ONE", 3.0, long_reason),
        ("HOSTILE", 3.0, "line\r\nbreak\tand\x00nul"),
        ("TOO_LONG", 0.0, "many words " * 100),
    )
    value = report_value(v)
    physical = f"{REPORT_HEADER}: {value}".split("\n")
    assert all(
        len(line) <= HEADER_WIDTH for line in physical if len(line.split()) > 1
    )  # one long word may pass
    assert all(len(line) <= 998 for line in physical)
    assert all(line.startswith("\t") and line.strip() for line in physical[1:])  # folds, never blank
    # unfolded, every word of every reason is there, whole and in order
    unfolded = " ".join(value.split())
    assert long_reason in unfolded and "no Date header" in unfolded
    assert "* 1.0 MISSING_DATE no Date header" in unfolded
    assert "HOSTILE line break and\\x00nul" in unfolded
    too_long = unfolded.split("TOO_LONG ", 1)[1]
    assert too_long.endswith(" words...") or too_long.endswith(" many...")  # where a word ends
    assert (
        set(too_long.removesuffix("...").split()) == {"many", "words"} and len(too_long) <= REASON_LIMIT + 3
    )
    # an email parser reads the header back to the same text
    raw = f"{REPORT_HEADER}: {value}\n\nbody\n".replace("\n", "\r\n").encode()
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert " ".join(str(parsed[REPORT_HEADER]).split()) == unfolded
    assert dict(verdict_headers(v))[REPORT_HEADER] == value


def test_a_very_long_reason_is_shortened_where_a_word_ends() -> None:
    text = "alpha beta " * 100
    short = shorten(text, 100)
    assert short.endswith("...") and len(short) <= 103
    assert short[:-3].split() == ("alpha beta " * 100).split()[: len(short[:-3].split())]
    assert shorten("one two", 100) == "one two"
    assert shorten("x" * 50, 10) == "x" * 7 + "..."  # one word longer than the limit: the only cut


# -- end to end through Postfix -------------------------------------------------------------------


@pytest.mark.stack
def test_filterd_logs_to_syslog_with_postfixs_queue_id(stack: object) -> None:
    from tests.harness.net import free_port
    from tests.harness.stack import Stack, make_message

    assert isinstance(stack, Stack)
    server = SyslogServer(stack.dir / "syslog.sock")
    server.copy_to = stack.filterd.log_path  # the harness waits for "listening on" there
    config = {
        "log": {"destination": "syslog", "socket": str(server.path)},
        # a Redis that is not there, and a check that needs it, fail-open: mail-path warnings
        "redis": {"url": f"redis://127.0.0.1:{free_port()}/0", "timeout": 0.2},
        "checks": {"reputation": {"enabled": True, "redis_retry_after": 0.0}},
    }
    try:
        with stack.configured(config):
            msg, marker = make_message("syslog")
            stack.send(msg)
            got = stack.sink.find(marker)
            # Postfix's queue id, from its own Received header: "... with ESMTP id 4F3A21C0D2 ..."
            received = " ".join(got.header("Received")[0].split())
            m = re.search(r"\bwith E?SMTP id ([0-9A-Za-z]+)", received)
            assert m, received
            qid = m.group(1)
            lines = server.wait_for(lambda line: f"]: {qid}: action=" in line)
            assert len(lines) == 1, server.lines
            facility, sev, ident, pid, text = parse_datagram(lines[0])
            assert (facility, ident) == (2, "filterd") and pid != os.getpid()
            assert sev == 4, "a fail-open policy applied (Redis unavailable): a warning"
            assert text.startswith(f"{qid}: action=accept, spam_status=no, score=")
            assert "REPUTATION_REDIS_ERROR" in text
            # every warning on the mail path names the message: its queue id, or NOQUEUE before
            # Postfix has given one (the sender's reputation is read at MAIL FROM), as Postfix does
            warnings = server.wait_for(lambda line: "reputation: Redis unavailable" in line)
            assert warnings
            for w in warnings:
                facility, sev, _, _, text = parse_datagram(w)
                assert (facility, sev) == (2, 4)
                assert re.match(rf"^(?:{qid}|NOQUEUE): warning: reputation: Redis unavailable: ", text), w
            assert any(
                parse_datagram(w)[4].startswith(f"{qid}: ") for w in warnings
            )  # learning, after the verdict

            # a rejected spam: Postfix logs milter-reject (mailgraph: "rejected"), filterd's own
            # line says spam (mailgraph, with the filterd branch: "spam")
            gtube = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
            spam, spam_marker = make_message("gtube", body=f"{gtube}\r\n")
            with pytest.raises(smtplib.SMTPDataError):
                stack.send(spam)
            postfix_log = stack.postfix.maillog.read_text(errors="replace").splitlines()
            qids = [
                mm.group(1)
                for line in postfix_log
                if (mm := re.search(rf"cleanup\[\d+\]: ([0-9A-Za-z]+): message-id=<{spam_marker}@", line))
            ]
            assert len(qids) == 1, postfix_log[-20:]
            (spam_line,) = server.wait_for(lambda line: f"]: {qids[0]}: action=reject" in line)
            assert mailgraph_events(as_mail_log(spam_line)) == ["spam"]
            # Postfix's own line for a reject at end of message comes from cleanup, as
            # "QID: milter-reject: END-OF-MESSAGE ...": mailgraph's cleanup rule wants
            # "QID: reject:" and its milter-reject rule is smtpd's, so it counts nothing for it
            (reject,) = [line for line in postfix_log if f"{qids[0]}: milter-reject: END-OF-MESSAGE" in line]
            parsed = SYSLOG_LINE.match(reject)
            assert parsed and parsed.group(3) == "postfix/cleanup" and mailgraph_events(reject) == []
    finally:
        server.close()

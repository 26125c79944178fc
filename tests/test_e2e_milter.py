"""End to end: smtplib -> private Postfix -> filterd over a unix socket -> Postfix -> sink."""

from __future__ import annotations

import smtplib
import threading
import time
from pathlib import Path

import pytest

from tests.harness.stack import Stack, make_message

pytestmark = pytest.mark.stack


def test_clean_message_delivered_with_verdict_headers_and_forged_ones_removed(stack: Stack) -> None:
    msg, marker = make_message(
        "clean",
        headers=[
            ("X-Spam-Status", "No, score=-100 required=5"),
            ("X-Spam-Flag", "NO"),
            ("X-Mailer", "kept"),
            ("x-spam-flag", "NO again"),  # the same name twice, in another case: both go
            ("X-Spam-Report", "forged"),
        ],
    )
    assert stack.send(msg) == {}
    got = stack.sink.find(marker)
    assert got.header("X-Mailer") == ["kept"]
    assert got.header("X-Spam-Status") == ["No, score=0.00 required=5.00"]
    assert got.header("X-Spam-Score") == ["0.00"]
    assert got.header("X-Spam-Flag") == []
    report = got.header("X-Spam-Report")
    assert len(report) == 1 and "action=accept" in report[0] and "forged" not in report[0]
    assert b"\r\n\r\nHello,\r\njust a test.\r\n" in got.data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def test_symbols_and_reasons_reach_the_report_header(stack: Stack) -> None:
    msg, marker = make_message("no date")
    msg = b"\r\n".join(line for line in msg.split(b"\r\n") if not line.startswith(b"Date:"))
    stack.send(msg)
    got = stack.sink.find(marker)
    assert "MISSING_DATE no Date header" in got.header("X-Spam-Report")[0]
    assert got.header("X-Spam-Score") == ["1.00"]


def test_deny_listed_client_gets_filterds_5xx_and_nothing_is_delivered(stack: Stack, tmp_path: Path) -> None:
    deny = stack.dir / "client-deny.txt"
    deny.write_text("# test deny list\n127.0.0.0/8  # all of loopback\n")
    with stack.configured({"checks": {"client_lists": {"deny_file": str(deny)}}}):
        msg, marker = make_message("denied")
        with pytest.raises(smtplib.SMTPException) as info:
            stack.send(msg)
        assert "deny list" in str(info.value) and "550" in str(info.value)
    time.sleep(1.0)
    assert stack.sink.count(marker) == 0


def test_deny_listed_recipient_is_refused_alone(stack: Stack) -> None:
    deny = stack.dir / "rcpt-deny.txt"
    deny.write_text("blocked@example.net\n")
    with stack.configured({"checks": {"recipient_lists": {"deny_file": str(deny)}}}):
        msg, marker = make_message("one rcpt denied")
        refused = stack.send(msg, rcpts=("blocked@example.net", "ok@example.net"))
        assert refused["blocked@example.net"][0] == 550
        assert b"5.7.1" in refused["blocked@example.net"][1]
        got = stack.sink.find(marker)
        assert got.rcpts == ("ok@example.net",)


def test_score_over_threshold_rewrites_subject_and_flags_spam(stack: Stack) -> None:
    config = {
        "actions": {"rewrite_subject": 4.0, "add_header": 3.0, "subject_tag": "[SPAM]"},
        "scores": {"MISSING_MESSAGE_ID": 4.5},
    }
    with stack.configured(config):
        msg, marker = make_message("buy now")
        msg = b"\r\n".join(line for line in msg.split(b"\r\n") if not line.startswith(b"Message-ID:"))
        stack.send(msg)
        got = stack.sink.find(marker)
    assert got.header("Subject") == [f"[SPAM] buy now {marker}"]
    assert got.header("X-Spam-Flag") == ["YES"]
    assert got.header("X-Spam-Status")[0].startswith("Yes, score=4.50 required=3.00")


def test_score_over_reject_threshold_is_refused_with_5xx(stack: Stack) -> None:
    with stack.configured({"scores": {"MISSING_FROM": 20.0}}):
        msg, marker = make_message("no from")
        msg = b"\r\n".join(line for line in msg.split(b"\r\n") if not line.startswith(b"From:"))
        with pytest.raises(smtplib.SMTPDataError) as info:
            stack.send(msg)
    assert info.value.smtp_code == 550
    assert stack.sink.count(marker) == 0


def test_outbound_mail_from_internal_network_is_not_scored(stack: Stack) -> None:
    with stack.configured({"network": {"internal_networks": ["127.0.0.0/8"]}}):
        msg, marker = make_message("outbound", headers=[("X-Spam-Flag", "YES")])
        stack.send(msg)
        got = stack.sink.find(marker)
    assert got.header("X-Spam-Status") == []
    assert got.header("X-Spam-Flag") == []  # forged headers are removed from outbound mail too


def test_fifty_concurrent_sessions_lose_and_duplicate_nothing(stack: Stack) -> None:
    markers: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def session(n: int) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", stack.postfix.port, timeout=120) as smtp:
                for i in range(4):
                    msg, marker = make_message(f"concurrent {n}.{i}")
                    smtp.sendmail("alice@example.org", ["bob@example.net"], msg)
                    with lock:
                        markers.append(marker)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=session, args=(n,)) for n in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(markers) == 200
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(stack.sink.count(m) == 0 for m in markers):
        time.sleep(0.2)
    counts = [stack.sink.count(m) for m in markers]
    assert counts == [1] * 200


def test_filterd_down_means_4xx_and_mail_flows_again_after_restart(stack: Stack) -> None:
    stack.filterd.kill()
    try:
        msg, marker = make_message("while down")
        with pytest.raises(smtplib.SMTPException) as info:
            stack.send(msg)
        assert "4.7.1" in str(info.value) or "451" in str(info.value) or "421" in str(info.value)
    finally:
        stack.filterd.start()
    msg, marker2 = make_message("after restart")
    stack.send(msg)
    stack.sink.find(marker2)
    assert stack.sink.count(marker) == 0


def test_sighup_reloads_lists_for_new_sessions_without_dropping_an_open_one(stack: Stack) -> None:
    """A session open across a reload keeps the configuration it started with (its worker drains);
    a new session gets the new lists at once."""
    deny = stack.dir / "sender-deny.txt"
    deny.write_text("")
    with stack.configured({"checks": {"sender_lists": {"deny_file": str(deny)}}}) as filterd:
        with smtplib.SMTP("127.0.0.1", stack.postfix.port, timeout=60) as smtp:
            msg, first = make_message("before reload")
            smtp.sendmail("spammer@bad.example", ["bob@example.net"], msg)
            deny.write_text("bad.example\n")
            filterd.reload()
            deadline = time.monotonic() + 10
            while "validated" not in filterd.log() and time.monotonic() < deadline:
                time.sleep(0.1)
            msg, second = make_message("same session, old lists")
            smtp.sendmail("spammer@bad.example", ["bob@example.net"], msg)
            msg, third = make_message("new session, new lists")
            with pytest.raises(smtplib.SMTPSenderRefused) as info:
                stack.send(msg, mail_from="spammer@bad.example")
            assert info.value.smtp_code == 550
        stack.sink.find(first)
        stack.sink.find(second)
        assert stack.sink.count(third) == 0


def test_bad_reload_keeps_the_running_configuration(stack: Stack) -> None:
    with stack.configured({}) as filterd:
        good = filterd.config_path.read_text()
        filterd.config_path.write_text(good + '\n[actions]\nreject = "high"\n')
        filterd.reload()
        deadline = time.monotonic() + 10
        while "reload refused" not in filterd.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "reload refused" in filterd.log()
        msg, marker = make_message("still running")
        stack.send(msg)
        stack.sink.find(marker)


def test_sigterm_lets_the_message_in_flight_finish(stack: Stack) -> None:
    with stack.configured({}) as filterd:
        smtp = smtplib.SMTP("127.0.0.1", stack.postfix.port, timeout=60)
        msg, marker = make_message("in flight")
        smtp.ehlo()
        smtp.mail("alice@example.org")
        smtp.rcpt("bob@example.net")
        stopper = threading.Thread(target=filterd.stop)
        stopper.start()
        time.sleep(0.5)
        code, _ = smtp.data(msg)
        smtp.quit()
        stopper.join()
        assert code == 250
        stack.sink.find(marker)


def test_rset_and_several_messages_per_session_keep_envelopes_apart(stack: Stack) -> None:
    deny = stack.dir / "rcpt-deny-rset.txt"
    deny.write_text("blocked@example.net\n")
    with (
        stack.configured({"checks": {"recipient_lists": {"deny_file": str(deny)}}}),
        smtplib.SMTP("127.0.0.1", stack.postfix.port, timeout=60) as smtp,
    ):
        smtp.ehlo()
        smtp.mail("first@example.org")
        assert smtp.rcpt("blocked@example.net")[0] == 550
        smtp.rset()
        msg, first = make_message("after rset")
        smtp.sendmail("second@example.org", ["ok@example.net"], msg)
        msg, second = make_message("next message")
        smtp.sendmail("third@example.org", ["other@example.net"], msg)
    a, b = stack.sink.find(first), stack.sink.find(second)
    assert (a.mail_from, a.rcpts) == ("second@example.org", ("ok@example.net",))
    assert (b.mail_from, b.rcpts) == ("third@example.org", ("other@example.net",))


def test_quarantine_threshold_holds_the_message_in_postfix(stack: Stack) -> None:
    config = {"actions": {"quarantine": 6.0}, "scores": {"MISSING_DATE": 7.0}, "quarantine": {"mode": "hold"}}
    with stack.configured(config):
        msg, marker = make_message("hold me")
        msg = b"\r\n".join(line for line in msg.split(b"\r\n") if not line.startswith(b"Date:"))
        held_before = _hold_count(stack)
        stack.send(msg)
        deadline = time.monotonic() + 15
        while _hold_count(stack) == held_before and time.monotonic() < deadline:
            time.sleep(0.1)
    assert _hold_count(stack) == held_before + 1
    assert stack.sink.count(marker) == 0


def _hold_count(stack: Stack) -> int:
    hold = stack.postfix.queue_dir / "hold"
    return sum(1 for p in hold.rglob("*") if p.is_file()) if hold.exists() else 0


def test_inet_socket_works_too(tmp_path: Path) -> None:
    from tests.harness.filterd import Filterd
    from tests.harness.net import free_port, port_open, wait_for
    from tests.harness.postfix import Postfix
    from tests.harness.sink import Sink
    from tests.harness.stack import private_dir

    workdir = private_dir("filterd-inet-")
    port = free_port()
    sink = Sink()
    filterd = Filterd(workdir, workdir / "unused.sock")
    postfix = Postfix(workdir / "postfix", f"inet:127.0.0.1:{port}", sink.port)
    sink.start()
    try:
        filterd.configure({"milter": {"socket": f"inet:{port}@127.0.0.1"}})
        filterd.start()
        wait_for(lambda: port_open(port), 20, "filterd on its TCP port")
        postfix.start()
        msg, marker = make_message("over tcp")
        with smtplib.SMTP("127.0.0.1", postfix.port, timeout=60) as smtp:
            smtp.sendmail("alice@example.org", ["bob@example.net"], msg)
        assert sink.find(marker).header("X-Spam-Status")
    finally:
        postfix.stop()
        filterd.stop()
        sink.stop()


def test_no_reply_awaited_at_mail_and_rcpt_when_nothing_there_can_refuse(stack: Stack) -> None:
    config = {
        "checks": {"spf": {"enabled": False}, "helo": {"enabled": False}},
        "scores": {"MISSING_FROM": 20.0},
    }
    with stack.configured(config):
        msg, marker = make_message("quiet envelope")
        stack.send(msg)
        assert stack.sink.find(marker).header("X-Spam-Status")
        msg, refused = make_message("still refused at end of data")
        msg = b"\r\n".join(line for line in msg.split(b"\r\n") if not line.startswith(b"From:"))
        with pytest.raises(smtplib.SMTPDataError) as info:
            stack.send(msg)
        assert info.value.smtp_code == 550
    assert stack.sink.count(refused) == 0

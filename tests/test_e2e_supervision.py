"""End to end through Postfix: filterd's supervision when things die.

A configuration file broken on disk must not stop dead workers from being replaced (they run the
configuration the parent validated last), and workers whose parent was killed stop accepting at
once, finish the messages they hold and exit, so Postfix tempfails new sessions fast."""

from __future__ import annotations

import os
import signal
import smtplib
import threading
import time
from pathlib import Path

import pytest

from tests.harness.filterd import Filterd, merge
from tests.harness.stack import Stack, make_message
from tests.test_e2e_reload import Outcomes, assert_accounted_for

pytestmark = pytest.mark.stack


def _workers(parent: int) -> list[int]:
    return [int(pid) for pid in Path(f"/proc/{parent}/task/{parent}/children").read_text().split()]


def _wait_log(filterd: Filterd, offset: int, text: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while text not in filterd.log()[offset:]:
        assert time.monotonic() < deadline, f"{text!r} not logged:\n{filterd.log()[offset:]}"
        time.sleep(0.05)


def _wait_workers(filterd: Filterd, count: int, timeout: float = 30) -> list[int]:
    assert filterd.proc is not None
    deadline = time.monotonic() + timeout
    while len(pids := _workers(filterd.proc.pid)) != count:
        assert time.monotonic() < deadline, f"{len(pids)} workers, wanted {count}"
        time.sleep(0.05)
    return pids


def _required(stack: Stack, what: str) -> str:
    """The required score (from [actions]) that the worker which took this message ran with."""
    msg, marker = make_message(what)
    stack.send(msg)
    status = stack.sink.find(marker).header("X-Spam-Status")[0]
    return status.rsplit("required=", 1)[1]


def _alive(pid: int) -> bool:
    """Still running: a worker whose parent died waits as a zombie until init reaps it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _time_until_mail_flows(stack: Stack) -> float:
    """Send one message now; seconds until it is delivered (it waits while no worker accepts)."""
    started = time.monotonic()
    msg, marker = make_message("after the kill")
    stack.send(msg)
    stack.sink.find(marker, timeout=60)
    return time.monotonic() - started


def test_dead_workers_are_replaced_from_the_last_good_configuration_when_the_file_is_broken(
    stack: Stack,
) -> None:
    with stack.configured({"milter": {"workers": 2}, "actions": {"add_header": 6.5}}) as filterd:
        assert filterd.proc is not None
        offset = len(filterd.log())
        # a good reload first: the replacements must run this one, not the one filterd started with
        filterd.configure(merge(stack.base_config, {"actions": {"add_header": 7.5}}))
        filterd.reload()
        _wait_log(filterd, offset, "validated")
        assert [_required(stack, "reloaded") for _ in range(4)] == ["7.50"] * 4
        filterd.config_path.write_text("[milter\nworkers = \n")  # an admin halfway through an edit
        filterd.reload()
        _wait_log(filterd, offset, "reload refused")

        outcomes = Outcomes()
        sessions = [
            threading.Thread(target=outcomes.send, args=(stack.postfix.port, n, 2)) for n in range(12)
        ]
        for t in sessions[:4]:
            t.start()
        first, second = _wait_workers(filterd, 2)
        os.kill(first, signal.SIGKILL)  # one worker: the other takes the mail meanwhile
        for t in sessions[4:8]:
            t.start()
        one_dead = _time_until_mail_flows(stack)
        replacement = next(p for p in _wait_workers(filterd, 2) if p != second)
        os.kill(second, signal.SIGKILL)  # then both, one after the other: no worker at all
        os.kill(replacement, signal.SIGKILL)
        for t in sessions[8:]:
            t.start()
        both_dead = _time_until_mail_flows(stack)
        for t in sessions:
            t.join(timeout=120)
        print(f"mail flows again {one_dead:.2f} s after one worker died, {both_dead:.2f} s after both")
        assert one_dead < 10 and both_dead < 10, (one_dead, both_dead)
        assert_accounted_for(stack, outcomes, 24)
        # the replacements run the last configuration validated, not the broken file (nor the first)
        assert [_required(stack, "replaced") for _ in range(4)] == ["7.50"] * 4
        log = filterd.log()[offset:]
        assert "worker failed" not in log and "not valid TOML" in log
        assert log.count("exited unexpectedly") == 3, log
        assert filterd.proc.poll() is None


def _smtp_until_rcpt(port: int) -> tuple[smtplib.SMTP, bytes, str]:
    """A session that has passed MAIL FROM and RCPT TO: its message is in flight at the milter."""
    smtp = smtplib.SMTP("127.0.0.1", port, local_hostname="client.example.org", timeout=60)
    msg, marker = make_message("in flight")
    code, _ = smtp.mail("alice@example.org")
    assert code == 250
    code, _ = smtp.rcpt("bob@example.net")
    assert code == 250
    return smtp, msg, marker


def test_workers_whose_parent_died_finish_their_messages_and_postfix_tempfails_new_sessions_fast(
    stack: Stack,
) -> None:
    with stack.configured({"milter": {"workers": 2, "shutdown_grace": 30.0}}) as filterd:
        assert filterd.proc is not None
        workers = _wait_workers(filterd, 2)
        in_flight = [_smtp_until_rcpt(stack.postfix.port) for _ in range(2)]
        outcomes = Outcomes()
        stream = [threading.Thread(target=outcomes.send, args=(stack.postfix.port, n, 2)) for n in range(5)]
        for t in stream:
            t.start()
        time.sleep(0.2)
        filterd.proc.kill()  # the parent dies without cleaning up
        filterd.proc.wait(timeout=10)
        killed = time.monotonic()
        # new sessions keep coming, one after the other, for 4 s: (started, took, marker, code)
        late: list[tuple[float, float, str, int | None]] = []

        def keep_sending() -> None:
            while (started := time.monotonic()) - killed < 4:
                msg, marker = make_message("after the parent died")
                code = None
                try:
                    stack.send(msg)
                except smtplib.SMTPResponseException as exc:
                    code = exc.smtp_code
                late.append((started - killed, time.monotonic() - started, marker, code))
                time.sleep(0.05)

        sender = threading.Thread(target=keep_sending)
        sender.start()
        time.sleep(2.5)  # the workers noticed long ago; the messages in flight still finish
        assert not filterd.socket_path.exists()  # so Postfix fails fast instead of waiting
        for smtp, msg, marker in in_flight:
            smtp.data(msg)
            smtp.quit()
            stack.sink.find(marker)
            assert stack.sink.count(marker) == 1
        while any(_alive(pid) for pid in workers):
            assert time.monotonic() - killed < 10, "workers outlive their parent"
            time.sleep(0.05)
        outlived = time.monotonic() - killed
        sender.join(timeout=120)
        for t in stream:
            t.join(timeout=120)
        accepted = [entry for entry in late if entry[3] is None]
        slowest = max(took for _, took, _, _ in late)
        print(
            f"workers outlived their parent by {outlived:.2f} s; after the kill {len(accepted)} of"
            f" {len(late)} new sessions accepted (last one started {max((e[0] for e in accepted), default=0):.2f} s"
            f" after), the slowest took {slowest:.2f} s"
        )
        assert outlived < 5
        assert slowest < 5  # no session waited on a worker that would never come
        # a worker stops accepting as soon as it sees its parent gone (0.1 s polls)
        assert all(started < 1.0 for started, _, _, _ in accepted), late
        assert all(400 <= code < 500 for _, _, _, code in late if code is not None)
        for _, _, marker, code in late:
            assert stack.sink.count(marker) == (1 if code is None else 0)
        assert_accounted_for(stack, outcomes, 10)

"""End to end through Postfix: a reload replaces the workers without cutting anything.

On SIGHUP the parent builds the new pipeline and forks new workers with it; the replaced ones stop
accepting at once, finish their messages and their open SMTP sessions (Postfix keeps one milter
connection per SMTP session), then exit.  So a session open across the reload goes on with the
pipeline it started with and sees no 451, while every new session gets the new configuration."""

from __future__ import annotations

import smtplib
import time

import pytest

from tests.harness.filterd import merge
from tests.harness.stack import Stack, make_message
from tests.test_e2e_supervision import _alive, _required, _wait_log, _wait_workers, _workers

pytestmark = pytest.mark.stack


def _required_of(stack: Stack, marker: str) -> str:
    return stack.sink.find(marker).header("X-Spam-Status")[0].rsplit("required=", 1)[1]


def test_a_reload_lets_open_sessions_finish_on_their_pipeline_and_new_ones_get_the_new(stack: Stack) -> None:
    with stack.configured({"milter": {"workers": 2}, "actions": {"add_header": 6.5}}) as filterd:
        old_workers = _wait_workers(filterd, 2)
        offset = len(filterd.log())
        smtp = smtplib.SMTP("127.0.0.1", stack.postfix.port, local_hostname="client.example.org", timeout=60)
        msg, first = make_message("before the reload")
        smtp.sendmail("alice@example.org", ["bob@example.net"], msg)
        assert _required_of(stack, first) == "6.50"

        filterd.configure(merge(stack.base_config, {"actions": {"add_header": 7.5}}))
        reloaded = time.monotonic()
        filterd.reload()
        _wait_log(filterd, offset, "validated")
        # from the log line on, new sessions reach only the new workers
        assert [_required(stack, "new session") for _ in range(4)] == ["7.50"] * 4
        new_workers = [pid for pid in _wait_workers(filterd, 3) if pid not in old_workers]
        assert len(new_workers) == 2  # the replaced worker with no session open is gone already

        # the session open across the reload: no 451, the pipeline it started with
        msg, second = make_message("same session, after the reload")
        smtp.sendmail("alice@example.org", ["bob@example.net"], msg)
        assert _required_of(stack, second) == "6.50"
        assert any(_alive(pid) for pid in old_workers)  # its worker waits for the session
        smtp.quit()
        while any(_alive(pid) for pid in old_workers):
            assert time.monotonic() - reloaded < 20, "a replaced worker outlived its sessions"
            time.sleep(0.05)
        print(f"the replaced workers were gone {time.monotonic() - reloaded:.2f} s after the reload")
        while (log := filterd.log()[offset:]).count("replaced by the reload, finished") < 2:
            assert time.monotonic() - reloaded < 20, log
            time.sleep(0.05)
        assert "exited unexpectedly" not in log and "heartbeat" not in log
        assert sorted(_wait_workers(filterd, 2)) == sorted(new_workers)
        assert [_required(stack, "later") for _ in range(2)] == ["7.50"] * 2


def test_reloads_in_a_row_keep_a_long_session_and_end_with_one_set_of_workers(stack: Stack) -> None:
    """Three reloads while one SMTP session stays open: each set of workers a reload replaces
    finishes (those with nothing open at once), the session's worker lives on through all of
    them, and once the session ends one set of workers is left, running the last configuration."""
    with stack.configured({"milter": {"workers": 2}, "actions": {"add_header": 6.5}}) as filterd:
        offset = len(filterd.log())
        smtp = smtplib.SMTP("127.0.0.1", stack.postfix.port, local_hostname="client.example.org", timeout=60)
        msg, first = make_message("a long session")
        smtp.sendmail("alice@example.org", ["bob@example.net"], msg)
        assert _required_of(stack, first) == "6.50"
        for n, required in enumerate((7.0, 7.5, 8.0), start=2):
            filterd.configure(merge(stack.base_config, {"actions": {"add_header": required}}))
            filterd.reload()
            _wait_log(filterd, offset, f"(generation {n})")
            assert _required(stack, f"after reload {n}") == f"{required:.2f}"
        msg, second = make_message("the long session, three reloads later")
        smtp.sendmail("alice@example.org", ["bob@example.net"], msg)
        assert _required_of(stack, second) == "6.50"
        smtp.quit()
        assert filterd.proc is not None
        deadline = time.monotonic() + 20
        while len(_workers_now(filterd.proc.pid)) != 2:
            assert time.monotonic() < deadline, _workers_now(filterd.proc.pid)
            time.sleep(0.05)
        log = filterd.log()[offset:]
        assert "ending it" not in log and "exited unexpectedly" not in log, log
        assert [_required(stack, "last") for _ in range(4)] == ["8.00"] * 4


def _workers_now(parent: int) -> list[int]:
    """Live workers (a finished one waits as a zombie until the parent reaps it)."""
    return [pid for pid in _workers(parent) if _alive(pid)]

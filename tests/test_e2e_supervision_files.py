"""End to end through Postfix: a file a check reads at start (the Bayes model, a rule file) broken
on disk while filterd runs must not break the workers that replace dead ones, nor a reload.

The parent builds the pipeline once and forks the workers with it, so a replacement worker reads
nothing from disk: it serves with what the parent validated.  Every message sent is accounted
for (delivered once, or refused with a 4xx/5xx the client saw), and mail flows again within a
bound after every worker was killed."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.harness.stack import Stack, make_message
from tests.test_e2e_reload import Outcomes, assert_accounted_for
from tests.test_e2e_rules import GOOD_RULE
from tests.test_e2e_supervision import _time_until_mail_flows, _wait_log, _wait_workers

pytestmark = pytest.mark.stack

ROOT = Path(__file__).resolve().parent.parent


def _bayes_case(workdir: Path) -> tuple[dict[str, Any], Path, str, str]:
    """(configuration, the file to break, a message body, the symbol showing the check ran)."""
    model = workdir / "bayes.npz"
    shutil.copyfile(ROOT / "models" / "bayes.npz", model)
    config = {
        "checks": {
            # the file is the model, followed every 0.2 s: the running workers see it break too
            "bayes": {
                "enabled": True,
                "model": str(model),
                "storage": "file",
                "signature": False,
                "sync_interval": 0.2,
            }
        }
    }
    return config, model, "Hello,\r\njust a test.\r\n", "BAYES_"


def _rules_case(workdir: Path) -> tuple[dict[str, Any], Path, str, str]:
    local = workdir / "rules.broken.d"
    local.mkdir(exist_ok=True)
    (local / "50_local.toml").write_text(GOOD_RULE)
    config = {"checks": {"rules": {"local_dir": str(local)}}}
    return config, local / "50_local.toml", "a rutabaga for you\r\n", "LOCAL_CODEWORD"


def _report(stack: Stack, body: str) -> str:
    msg, marker = make_message("check ran?", body=body)
    stack.send(msg)
    return stack.sink.find(marker).header("X-Spam-Report")[0]


@pytest.mark.parametrize("case", [_bayes_case, _rules_case], ids=["bayes-model", "rule-file"])
def test_a_file_broken_on_disk_breaks_neither_replacement_workers_nor_a_reload(
    stack: Stack, case: Any
) -> None:
    config, path, body, symbol = case(stack.dir)
    with stack.configured({**config, "milter": {"workers": 2}}) as filterd:
        assert filterd.proc is not None
        offset = len(filterd.log())
        assert symbol in _report(stack, body)
        path.write_bytes(b"\x00garbage, not what the check expects [[[\n")  # broken on disk

        outcomes = Outcomes()
        sessions = [threading.Thread(target=outcomes.send, args=(stack.postfix.port, n, 2)) for n in range(8)]
        for t in sessions[:4]:
            t.start()
        workers = _wait_workers(filterd, 2)
        for pid in workers:  # no worker left: only replacements can take the mail
            os.kill(pid, signal.SIGKILL)
        for t in sessions[4:]:
            t.start()
        flows_again = _time_until_mail_flows(stack)
        for t in sessions:
            t.join(timeout=120)
        replacements = _wait_workers(filterd, 2)
        print(f"{path.name} broken: mail flows again {flows_again:.2f} s after every worker was killed")
        assert flows_again < 5, flows_again
        assert set(replacements).isdisjoint(workers)
        assert_accounted_for(stack, outcomes, 16)
        # the replacements run the check as the parent built it, from the file as it was
        for _ in range(4):
            assert symbol in _report(stack, body)
        log = filterd.log()[offset:]
        assert "worker failed" not in log and log.count("exited unexpectedly") == 2, log

        # a reload with the file broken is refused; the workers and their pipeline stay
        offset = len(filterd.log())
        filterd.reload()
        _wait_log(filterd, offset, "reload refused")
        assert "validated" not in filterd.log()[offset:]
        assert sorted(_wait_workers(filterd, 2)) == sorted(replacements)
        for _ in range(4):
            assert symbol in _report(stack, body)
        assert filterd.proc.poll() is None


def test_a_check_that_cannot_start_stops_filterd_at_start_and_leaves_no_socket(stack: Stack) -> None:
    """The socket is opened before the pipeline is built (so a restart's connections wait rather
    than fail); a pipeline that cannot be built still stops filterd with exit code 2, and the
    socket goes with it (Postfix then tempfails at once instead of waiting on a backlog)."""
    model = stack.dir / "broken.npz"
    model.write_bytes(b"not a model")
    stack.filterd.stop()
    try:
        stack.filterd.configure(
            {**stack.base_config, "checks": {"bayes": {"enabled": True, "model": str(model)}}}
        )
        with pytest.raises(RuntimeError, match="exited with 2"):
            stack.filterd.start()
        assert "configuration error: checks.bayes.model" in stack.filterd.log()
        assert not stack.filterd.socket_path.exists()
    finally:
        stack.filterd.proc = None
        stack.filterd.configure(stack.base_config)
        stack.filterd.start()
    deadline = time.monotonic() + 10
    while True:  # and the stack serves again with its usual configuration
        try:
            stack.send(make_message("after")[0])
            break
        except Exception:
            assert time.monotonic() < deadline
            time.sleep(0.2)

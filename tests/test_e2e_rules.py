"""End to end through Postfix: GTUBE is refused, rule hits reach the report header, and a reload
with a broken rule file keeps the rules that were running."""

from __future__ import annotations

import smtplib
import time

import pytest

from tests.harness.stack import Stack, make_message

pytestmark = pytest.mark.stack

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"

GOOD_RULE = """
[LOCAL_CODEWORD]
kind = "body"
pattern = 'rutabaga'
score = 2.5
description = "the local test word"
"""


def test_gtube_is_rejected_through_postfix(stack: Stack) -> None:
    msg, marker = make_message("gtube", body=f"This is the GTUBE test.\r\n\r\n{GTUBE}\r\n")
    with pytest.raises(smtplib.SMTPDataError) as info:
        stack.send(msg)
    assert info.value.smtp_code == 550
    assert b"5.7.1" in info.value.smtp_error
    time.sleep(1.0)
    assert stack.sink.count(marker) == 0


def test_shipped_rule_hits_are_in_the_report(stack: Stack) -> None:
    body = (
        "Dear Customer,\r\n\r\nYour account has been suspended. Please verify your account "
        "within 24 hours at http://198.51.100.7/login\r\n"
    )
    msg, marker = make_message("notice", body=body)
    stack.send(msg)
    report = stack.sink.find(marker).header("X-Spam-Report")[0]
    assert "PHISH_ACCOUNT_SUSPENDED says the reader's account is suspended, locked or limited" in report
    assert "URI_IP_HOST" in report and "PHISH_COMBINED_LINK" in report


def test_local_rules_and_a_broken_reload(stack: Stack) -> None:
    local = stack.dir / "rules.d"
    local.mkdir(exist_ok=True)
    (local / "50_local.toml").write_text(GOOD_RULE)
    with stack.configured({"checks": {"rules": {"local_dir": str(local)}}}) as filterd:
        msg, first = make_message("codeword", body="a rutabaga for you\r\n")
        stack.send(msg)
        got = stack.sink.find(first)
        assert " 2.5 LOCAL_CODEWORD the local test word" in got.header("X-Spam-Report")[0]

        # A broken rule file: the reload is refused, the running rules stay.
        (local / "60_broken.toml").write_text(
            '[BROKEN]\nkind = "body"\npattern = "(unclosed"\ndescription = "x"\n'
        )
        offset = len(filterd.log())  # the log is shared by the session's tests: read only what is new
        filterd.reload()
        deadline = time.monotonic() + 10
        while "reload refused" not in filterd.log()[offset:] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "60_broken.toml: rule BROKEN: pattern: bad regular expression" in filterd.log()[offset:]
        msg, second = make_message("still running", body="another rutabaga\r\n")
        stack.send(msg)
        assert "LOCAL_CODEWORD" in stack.sink.find(second).header("X-Spam-Report")[0]

        # Fixed: the reload goes through and the new score is used.
        (local / "60_broken.toml").unlink()
        (local / "50_local.toml").write_text(GOOD_RULE.replace("score = 2.5", "score = 4.0"))
        offset = len(filterd.log())
        filterd.reload()
        deadline = time.monotonic() + 10
        while "validated" not in filterd.log()[offset:] and time.monotonic() < deadline:
            time.sleep(0.1)
        msg, third = make_message("after fix", body="rutabaga again\r\n")
        stack.send(msg)
        assert " 4.0 LOCAL_CODEWORD" in stack.sink.find(third).header("X-Spam-Report")[0]


def test_learned_scores_reach_the_report_and_add_up(stack: Stack) -> None:
    """[scoring] mode = "learned" with the shipped model: the report shows every contribution,
    LEARNED_BASE first, and they add up to the score in X-Spam-Score."""
    with stack.configured({"scoring": {"mode": "learned"}}):
        msg, marker = make_message("Your FREE gift!!!", body="Claim your free gift now, act now!\r\n")
        stack.send(msg)
        got = stack.sink.find(marker)
        report = got.header("X-Spam-Report")[0]
        entries = [e.split() for e in report.split("*")[1:]]  # "* score NAME reason", one per symbol
        assert entries[0][1] == "LEARNED_BASE"
        assert "SUBJECT_FREE" in {e[1] for e in entries}
        total = sum(float(e[0]) for e in entries)  # each printed to one decimal
        assert total == pytest.approx(float(got.header("X-Spam-Score")[0]), abs=0.05 * len(entries))

"""Policy by recipient domain and address (filterd.policy, docs/policy.md): the lookup, the
validation, the driver applying it (through `scan`, as `filterctl scan --rcpt` does), and the
whole path through Postfix, whose own smtp client splits a message whose recipients' policies
differ."""

from __future__ import annotations

import dataclasses
import smtplib
import time
import tomllib
import uuid
from pathlib import Path
from typing import Any

import pytest

from filterd.config import ActionSettings, config_table, parse_config, render_config
from filterd.driver import SmtpContext, scan
from filterd.pipeline import Pipeline
from filterd.policy import ACTION_KEYS, SITE, normalize_key
from filterd.report import log_line
from filterd.results import Action, Reject, Stage, TempFail
from filterd.settings import ConfigError
from tests.harness.net import wait_for
from tests.harness.postfix import Postfix
from tests.harness.redis import RedisServer
from tests.harness.stack import Stack, make_message, private_dir

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"

# No network, no classifier: the scores of these tests are header_sanity's alone.
QUIET_CHECKS = {name: {"enabled": False} for name in ("spf", "dkim", "arc", "dmarc", "bayes")}

NO_DATE = (
    b"From: a@example.org\r\nTo: b@example.net\r\nSubject: hi\r\n"
    b"Message-ID: <1@example.org>\r\n\r\nhello\r\n"
)  # MISSING_DATE, scored 7 below


def config_with(policy: dict[str, Any], **extra: Any) -> Any:
    return parse_config(
        {"checks": dict(QUIET_CHECKS), "scores": {"MISSING_DATE": 7.0}, "policy": policy, **extra}
    )


def errors_of(data: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return {p.key: p.message for p in info.value.problems}


# -- the lookup ---------------------------------------------------------------------------------


def test_most_specific_entry_wins() -> None:
    table = config_with(
        {
            "example.com": {"reject": 30.0},
            "boss@example.com": {"reject": 40.0},
            ".example.com": {"reject": 20.0},
            ".dept.example.com": {"reject": 25.0},
        }
    ).policies
    assert table.lookup("boss@example.com").name == "boss@example.com"  # the address
    assert table.lookup("other@example.com").name == "example.com"  # its domain
    assert table.lookup("x@a.dept.example.com").name == ".dept.example.com"  # the nearest parent
    assert table.lookup("x@a.b.dept.example.com").name == ".dept.example.com"
    assert table.lookup("x@dept.example.com").name == ".example.com"  # a parent covers subdomains only
    assert table.lookup("x@sales.example.com").name == ".example.com"
    assert table.lookup("x@example.org") is SITE  # nothing: the site's [actions]
    assert table.lookup("x@notexample.com") is SITE  # a parent entry is a whole label, not a suffix


def test_lookup_is_case_insensitive_and_knows_both_forms_of_an_idn() -> None:
    table = config_with(
        {"Example.COM": {"reject": 30.0}, "bücher.example": {"reject": 31.0}, "Boss@Example.com": {}}
    ).policies
    assert table.lookup("<BOB@EXAMPLE.com>").name == "Example.COM"
    assert table.lookup("boss@EXAMPLE.COM").name == "Boss@Example.com"
    assert table.lookup("anna@xn--bcher-kva.example").name == "bücher.example"
    assert table.lookup("anna@BÜCHER.example.").name == "bücher.example"
    assert normalize_key("A@Bücher.Example") == "a@xn--bcher-kva.example"


def test_policies_with_equal_settings_are_one_policy() -> None:
    table = config_with(
        {"a.example": {"reject": 30.0}, "b.example": {"reject": 30.0}, "c.example": {}}
    ).policies
    assert table.lookup("x@a.example") == table.lookup("x@b.example")  # they may share a message
    assert table.lookup("x@a.example") != table.lookup("x@c.example")
    assert table.lookup("x@c.example") == SITE  # an empty table changes nothing


def test_policy_keys_are_the_action_keys() -> None:
    assert set(ACTION_KEYS) == {f.name for f in dataclasses.fields(ActionSettings)}


# -- validation ---------------------------------------------------------------------------------


def test_every_mistake_is_named_with_its_key_in_one_pass() -> None:
    errors = errors_of(
        {
            "policy": {
                "example.com": {
                    "reject": "high",
                    "rejct": 20,
                    "reject_action": "bounce",
                    "disabled_checks": ["greylist", "greylst"],
                    "deny_senders": ["ok@example.org", "two words"],
                    "bayes": "no",
                },
                "bad key": {"reject": 20.0},
                "a@b@c": {},
                "example.net": "not a table",
                "low.example": {"reject": 3.0},  # below [actions] add_header (5)
            }
        }
    )
    assert "expected a number" in errors['policy."example.com".reject']
    assert "did you mean 'reject'" in errors['policy."example.com".rejct']
    assert "'reject', 'quarantine'" in errors['policy."example.com".reject_action']
    assert "did you mean 'greylist'" in errors['policy."example.com".disabled_checks[1]']
    assert 'policy."example.com".disabled_checks[0]' not in errors
    assert "not an address or domain" in errors['policy."example.com".deny_senders[1]']
    assert "true or false" in errors['policy."example.com".bayes']
    assert 'policy."bad key"' in errors and 'policy."a@b@c"' in errors
    assert "expected a table" in errors['policy."example.net"']
    assert "expected at least add_header (5)" in errors['policy."low.example".reject']
    assert len(errors) == 10


def test_two_spellings_of_one_recipient_are_an_error() -> None:
    errors = errors_of({"policy": {"example.com": {}, "EXAMPLE.com": {"reject": 9.0}}})
    assert errors == {'policy."EXAMPLE.com"': 'the same recipient as policy."example.com"'}


def test_turning_off_a_check_that_runs_before_the_recipients_is_a_warning() -> None:
    config = parse_config({"policy": {"example.com": {"disabled_checks": ["client_lists", "greylist"]}}})
    [warning] = [w for w in config.warnings if w.key.startswith("policy.")]
    assert warning.key == 'policy."example.com".disabled_checks'
    assert "client_lists runs at connect" in warning.message


def test_policy_must_be_tables() -> None:
    assert "expected tables" in errors_of({"policy": ["example.com"]})["policy"]


def test_config_show_prints_the_policies_and_reads_back() -> None:
    config = config_with({"example.com": {"reject": 30.0, "disabled_checks": ["greylist"]}})
    text = render_config(config_table(config))
    assert '[policy."example.com"]' in text
    again = parse_config(tomllib.loads(text))
    assert again.policies == config.policies
    assert "policy" not in config_table(parse_config({}))  # nothing shown when there is none


# -- the driver, through scan() (what `filterctl scan --rcpt` runs) ---------------------------


def scan_to(config: Any, *rcpts: str, raw: bytes = NO_DATE, sender: str = "a@example.org") -> Any:
    context = SmtpContext(client_addr="192.0.2.1", helo="mx.example.org", mail_from=sender, rcpts=rcpts)
    return scan(Pipeline.from_config(config), raw, context)


STRICT_AND_LAX = {"strict.example": {"reject": 6.0}, "lax.example": {"reject": 50.0, "add_header": 40.0}}


def test_first_recipient_sets_the_policy_and_another_policy_gets_452() -> None:
    config = config_with(STRICT_AND_LAX)
    tx, verdict = scan_to(config, "a@strict.example", "b@lax.example", "c@strict.example")
    assert verdict.action is Action.REJECT and isinstance(verdict.decision, Reject)  # 7 >= 6
    assert tx.rcpts == ["a@strict.example", "c@strict.example"]  # the same policy shares it
    [(rcpt, refusal)] = tx.refused
    assert rcpt == "b@lax.example" and isinstance(refusal, TempFail)
    assert str(refusal.reply) == "452 4.3.0 recipient needs a separate delivery: try again"

    tx, verdict = scan_to(config, "b@lax.example", "a@strict.example")  # the other order
    assert verdict.action is Action.ACCEPT and verdict.required == 40.0  # 7 < lax's add_header
    assert [r for r, _ in tx.refused] == ["a@strict.example"]


def test_the_log_line_names_the_policy() -> None:
    config = config_with(STRICT_AND_LAX)
    tx, verdict = scan_to(config, "a@strict.example")
    assert log_line(tx, verdict).endswith(", policy=<strict.example>, reason='score 7.0 >= 6.0'")
    tx, verdict = scan_to(config, "a@site.example")
    assert "policy=" not in log_line(tx, verdict)


def test_site_recipients_share_with_each_other_not_with_a_policy() -> None:
    config = config_with(STRICT_AND_LAX)
    tx, verdict = scan_to(config, "x@other.example", "y@else.example", "a@strict.example")
    assert tx.rcpts == ["x@other.example", "y@else.example"]
    assert verdict.action is Action.ADD_HEADER  # the site's: add_header 5 <= 7 < reject 15
    assert [r for r, _ in tx.refused] == ["a@strict.example"]


def test_reject_action_quarantine_holds_instead_of_rejecting() -> None:
    config = config_with({"held.example": {"reject": 6.0, "reject_action": "quarantine"}})
    _, verdict = scan_to(config, "a@held.example")
    assert verdict.action is Action.QUARANTINE and verdict.decision is None
    _, verdict = scan_to(config, "a@elsewhere.example", raw=NO_DATE.replace(b"hello", GTUBE.encode()))
    assert verdict.action is Action.REJECT  # the site still rejects


def test_disabled_checks_and_bayes_false_are_not_run() -> None:
    on = dict(QUIET_CHECKS, bayes={"enabled": True})
    config = parse_config(
        {
            "checks": on,
            "policy": {"quiet.example": {"disabled_checks": ["header_sanity"], "bayes": False}},
        }
    )
    _, verdict = scan_to(config, "a@loud.example")
    names = {s.name for s in verdict.symbols}
    assert "MISSING_DATE" in names and any(n.startswith("BAYES_") for n in names)
    tx, verdict = scan_to(config, "a@quiet.example")
    names = {s.name for s in verdict.symbols}
    assert "MISSING_DATE" not in names and not any(n.startswith("BAYES_") for n in names)
    assert "header_sanity" not in tx.check_cpu and "bayes" not in tx.check_cpu


def test_greylisting_off_for_a_domain_with_the_real_redis(redis_server: RedisServer) -> None:
    greylist = {"enabled": True, "delay": 60, "auto_allowlist": 0}
    config = parse_config(
        {
            "checks": dict(QUIET_CHECKS, greylist=greylist),
            "redis": {"url": redis_server.url, "key_prefix": f"policy{uuid.uuid4().hex[:8]}:"},
            "policy": {"nogrey.example": {"disabled_checks": ["greylist"]}},
        }
    )
    tx, verdict = scan_to(config, "a@grey.example")
    assert tx.rcpts == [] and tx.refused[0][1].reply.code == 451  # a new triplet: deferred
    tx, verdict = scan_to(config, "a@nogrey.example")
    assert tx.rcpts == ["a@nogrey.example"] and tx.refused == []  # not greylisted
    assert "greylist" not in tx.check_cpu and not any(s.name.startswith("GREYLIST") for s in verdict.symbols)


def test_a_disabled_finisher_adds_no_header() -> None:
    config = parse_config(
        {
            "checks": {"bayes": {"enabled": False}},
            "policy": {"bare.example": {"disabled_checks": ["auth_results"]}},
        }
    )
    _, verdict = scan_to(config, "a@full.example")
    assert any(h.name == "Authentication-Results" for h in verdict.add_headers)
    _, verdict = scan_to(config, "a@bare.example")
    assert not any(h.name == "Authentication-Results" for h in verdict.add_headers)


def test_policy_sender_lists() -> None:
    config = config_with(
        {
            "picky.example": {"deny_senders": ["bad.example", "spammer@example.org"]},
            "friendly.example": {"allow_senders": [".partner.example"]},
        }
    )
    tx, verdict = scan_to(config, "a@picky.example", sender="Spammer@Example.org")
    assert isinstance(verdict.decision, Reject) and verdict.decision.reply.code == 550
    assert "deny list" in verdict.decision.reply.text and tx.rcpts == []

    tx, verdict = scan_to(config, "a@picky.example", sender="ok@example.org")
    assert tx.rcpts == ["a@picky.example"]  # not listed: delivered as usual

    tx, verdict = scan_to(config, "a@friendly.example", "b@friendly.example", sender="x@mx.partner.example")
    allowed = [s for s in verdict.symbols if s.name == "SENDER_ALLOWED"]
    assert len(allowed) == 1 and allowed[0].score == -20.0  # once, not per recipient
    assert verdict.action is Action.ACCEPT

    _, verdict = scan_to(config, "a@elsewhere.example", sender="spammer@example.org")
    assert verdict.action is Action.ADD_HEADER  # another recipient's lists do not apply


def test_a_refused_first_recipient_does_not_choose_the_policy() -> None:
    config = config_with(
        {"picky.example": {"deny_senders": ["example.org"]}, "strict.example": {"reject": 6.0}}
    )
    tx, verdict = scan_to(config, "a@picky.example", "b@strict.example")
    assert tx.rcpts == ["b@strict.example"] and verdict.action is Action.REJECT  # strict's
    assert tx.refused[0][1].reply.code == 550


def test_outbound_mail_is_not_split() -> None:
    config = config_with(STRICT_AND_LAX)
    context = SmtpContext(
        mail_from="a@example.org", rcpts=("a@strict.example", "b@lax.example"), auth_user="a"
    )
    tx, verdict = scan(Pipeline.from_config(config), NO_DATE, context)
    assert tx.rcpts == ["a@strict.example", "b@lax.example"] and tx.refused == []
    assert verdict.action is Action.ACCEPT  # not scored


def test_rcpt_replies_are_awaited_when_there_are_policies() -> None:
    quiet = {"checks": {"spf": {"enabled": False}}}
    assert not Pipeline.from_config(parse_config(quiet)).may_decide(Stage.RCPT)
    with_policy = parse_config({**quiet, "policy": {"example.com": {"reject": 30.0}}})
    assert Pipeline.from_config(with_policy).may_decide(Stage.RCPT)


# -- through Postfix ---------------------------------------------------------------------------

STACK_POLICY = {
    "scores": {"MISSING_DATE": 7.0},
    "policy": {
        "strict.example": {"reject": 6.0},
        "tagged.example": {"rewrite_subject": 6.0, "subject_tag": "[TAGGED]"},
        "held.example": {"reject_action": "quarantine"},
    },
}


def without_date(msg: bytes) -> bytes:
    return b"\r\n".join(line for line in msg.split(b"\r\n") if not line.startswith(b"Date:"))


@pytest.mark.stack
def test_smtp_client_gets_452_and_each_copy_is_scored_under_its_own_policy(stack: Stack) -> None:
    with stack.configured(STACK_POLICY):
        msg, marker = make_message("two policies")
        msg = without_date(msg)
        refused = stack.send(msg, rcpts=("b@tagged.example", "a@strict.example"))
        assert refused == {"a@strict.example": (452, b"4.3.0 recipient needs a separate delivery: try again")}
        with pytest.raises(smtplib.SMTPDataError) as info:  # the retry, alone: strict rejects 7
            stack.send(msg, rcpts=("a@strict.example",))
        assert info.value.smtp_code == 550
        got = stack.sink.find(marker)
        assert got.rcpts == ("b@tagged.example",)
        assert got.header("Subject")[0].startswith("[TAGGED] ")
        time.sleep(1.0)
        assert stack.sink.count(marker) == 1


class OuterPostfix(Postfix):
    """A second Postfix in front of the stack's, as the Internet's MTAs are: its smtp client
    and queue manager do the retrying."""

    def write_config(self, extra: dict[str, str] | None = None) -> None:
        # its own name: the same as the inner one's and its smtp client would see a mail loop
        super().write_config({"myhostname": "outer.filterd.test", **(extra or {})})


@pytest.mark.stack
def test_postfix_delivers_each_copy_once_under_its_own_policy(stack: Stack) -> None:
    workdir = private_dir("filterd-outer-")
    outer = OuterPostfix(workdir / "postfix", "", stack.postfix.port, with_milter=False)
    with stack.configured(STACK_POLICY):
        outer.start()
        try:
            msg, marker = make_message("split by postfix")
            msg = without_date(msg)
            rcpts = ("plain@site.example", "c@tagged.example", "d@tagged.example", "e@strict.example")
            with smtplib.SMTP("127.0.0.1", outer.port, timeout=60) as smtp:
                assert smtp.sendmail("alice@example.org", list(rcpts), msg) == {}
            deadline = time.monotonic() + 30
            while stack.sink.count(marker) < 3 and time.monotonic() < deadline:
                time.sleep(0.2)  # the two copies, and the bounce of strict's (it quotes the headers)
            wait_for(lambda: outer.queue_count() == 0, 20, "the outer queue to empty")
            time.sleep(2.0)  # a duplicate would come within the retry interval (1-2 s)
            with stack.sink.lock:
                received = [m for m in stack.sink.messages if marker.encode() in m.data]
            copies = [m for m in received if m.rcpts != ("alice@example.org",)]
            by_rcpts = {m.rcpts: m for m in copies}
            assert len(copies) == 2 and set(by_rcpts) == {
                ("plain@site.example",),
                ("c@tagged.example", "d@tagged.example"),  # one policy: one copy
            }
            site_copy = by_rcpts[("plain@site.example",)]
            tagged = by_rcpts[("c@tagged.example", "d@tagged.example")]
            assert not site_copy.header("Subject")[0].startswith("[TAGGED]")
            assert site_copy.header("X-Spam-Flag") == ["YES"]  # the site's add_header (5)
            assert tagged.header("Subject")[0].startswith("[TAGGED] ")
            log = outer.maillog.read_text()
            assert "recipient needs a separate delivery" in log  # the 452 Postfix met and retried
            # strict's copy, alone in the third transaction, scored 7 >= its reject 6: refused once
            bounced = [line for line in log.splitlines() if "status=bounced" in line]
            assert len(bounced) == 1 and "to=<e@strict.example>" in bounced[0] and "550 5.7.1" in bounced[0]
            assert [m.rcpts for m in received if m not in copies] == [("alice@example.org",)]
        finally:
            outer.stop()


@pytest.mark.stack
def test_gtube_to_a_quarantine_domain_is_held_not_refused(stack: Stack) -> None:
    with stack.configured(STACK_POLICY):
        msg, marker = make_message("gtube held", body=f"This is the GTUBE test.\r\n\r\n{GTUBE}\r\n")
        assert stack.send(msg, rcpts=("boss@held.example",)) == {}  # no 5xx: accepted
        deadline = time.monotonic() + 20
        while not _stored(stack.quarantine_dir, marker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _stored(stack.quarantine_dir, marker)
        with pytest.raises(smtplib.SMTPDataError) as info:  # elsewhere the site rejects it
            stack.send(msg, rcpts=("bob@example.net",))
        assert info.value.smtp_code == 550
        time.sleep(1.0)
        assert stack.sink.count(marker) == 0


def _stored(directory: Path, marker: str) -> bool:
    return any(marker in p.read_text() for p in directory.glob("*.json"))

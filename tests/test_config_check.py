"""`filterctl config check` and filterd: every error of a configuration at once, each naming its
key, the value given and what was expected; cross-field errors and warnings; rule symbols in
[scores]; `--version` and a $FILTERD_CONFIG that names no file.

Each test writes a real TOML file and runs the real CLI (click's runner) or the daemon."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from filterd.cli.filterctl import cli
from filterd.config import registered_checks

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str, name: str = "filterd.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def check(path: Path, *extra: str) -> Result:
    return CliRunner().invoke(cli, ["--config", str(path), "config", "check", *extra])


def lines(result: Result, prefix: str) -> list[str]:
    return [line.removeprefix(prefix) for line in result.output.splitlines() if line.startswith(prefix)]


def refusal(path: Path) -> list[str]:
    """The errors filterd prints when it refuses to start with `path`."""
    proc = subprocess.run(
        [sys.executable, "-m", "filterd", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 2, proc.stderr
    message = proc.stderr.split("filterd: configuration error: ", 1)[1]
    return [line.strip() for line in message.splitlines()[1:] if line.strip()]


THREE_MISTAKES = """\
    [milter]
    workers = "many"
    wrokers = 2

    [actions]
    reject = "high"
"""


def test_three_mistakes_are_reported_at_once_naming_key_value_and_expectation(tmp_path: Path) -> None:
    path = write(tmp_path, THREE_MISTAKES)
    result = check(path)
    assert result.exit_code == 1
    assert lines(result, "error: ") == [
        "milter.wrokers: unknown key in [milter]; did you mean 'workers'? (known keys: cpu_budget, "
        "heartbeat_timeout, log_level, max_forged_headers, max_headers, max_inflight_bytes, max_scan_bytes, "
        "oversize_action, shutdown_grace, socket, socket_group, socket_mode, timeout, workers)",
        "milter.workers: 'many' is not valid: expected a whole number",
        "actions.reject: 'high' is not valid: expected a number",
    ]
    assert result.output.splitlines()[-1] == f"{path}: FAILED (3 error(s))"


def test_the_daemon_refuses_with_the_same_complete_list(tmp_path: Path) -> None:
    path = write(tmp_path, THREE_MISTAKES)
    assert refusal(path) == lines(check(path), "error: ")


def test_errors_of_every_kind_in_one_pass(tmp_path: Path) -> None:
    """Settings, [scores], the threshold order and the files of enabled checks: one list."""
    path = write(
        tmp_path,
        f"""\
        [milter]
        timeout = 0

        [actions]
        reject = 4.0

        [scores]
        NO_SUCH_SYMBOL = 1.0
        MISSING_DATE = "two"

        [checks.header_sanity]
        past_days = -1

        [checks.client_lists]
        deny_file = "{tmp_path}/deny.txt"

        [checks.dkim_sign]
        keys."example.com".sel1 = "{tmp_path}/k1.key"
        """,
    )
    result = check(path)
    assert result.exit_code == 1
    assert lines(result, "error: ") == [
        "milter.timeout: 0 is not valid: expected a number greater than zero",
        "scores.MISSING_DATE: 'two' is not valid: expected a number",
        "checks.header_sanity.past_days: -1 is not valid: expected a number greater than zero",
        "scores.NO_SUCH_SYMBOL: unknown symbol: no check or rule has it (see `filterctl symbols` for the list)",
        "actions.reject: 4 is not valid: expected at least actions.add_header (5); a message scoring 5 "
        "or more would get add_header, not reject",
        f"checks.client_lists.deny_file: '{tmp_path}/deny.txt' does not exist",
        f"checks.dkim_sign.keys.example.com.sel1: '{tmp_path}/k1.key' does not exist",
    ]
    assert refusal(path) == lines(result, "error: ")


@pytest.mark.parametrize(
    ("actions", "expected"),
    [
        (
            "reject = 10.0\nadd_header = 12.0",
            [
                "actions.reject: 10 is not valid: expected at least actions.add_header (12); a message "
                "scoring 12 or more would get add_header, not reject"
            ],
        ),
        (
            "rewrite_subject = 16.0",
            [
                "actions.reject: 15 is not valid: expected at least actions.rewrite_subject (16); a "
                "message scoring 16 or more would get rewrite_subject, not reject"
            ],
        ),
        (
            "quarantine = 4.0",
            [
                "actions.quarantine: 4 is not valid: expected at least actions.add_header (5); a message "
                "scoring 5 or more would get add_header, not quarantine"
            ],
        ),
        (
            "quarantine = 20.0",
            [
                "actions.reject: 15 is not valid: expected at least actions.quarantine (20); a message "
                "scoring 20 or more would get quarantine, not reject"
            ],
        ),
    ],
)
def test_a_threshold_below_a_milder_actions_is_an_error(
    tmp_path: Path, actions: str, expected: list[str]
) -> None:
    result = check(write(tmp_path, f"[actions]\n{actions}\n"))
    assert result.exit_code == 1
    assert lines(result, "error: ") == expected


def test_actions_turned_off_with_inf_are_not_compared(tmp_path: Path) -> None:
    result = check(write(tmp_path, "[actions]\nreject = inf\nquarantine = 30.0\nadd_header = 6.0\n"))
    assert result.exit_code == 0, result.output
    assert lines(result, "error: ") == []


def test_warnings_do_not_fail_the_check(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""\
        [actions]
        greylist = 20.0

        [scores]
        FORGED_OE_MSGID = 3.0

        [checks.rules]
        enabled = false

        [checks.sender_lists]
        enabled = false
        allow_file = "{tmp_path}/missing-allow.txt"
        """,
    )
    result = check(path)
    assert result.exit_code == 0, result.output
    assert lines(result, "warning: ") == [
        "actions.greylist: 20 is at or above actions.reject (15): messages scoring 20 or more are "
        "greylisted (4xx) instead of rejected",
        "scores.FORGED_OE_MSGID: scored, but its check rules is disabled",
        f"checks.sender_lists.allow_file: '{tmp_path}/missing-allow.txt' does not exist "
        "(checks.sender_lists is disabled; an error once enabled)",
    ]
    assert result.output.splitlines()[-1] == f"{path}: OK (3 warning(s))"


def test_every_bad_file_of_the_enabled_checks_is_named(tmp_path: Path) -> None:
    """The settings are right; the checks find their files wrong when built: every one is named,
    and filterd refuses with the same list."""
    bad_list = write(tmp_path, "10.0.0.0/8\nnot-a-network\n", "deny.txt")
    loose_key = write(tmp_path, "not a key\n", "loose.key")
    loose_key.chmod(0o644)
    path = write(
        tmp_path,
        f"""\
        [milter]
        socket = "unix:{tmp_path}/filterd.sock"

        [checks.client_lists]
        deny_file = "{bad_list}"

        [checks.dkim_sign]
        keys."example.com".sel1 = "{tmp_path}/missing.key"
        keys."example.com".sel2 = "{loose_key}"
        keys."example.org".sel1 = "relative.key"
        """,
    )
    result = check(path)
    assert result.exit_code == 1
    errors = lines(result, "error: ")
    assert [e.split(": ", 1)[0] for e in errors] == [
        "checks.client_lists.deny_file",
        "checks.dkim_sign.keys.example.com.sel1",
        "checks.dkim_sign.keys.example.com.sel2",
        "checks.dkim_sign.keys.example.org.sel1",
    ]
    assert (
        errors[0]
        == f"checks.client_lists.deny_file: {bad_list}:2: 'not-a-network' is not an IP address or network"
    )
    assert "missing.key does not exist" in errors[1]
    assert "has mode 0644" in errors[2]
    assert (
        errors[3]
        == "checks.dkim_sign.keys.example.org.sel1: key file 'relative.key' must be an absolute path"
    )
    assert refusal(path) == errors


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_list_file_is_an_error(tmp_path: Path) -> None:
    deny = write(tmp_path, "10.0.0.0/8\n", "deny.txt")
    deny.chmod(0)
    result = check(write(tmp_path, f'[checks.client_lists]\ndeny_file = "{deny}"\n'))
    assert result.exit_code == 1
    assert lines(result, "error: ")[0].startswith("checks.client_lists.deny_file: cannot read list file")


def test_check_json(tmp_path: Path) -> None:
    path = write(tmp_path, '[milter]\nworkers = "many"\n[actions]\ngreylist = 20.0\n')
    result = check(path, "--json")
    assert result.exit_code == 1
    assert json.loads(result.output) == {
        "config": str(path),
        "ok": False,
        "errors": [{"key": "milter.workers", "message": "'many' is not valid: expected a whole number"}],
        "warnings": [],
    }
    good = write(tmp_path, "[actions]\ngreylist = 20.0\n", "good.toml")
    result = check(good, "--json")
    assert result.exit_code == 0
    report = json.loads(result.output)
    assert report["ok"] is True and report["errors"] == []
    assert [w["key"] for w in report["warnings"]] == ["actions.greylist"]


# --- rule symbols in [scores] ----------------------------------------------------------------

LOCAL_RULE = """\
[LOCAL_ZEBRA]
kind = "body"
pattern = 'zebra-unicorn'
score = 1.0
description = "mentions the zebra-unicorn"
"""

OE_SPAM = (
    b"From: a@example.com\r\nTo: b@example.net\r\nSubject: offer\r\nDate: Thu, 03 Dec 2026 10:00:00 +0000\r\n"
    b"Message-ID: <not-outlook@example.com>\r\nX-Mailer: Microsoft Outlook Express 6.00.2900.2180\r\n"
    b"\r\nBuy the zebra-unicorn today.\r\n"
)


def rules_only_config(tmp_path: Path, scores: str) -> Path:
    """Only the rules check on (no DNS, Redis or clamd), a local rule directory, and `scores`."""
    local = tmp_path / "local-rules"
    local.mkdir()
    (local / "90_local.toml").write_text(LOCAL_RULE)
    off = "".join(f"[checks.{c.name}]\nenabled = false\n" for c in registered_checks() if c.name != "rules")
    return write(tmp_path, f'[scores]\n{scores}\n[checks.rules]\nlocal_dir = "{local}"\n{off}')


def test_rule_symbols_can_be_scored_and_the_score_applies(tmp_path: Path) -> None:
    path = rules_only_config(tmp_path, "FORGED_OE_MSGID = 7.5\nLOCAL_ZEBRA = 2.25\n")
    assert check(path).exit_code == 0
    message = tmp_path / "spam.eml"
    message.write_bytes(OE_SPAM)
    result = CliRunner().invoke(cli, ["--config", str(path), "scan", "--json", str(message)])
    verdict = json.loads(result.output)
    scores = {s["name"]: s["score"] for s in verdict["symbols"]}
    assert scores["FORGED_OE_MSGID"] == 7.5  # the shipped rule's own score is 2.6
    assert scores["LOCAL_ZEBRA"] == 2.25


def test_unknown_and_hidden_rule_names_are_refused_in_scores(tmp_path: Path) -> None:
    path = rules_only_config(tmp_path, "LOCAL_ZEBRO = 1.0\n__HAS_X_MAILER = 1.0\n")
    result = check(path)
    assert result.exit_code == 1
    assert lines(result, "error: ") == [
        "scores.LOCAL_ZEBRO: unknown symbol: no check or rule has it (see `filterctl symbols` for the list)",
        "scores.__HAS_X_MAILER: a __ rule only feeds metas and is never scored",
    ]


def test_symbols_lists_rule_symbols_with_score_and_description(tmp_path: Path) -> None:
    path = rules_only_config(tmp_path, "LOCAL_ZEBRA = 2.25\n")
    result = CliRunner().invoke(cli, ["--config", str(path), "symbols"])
    assert result.exit_code == 0
    by_symbol = {line.split()[0]: line for line in result.output.splitlines()}
    assert by_symbol["LOCAL_ZEBRA"] == (
        f"{'LOCAL_ZEBRA':<28} {2.25:7.2f}  rules (eom): mentions the zebra-unicorn"
    )
    assert "FORGED_OE_MSGID" in by_symbol and "__HAS_X_MAILER" not in by_symbol
    assert by_symbol["MISSING_DATE"] == (
        f"{'MISSING_DATE':<28} {1.0:7.2f}  header_sanity (headers): missing or malformed Date, "
        "Message-ID and From; Date far from now"
    )
    rows = json.loads(CliRunner().invoke(cli, ["--config", str(path), "symbols", "--json"]).output)
    zebra = next(r for r in rows if r["symbol"] == "LOCAL_ZEBRA")
    assert zebra == {
        "symbol": "LOCAL_ZEBRA",
        "score": 2.25,
        "source": "rules",
        "stage": "eom",
        "description": "mentions the zebra-unicorn",
    }
    oe = next(r for r in rows if r["symbol"] == "FORGED_OE_MSGID")
    assert oe["score"] == 2.6 and oe["description"].startswith("says Outlook Express wrote it")
    assert {r["source"] for r in rows} >= {"rules", "pipeline", "header_sanity", "dkim"}


# --- $FILTERD_CONFIG and --version -----------------------------------------------------------


def test_filterd_config_naming_no_file_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.toml"
    result = CliRunner(env={"FILTERD_CONFIG": str(missing)}).invoke(cli, ["config", "show", "-n"])
    assert result.exit_code == 1
    assert result.output == f"Error: cannot read configuration {missing}: No such file or directory\n"
    proc = subprocess.run(
        [sys.executable, "-m", "filterd"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "FILTERD_CONFIG": str(missing)},
    )
    assert proc.returncode == 2
    assert f"cannot read configuration {missing}: No such file or directory" in proc.stderr


def test_filterd_config_naming_a_file_is_read(tmp_path: Path) -> None:
    path = write(tmp_path, "[actions]\nreject = 12.0\n")
    result = CliRunner(env={"FILTERD_CONFIG": str(path)}).invoke(cli, ["config", "show", "-n"])
    assert result.exit_code == 0 and result.output == "[actions]\nreject = 12.0\n"


def test_version_comes_from_the_package_metadata() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert result.output == f"filterctl {importlib.metadata.version('filterd')}\n"


def test_the_module_runs_as_filterctl() -> None:
    """`python -m filterd.cli.filterctl` is filterctl (before, it imported the commands and printed
    nothing: the defaults file regenerated that way came out empty)."""
    proc = subprocess.run(
        [sys.executable, "-m", "filterd.cli.filterctl", "config", "defaults"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (ROOT / "contrib" / "filterd.toml").read_text()


def test_man_pages_are_written_from_the_cli(tmp_path: Path) -> None:
    pytest.importorskip("click_man")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "manpages.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    page = (tmp_path / "filterctl-config-show.1").read_text()
    assert ".TH" in page and "only the settings that differ from the defaults" in page
    assert {"filterctl.1", "filterctl-config-check.1", "filterctl-symbols.1"} <= {
        p.name for p in tmp_path.iterdir()
    }


def test_bash_completion_script_and_answers() -> None:
    """The documented `_FILTERCTL_COMPLETE=bash_source filterctl` (click's shell completion)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = [sys.executable, "-c", "from filterd.cli.filterctl import main; main()"]
    source = subprocess.run(
        run, capture_output=True, text=True, timeout=60, env={**env, "_FILTERCTL_COMPLETE": "bash_source"}
    )
    assert "_filterctl_completion()" in source.stdout
    words = {"_FILTERCTL_COMPLETE": "bash_complete", "COMP_WORDS": "filterctl config s", "COMP_CWORD": "2"}
    answer = subprocess.run(run, capture_output=True, text=True, timeout=60, env={**env, **words})
    assert answer.stdout.split() == ["plain,show"]

"""Configuration: defaults, validation messages that name key/value/expectation, the reference file."""

from __future__ import annotations

import math
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from filterd.cli.filterctl import cli
from filterd.config import load_config, parse_config, render_defaults
from filterd.settings import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_are_complete_and_sane() -> None:
    c = load_config(None)
    assert c.milter.socket == "unix:/run/filterd/filterd.sock"
    assert c.actions.reject == 15.0 and math.isinf(c.actions.quarantine)
    assert c.actions.required == 5.0
    assert c.check_settings("header_sanity").enabled is True


def test_contrib_reference_file_matches_the_declarations() -> None:
    shipped = (ROOT / "contrib" / "filterd.toml").read_text()
    assert shipped == render_defaults(), "regenerate with: filterctl config defaults > contrib/filterd.toml"
    assert parse_config(tomllib.loads(shipped)) == parse_config({})


@pytest.mark.parametrize(
    ("toml", "key", "words"),
    [
        ("[milter]\nworkers = 'two'\n", "milter.workers", "expected a whole number"),
        ("[milter]\nwrokers = 2\n", "milter.wrokers", "unknown key in [milter]"),
        ("[nosuch]\nx = 1\n", "nosuch", "unknown key in the top level"),
        ("[actions]\nreject = true\n", "actions.reject", "expected a number"),
        ("[milter]\nsocket = 'tcp:25'\n", "milter.socket", "unix:/path/to/socket"),
        ("[milter]\nlog_level = 'loud'\n", "milter.log_level", "one of 'debug'"),
        (
            "[network]\ninternal_networks = ['10.0.0.0/33']\n",
            "network.internal_networks",
            "not an IP network",
        ),
        ("[scores]\nNO_SUCH_SYMBOL = 1.0\n", "scores.NO_SUCH_SYMBOL", "unknown symbol"),
        ("[checks.header_sanity]\npast_days = -1\n", "checks.header_sanity.past_days", "greater than zero"),
        ("[checks.no_such_check]\nenabled = true\n", "checks.no_such_check", "unknown key in [checks]"),
        ("[checks.client_lists]\non_error = 'maybe'\n", "checks.client_lists.on_error", "'open', 'closed'"),
    ],
)
def test_bad_values_are_refused_naming_key_value_and_expectation(
    tmp_path: Path, toml: str, key: str, words: str
) -> None:
    path = tmp_path / "f.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == key
    assert key in str(info.value) and words in str(info.value) and str(path) in str(info.value)


def test_toml_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "f.toml"
    path.write_text("[milter\n")
    with pytest.raises(ConfigError, match=r"f.toml: not valid TOML: .*line 1"):
        load_config(path)


def test_score_overrides_apply() -> None:
    c = parse_config({"scores": {"MISSING_DATE": 3.5}})
    assert c.score_of("MISSING_DATE") == 3.5
    assert c.score_of("INVALID_DATE") == 1.5


def test_filterctl_config_check_exit_codes(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text("[actions]\nreject = 12\n")
    bad = tmp_path / "bad.toml"
    bad.write_text("[actions]\nrejekt = 12\n")
    runner = CliRunner()
    ok = runner.invoke(cli, ["--config", str(good), "config", "check"])
    assert ok.exit_code == 0 and "OK" in ok.output
    fail = runner.invoke(cli, ["--config", str(bad), "config", "check"])
    assert fail.exit_code == 1 and "actions.rejekt" in fail.output


def test_config_check_reads_list_files(tmp_path: Path) -> None:
    lst = tmp_path / "deny.txt"
    lst.write_text("10.0.0.0/8\nnot-a-network\n")
    cfg = tmp_path / "f.toml"
    cfg.write_text(f"[checks.client_lists]\ndeny_file = '{lst}'\n")
    result = CliRunner().invoke(cli, ["--config", str(cfg), "config", "check"])
    assert result.exit_code == 1
    assert f"{lst}:2" in result.output and "not-a-network" in result.output


def test_daemon_refuses_to_start_and_names_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "f.toml"
    cfg.write_text("[milter]\nworkers = 'many'\n")
    proc = subprocess.run(
        [sys.executable, "-m", "filterd", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    assert "milter.workers" in proc.stderr and "'many'" in proc.stderr and "whole number" in proc.stderr


def test_parse_config_gathers_every_problem_with_its_key() -> None:
    """The API under `config check`: one ConfigErrors holding each problem, first key first."""
    with pytest.raises(ConfigError) as info:
        parse_config({"milter": {"workers": "x", "timeout": 0}, "scores": {"NOPE": 1}, "checks": 3})
    assert [p.key for p in info.value.problems] == [
        "milter.workers",
        "milter.timeout",
        "checks",
        "scores.NOPE",
    ]
    assert info.value.key == "milter.workers"
    assert str(info.value).startswith(
        "4 errors:\n  milter.workers: 'x' is not valid: expected a whole number\n"
    )

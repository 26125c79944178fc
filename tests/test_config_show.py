"""`filterctl config show`: the effective configuration as TOML shaped like the file (it reads
back as the same configuration), `-n` what differs from the defaults (like `postconf -n`), `-d`
the defaults, `--json` for each.  Real TOML files through the real CLI."""

from __future__ import annotations

import json
import textwrap
import tomllib
from pathlib import Path

from click.testing import CliRunner, Result

from filterd.cli.filterctl import cli
from filterd.config import load_config, parse_config

CHANGED = """\
    [milter]
    workers = 4
    log_level = "debug"

    [network]
    internal_networks = ["192.0.2.0/24", "2001:db8::/32"]

    [actions]
    reject = 12
    quarantine = 9.5

    [scores]
    MISSING_DATE = 2.5
    FORGED_OE_MSGID = 4.0

    [checks.header_sanity]
    past_days = 400
    enabled = true

    [checks.uribl]
    enabled = false

    [checks.dkim_sign]
    enabled = false
    keys."example.com".sel1 = "/etc/filterd/dkim/example.com.sel1.key"
"""


def config_file(tmp_path: Path, text: str = CHANGED) -> Path:
    path = tmp_path / "filterd.toml"
    path.write_text(textwrap.dedent(text))
    return path


def show(path: Path | None, *args: str) -> Result:
    options = ["--config", str(path)] if path else []
    result = CliRunner().invoke(cli, [*options, "config", "show", *args])
    assert result.exit_code == 0, result.output
    return result


def test_show_n_prints_only_what_differs_from_the_defaults(tmp_path: Path) -> None:
    """Values equal to the default (header_sanity enabled, uribl disabled) are left out."""
    output = show(config_file(tmp_path), "-n").output
    assert output == textwrap.dedent(
        """\
        [milter]
        workers = 4
        log_level = "debug"

        [network]
        internal_networks = ["192.0.2.0/24", "2001:db8::/32"]

        [actions]
        reject = 12.0
        quarantine = 9.5

        [scores]
        MISSING_DATE = 2.5
        FORGED_OE_MSGID = 4.0

        [checks.header_sanity]
        past_days = 400.0

        [checks.dkim_sign]
        enabled = false

        [checks.dkim_sign.keys."example.com"]
        sel1 = "/etc/filterd/dkim/example.com.sel1.key"
        """
    )


def test_show_output_reads_back_as_the_same_configuration(tmp_path: Path) -> None:
    path = config_file(tmp_path)
    expected = load_config(path)
    for args in ((), ("-n",)):
        shown = parse_config(tomllib.loads(show(path, *args).output), str(path))
        assert shown == expected, args


def test_show_prints_every_setting_of_every_section(tmp_path: Path) -> None:
    data = tomllib.loads(show(config_file(tmp_path)).output)
    assert data["milter"]["workers"] == 4 and data["milter"]["socket"] == "unix:/run/filterd/filterd.sock"
    assert data["actions"]["rewrite_subject"] == float("inf")
    assert data["checks"]["uribl"] == {"enabled": False, "on_error": "open", "zones": [], "max_domains": 10}
    assert data["checks"]["dkim_sign"]["keys"] == {
        "example.com": {"sel1": "/etc/filterd/dkim/example.com.sel1.key"}
    }
    assert data["checks"]["rules"] == {
        "enabled": True,
        "on_error": "open",
        "default_dir": "",
        "local_dir": "",
    }


def test_show_d_prints_the_defaults_whatever_the_file(tmp_path: Path) -> None:
    defaults = show(config_file(tmp_path), "-d").output
    assert (
        defaults
        == show(
            config_file(tmp_path, ""),
        ).output
    )
    assert parse_config(tomllib.loads(defaults)) == parse_config({})
    assert show(config_file(tmp_path, ""), "-n").output == ""


def test_show_json(tmp_path: Path) -> None:
    path = config_file(tmp_path)
    assert json.loads(show(path, "-n", "--json").output) == {
        "milter": {"workers": 4, "log_level": "debug"},
        "network": {"internal_networks": ["192.0.2.0/24", "2001:db8::/32"]},
        "actions": {"reject": 12.0, "quarantine": 9.5},
        "scores": {"MISSING_DATE": 2.5, "FORGED_OE_MSGID": 4.0},
        "checks": {
            "header_sanity": {"past_days": 400.0},
            "dkim_sign": {
                "enabled": False,
                "keys": {"example.com": {"sel1": "/etc/filterd/dkim/example.com.sel1.key"}},
            },
        },
    }
    full = json.loads(show(path, "--json").output)
    assert full["actions"]["rewrite_subject"] == "inf"  # JSON has no infinity
    assert full["milter"]["workers"] == 4
    defaults = json.loads(show(path, "-d", "--json").output)
    assert defaults["milter"]["workers"] == 0 and defaults["scores"] == {}


def test_show_reads_filterd_config(tmp_path: Path) -> None:
    path = config_file(tmp_path, "[actions]\nadd_header = 6\n")
    result = CliRunner(env={"FILTERD_CONFIG": str(path)}).invoke(cli, ["config", "show", "-n"])
    assert result.exit_code == 0 and result.output == "[actions]\nadd_header = 6.0\n"


def test_show_refuses_a_bad_file_naming_every_error(tmp_path: Path) -> None:
    path = config_file(tmp_path, '[milter]\nworkers = "x"\ntimeout = -1\n')
    result = CliRunner().invoke(cli, ["--config", str(path), "config", "show"])
    assert result.exit_code == 1
    assert result.output == (
        f"Error: {path}: 2 errors:\n"
        "  milter.workers: 'x' is not valid: expected a whole number\n"
        "  milter.timeout: -1 is not valid: expected a number greater than zero\n"
    )


def test_n_and_d_together_are_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["--config", str(config_file(tmp_path)), "config", "show", "-n", "-d"])
    assert result.exit_code == 2 and "-n and -d exclude each other" in result.output

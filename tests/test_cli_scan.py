"""filterctl scan, as an admin uses it on stored messages."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from filterd.cli.filterctl import cli


def write(tmp_path: Path, name: str, raw: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(raw)
    return p


def test_scan_prints_a_line_per_message(tmp_path: Path) -> None:
    write(tmp_path, "a.eml", b"Subject: x\r\n\r\nbody\r\n")
    write(tmp_path, "b.eml", b"From: a@example.org\r\nMessage-ID: <1@e.org>\r\n\r\nbody\r\n")
    result = CliRunner().invoke(cli, ["scan", str(tmp_path)])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(str(tmp_path / "a.eml")) and "MISSING_FROM(2)" in lines[0]
    assert "accept" in lines[1] and "MISSING_DATE(1)" in lines[1]


def test_scan_json_with_smtp_context_and_stdin(tmp_path: Path) -> None:
    deny = write(tmp_path, "deny", b"192.0.2.0/24\n")
    cfg = write(tmp_path, "f.toml", f"[checks.client_lists]\ndeny_file = '{deny}'\n".encode())
    result = CliRunner().invoke(
        cli,
        ["--config", str(cfg), "scan", "--json", "--client-ip", "192.0.2.5", "-"],
        input=b"Subject: x\r\n\r\nbody\r\n",
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["file"] == "<stdin>" and out["action"] == "reject"
    assert out["reply"].startswith("550 5.7.1 Client host [192.0.2.5]")


def test_scan_of_a_missing_path_is_a_clear_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["scan", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert "no such file or directory" in result.output


def test_symbols_lists_every_symbol_with_its_check() -> None:
    result = CliRunner().invoke(cli, ["symbols"])
    assert result.exit_code == 0
    assert "MISSING_DATE" in result.output and "header_sanity (headers)" in result.output

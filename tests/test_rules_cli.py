"""`filterctl rules check|test|stats` through click's CliRunner (fit and eval: test_scoring_fit.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from click.testing import CliRunner

from filterd.cli.filterctl import cli
from tests.rules_support import rule_dir

RULES = """
[PILLS]
kind = "body"
pattern = '(?i)cheap\\s+pills'
score = 3.0
description = "sells pills"

[SHOUTING]
kind = "helper"
test = "subject_caps"
min_letters = 8
min_ratio = 0.8
score = 2.5
description = "subject in capitals"

[__LUNCH]
kind = "body"
pattern = '(?i)lunch'
"""

SPAM = b"From: a@example.com\r\nSubject: BUY CHEAP PILLS NOW\r\n\r\nCheap pills here.\r\n"
SPAM_2 = b"From: a@example.com\r\nSubject: hello\r\n\r\ncheap   pills, cheap!\r\n"
HAM = b"From: b@example.com\r\nSubject: lunch?\r\n\r\nLunch at noon?\r\n"


def run(*args: str, input: bytes | None = None) -> tuple[int, str]:
    """Run filterctl with the built-in configuration ($FILTERD_CONFIG an empty file)."""
    runner = CliRunner(env={"FILTERD_CONFIG": os.devnull})  # an empty file: the built-in defaults
    result = runner.invoke(cli, list(args), input=input)
    return result.exit_code, result.output


def config(tmp_path: Path, default_dir: Path, local_dir: Path | None = None) -> Path:
    cfg = tmp_path / "filterd.toml"
    lines = ["[checks.rules]", f'default_dir = "{default_dir}"']
    if local_dir is not None:
        lines.append(f'local_dir = "{local_dir}"')
    cfg.write_text("\n".join(lines) + "\n")
    return cfg


def test_check_ok_and_broken(tmp_path: Path) -> None:
    d = rule_dir(tmp_path, "rules", {"r.toml": RULES})
    cfg = config(tmp_path, d)
    result = CliRunner().invoke(cli, ["--config", str(cfg), "rules", "check"])
    assert result.exit_code == 0, result.output
    assert "OK" in result.output and "3 rules, 3 enabled" in result.output

    bad = rule_dir(tmp_path, "local", {"x.toml": '[PILLS]\nscore = "lots"\n'})
    result = CliRunner().invoke(cli, ["--config", str(cfg), "rules", "check", "--local-dir", str(bad)])
    assert result.exit_code == 1
    assert "x.toml: rule PILLS: score = 'lots': expected a number" in result.output


def test_check_the_shipped_set() -> None:
    code, out = run("rules", "check")
    assert code == 0, out
    assert "OK" in out


def test_test_shows_hits_and_matched_text(tmp_path: Path) -> None:
    d = rule_dir(tmp_path, "rules", {"r.toml": RULES})
    msgs = tmp_path / "msgs"
    msgs.mkdir()
    (msgs / "1.eml").write_bytes(SPAM)
    (msgs / "2.eml").write_bytes(HAM)
    code, out = run("rules", "test", "--default-dir", str(d), str(msgs))
    assert code == 0, out
    assert "1.eml\tscore 5.5\t2 rule(s)" in out
    assert "matched: 'Cheap pills'" in out
    assert "matched: '16 of 16 letters are capitals'" in out
    assert "2.eml\tscore 0\t0 rule(s)" in out
    code, out = run("rules", "test", "--default-dir", str(d), "--all", "--json", "-", input=HAM)
    row = json.loads(out)
    assert row["file"] == "<stdin>" and [h["rule"] for h in row["hits"]] == ["__LUNCH"]


def test_test_bad_path_is_a_clear_error(tmp_path: Path) -> None:
    code, out = run("rules", "test", str(tmp_path / "missing.eml"))
    assert code == 2 and "no such file or directory" in out


def test_stats_counts_hits_per_corpus(tmp_path: Path) -> None:
    d = rule_dir(tmp_path, "rules", {"r.toml": RULES})
    corpus = tmp_path / "corpus"
    (corpus / "spam").mkdir(parents=True)
    (corpus / "ham").mkdir()
    (corpus / "spam" / "1").write_bytes(SPAM)
    (corpus / "spam" / "2").write_bytes(SPAM_2)
    (corpus / "ham" / "1").write_bytes(HAM)
    code, out = run("rules", "stats", "--corpus", str(corpus), "--default-dir", str(d), "--all")
    assert code == 0, out
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line and line.split()[0].isupper()}
    assert lines["PILLS"][1:] == ["rule", "3.00", "|", "100.00", "0.00", "1.00"]
    assert lines["SHOUTING"][1:] == ["rule", "2.50", "|", "50.00", "0.00", "1.00"]
    assert "__LUNCH" not in lines  # a __ rule is no symbol: it only feeds metas
    assert "corpus: 2 spam, 1 ham" in out
    code, out = run("rules", "stats", "--corpus", str(tmp_path))
    assert code == 2 and "no manifest.csv and no spam/ subdirectory" in out

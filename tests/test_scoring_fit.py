"""Symbol vectors of labelled mail and the commands that measure and fit the combination:
`filterctl rules stats|fit|eval` on small corpora written here."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from filterd.cli.filterctl import cli
from filterd.combination import load_model
from filterd.combination_fit import logistic_l2
from filterd.config import parse_config
from filterd.symbolvectors import (
    OfflineScanner,
    labelled_files,
    offline_config,
    received_time,
    strip_upstream_verdicts,
)
from tests.bayes_helpers import ham_message, spam_message

OLD = (
    b"Received: from relay.example.org by mx.example.net; Tue, 20 Aug 2002 10:00:00 +0000\r\n"
    b"From: a@example.org\r\nTo: b@example.net\r\nSubject: hi\r\n"
    b"Message-ID: <1@example.org>\r\n"
)


def test_upstream_verdict_headers_are_stripped_with_their_folds() -> None:
    raw = (
        b"X-Spam-Status: Yes, score=12.3\r\n\ttests=LOTS\r\nSubject: hi\r\nX-DSPAM-Result: Spam\r\n"
        b"X-Bogosity: Spam, tests=bogofilter\r\nX-Virus-Scanned: clean\r\nX-Spammy: kept\r\n\r\n"
        b"X-Spam-Status: in the body, kept\r\n"
    )
    assert strip_upstream_verdicts(raw) == (
        b"Subject: hi\r\nX-Spammy: kept\r\n\r\nX-Spam-Status: in the body, kept\r\n"
    )


def test_received_time_is_the_topmost_received_else_the_date() -> None:
    headers = [
        ("Received", "by mx; Tue, 20 Aug 2002 10:00:00 +0000"),
        ("Received", "by relay; Mon, 19 Aug 2002 10:00:00 +0000"),
        ("Date", "Sun, 18 Aug 2002 10:00:00 +0000"),
    ]
    assert received_time(headers) == 1029837600.0
    assert received_time(headers[2:]) == 1029837600.0 - 2 * 86400
    assert received_time([("Received", "no date here")]) is None


def test_the_offline_scan_neutralises_age_and_asks_no_network() -> None:
    cfg = offline_config(parse_config({}))
    assert not cfg.check_settings("dkim").enabled and not cfg.check_settings("spf").enabled
    assert cfg.check_settings("rules").enabled and cfg.check_settings("header_sanity").enabled
    scanner = OfflineScanner(parse_config({}))
    on_time = OLD + b"Date: Tue, 20 Aug 2002 09:59:00 +0000\r\n\r\nhello\r\n"
    stale = OLD + b"Date: Fri, 19 Jul 2002 09:59:00 +0000\r\n\r\nhello\r\n"  # a month before receipt
    assert "DATE_IN_PAST" not in scanner.symbols(on_time)  # 2002 mail is not old when it arrives
    found = scanner.symbols(stale)
    assert "DATE_IN_PAST" in found and found["DATE_IN_PAST"] == 1.0
    assert not any(name.startswith(("DKIM_", "DMARC_", "ARC_", "SPF_")) for name in found)
    scanner.close()


RULES = """
[PRIZE_WORDS]
kind = "body"
pattern = '(?i)\\b(?:prize|winner|claim)\\b'
score = 2.0
description = "prize talk"

[HAM_WORDS]
kind = "body"
pattern = '(?i)\\brepo\\b'
score = 1.5
description = "fires on ham: the stats must flag it"
"""


def corpus(root: Path, name: str, offset: int, n: int = 15) -> Path:
    folder = root / name
    for label, make in (("spam", spam_message), ("ham", ham_message)):
        (folder / label).mkdir(parents=True)
        for i in range(n):
            (folder / label / f"{name}-{i:03d}").write_bytes(make(offset + i))
    return folder


def invoke(tmp_path: Path, *args: str) -> tuple[int, str]:
    rules = tmp_path / "rules"
    rules.mkdir(exist_ok=True)
    (rules / "r.toml").write_text(RULES)
    result = CliRunner(env={"FILTERD_CONFIG": os.devnull}).invoke(
        cli, ["rules", *args, "--default-dir", str(rules)]
    )
    return result.exit_code, result.output


def test_stats_reports_hit_rates_per_corpus_and_flags_rules_that_hit_ham(tmp_path: Path) -> None:
    a, b = corpus(tmp_path, "a", 0), corpus(tmp_path, "b", 100)
    assert len(labelled_files(a)) == 30
    code, out = invoke(tmp_path, "stats", "--corpus", str(a), "--corpus", str(b), "--json")
    assert code == 0, out
    data = json.loads(out[out.index("{") :])
    assert data["corpora"] == {"a": {"spam": 15, "ham": 15}, "b": {"spam": 15, "ham": 15}}
    rows = {r["symbol"]: r for r in data["symbols"]}
    prize, ham_words = rows["PRIZE_WORDS"], rows["HAM_WORDS"]
    assert prize["kind"] == "rule" and prize["corpora"]["a"]["spam_rate"] > 0.5
    assert prize["corpora"]["a"]["ham_hits"] == 0 and not prize["flagged"]
    assert ham_words["corpora"]["b"]["ham_rate"] == 1.0 and ham_words["flagged"]
    code, out = invoke(tmp_path, "stats", "--corpus", str(a))
    assert code == 0, out
    line = next(x for x in out.splitlines() if x.startswith("HAM_WORDS"))
    assert line.split()[:3] == ["HAM_WORDS", "rule", "1.50"] and line.endswith("!")
    assert "a: 15 spam, 15 ham" in out


def test_fit_writes_a_model_that_loads_and_ranks(tmp_path: Path) -> None:
    a = corpus(tmp_path, "a", 0)
    out_file = tmp_path / "scores.json"
    code, out = invoke(
        tmp_path, "fit", "--ham", str(a / "ham"), "--spam", str(a / "spam"), "-o", str(out_file)
    )
    assert code == 0, out
    model = load_model(out_file)
    assert model.meta["spam"] == 15 and model.meta["ham"] == 15
    assert model.with_bayes.symbols["PRIZE_WORDS"] > 0
    # HAM_WORDS hits only ham, but its table score says it was written to catch spam: the fit
    # keeps that sign and gives it nothing, rather than a reward for hitting
    assert model.with_bayes.symbols["HAM_WORDS"] == 0.0
    # the classifier separates this toy corpus perfectly, so the fit would trust it without
    # limit; the weight stops where the table's highest band (+4.5) stops Bayes alone
    assert model.with_bayes.bayes == pytest.approx(model.meta["bayes_weight_max"], abs=1e-3)
    assert model.scale * model.bayes_clip * model.meta["bayes_weight_max"] == pytest.approx(4.5, abs=1e-4)
    code, out = invoke(tmp_path, "fit", "--ham", str(a / "ham"), "-o", str(out_file))
    assert code == 2 and "give both --ham and --spam" in out


def test_eval_compares_the_three_scores_in_every_direction(tmp_path: Path) -> None:
    a, b = corpus(tmp_path, "a", 0), corpus(tmp_path, "b", 100)
    code, out = invoke(
        tmp_path, "eval", "--corpus", str(a), "--corpus", str(b), "--cache", str(tmp_path / "c")
    )
    assert code == 0, out
    for run in ("a -> b", "b -> a", "a hash halves", "b hash halves"):
        assert any(line.startswith(run) for line in out.splitlines()), out
    assert "learned total" in out and "Bayes spamicity alone" in out and "ham flagged" in out
    assert list((tmp_path / "c").glob("vectors-*.json"))  # the cache was written, and is reused
    code, again = invoke(
        tmp_path, "eval", "--corpus", str(a), "--corpus", str(b), "--cache", str(tmp_path / "c")
    )
    assert code == 0 and "scanned" not in again


def test_a_folder_without_labels_is_a_clear_error(tmp_path: Path) -> None:
    code, out = invoke(tmp_path, "stats", "--corpus", str(tmp_path))
    assert code == 2 and "no manifest.csv and no spam/ subdirectory" in out


def test_the_bounded_fit_is_scikit_learns_logistic_regression_when_unbounded() -> None:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    x = (rng.random((400, 5)) < 0.3).astype(float)
    y = (x @ np.array([2.0, -1.0, 0.5, 0.0, 1.0]) + rng.normal(0, 1, 400)) > 0.8
    b, w = logistic_l2(x, y, 1.0, [(None, None)] * 5)
    ref = LogisticRegression(C=1.0, max_iter=5000, tol=1e-10).fit(x, y)
    assert b == pytest.approx(ref.intercept_[0], abs=1e-3)
    assert w == pytest.approx(ref.coef_[0], abs=1e-3)
    _, bounded = logistic_l2(x, y, 1.0, [(0.0, None)] * 5)
    assert bounded[1] == 0.0 and (bounded >= 0).all()


def test_without_corpora_the_commands_say_where_to_get_them(tmp_path: Path) -> None:
    result = CliRunner(env={"FILTERD_CONFIG": os.devnull, "FILTERD_CORPUS": str(tmp_path / "none")}).invoke(
        cli, ["rules", "eval"]
    )
    assert result.exit_code == 1
    assert "no corpus found" in result.output and "spamassassin.apache.org" in result.output

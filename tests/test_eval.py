"""filterd_eval: the evaluation tool (`filterctl eval`), out of the mail-path package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from filterd.cli.filterctl import cli
from filterd_eval.corpus import Item, in_second_half, load_folder, strip_verdict_headers
from filterd_eval.learners import ScorerLearner
from filterd_eval.metrics import figures
from filterd_eval.report import render
from filterd_eval.runs import evaluate, plans
from tests.bayes_helpers import ham_message, spam_message

ROOT = Path(__file__).resolve().parent.parent


def labelled_folder(path: Path, n: int = 40) -> Path:
    for label, make in (("ham", ham_message), ("spam", spam_message)):
        (path / label).mkdir(parents=True)
        for i in range(n):
            (path / label / f"{i:03d}{label}.eml").write_bytes(make(i))
    return path


def test_verdict_headers_of_other_filters_are_removed_with_their_continuation_lines() -> None:
    raw = (
        b"Received: from a\r\n\tby b\r\n"
        b"X-Spam-Status: Yes, score=9.1\r\n\ttests=A,B\r\n"
        b"XStatus: No, score=-15.9 required=4.0\r\n"  # CSDMC's munged SpamAssassin verdict
        b"X-Barracuda-Spam-Score: 3.2\r\nX-AmavisStatus: No\r\nX-Virus-Scanned: yes\r\nX-ASG-Tag: INTENT\r\n"
        b"X-Bogosity: Ham\r\nX-DSPAM-Result: Innocent\r\n"
        b"Subject: X-Spam-Status: in a subject stays\r\nX-Mailer: mutt\r\n\r\n"
        b"X-Spam-Status: in the body stays\r\n"
    )
    out = strip_verdict_headers(raw)
    assert out == (
        b"Received: from a\r\n\tby b\r\n"
        b"Subject: X-Spam-Status: in a subject stays\r\nX-Mailer: mutt\r\n\r\n"
        b"X-Spam-Status: in the body stays\r\n"
    )


def test_a_folder_of_ham_and_spam_subfolders_is_a_corpus_and_the_hash_halves_are_fixed(
    tmp_path: Path,
) -> None:
    items = load_folder(labelled_folder(tmp_path / "c", 50))
    assert len(items) == 100 and sum(i.is_spam for i in items) == 50
    second = [i for i in items if in_second_half(i)]
    assert 30 < len(second) < 70  # sha1 mod 2: about half
    assert [i.name for i in second] == [i.name for i in load_folder(tmp_path / "c") if in_second_half(i)]


def test_the_runs_train_and_test_on_the_planned_sets(tmp_path: Path) -> None:
    a = load_folder(labelled_folder(tmp_path / "a", 10))
    b = load_folder(labelled_folder(tmp_path / "b", 5))
    found = {(p.run, p.data): p for p in plans({"A": a, "B": b}, ["hash", "hash-swap", "chrono", "cross"])}
    assert set(found) == {
        ("hash", "A"), ("hash", "B"), ("hash-swap", "A"), ("hash-swap", "B"),
        ("chrono", "A"), ("chrono", "B"), ("cross", "A->B"), ("cross", "B->A"),
    }  # fmt: skip
    assert found["hash", "A"].train == found["hash-swap", "A"].test
    assert len(found["chrono", "A"].train) == 10 and len(found["cross", "B->A"].test) == 20


def test_any_scorer_of_raw_bytes_is_measured_by_the_same_code() -> None:
    items = [
        Item("c", f"{n}", label, "", raw)
        for n, (label, raw) in enumerate([("spam", b"S")] * 5 + [("ham", b"H")] * 5)
    ]
    perfect = ScorerLearner("perfect", lambda raw: 1.0 if raw == b"S" else 0.0)
    rows = evaluate({"c": items}, [lambda: perfect], runs=["online"], batch=3)
    assert rows[0].filter == "perfect" and rows[0].figures.roca == 0.0 and rows[0].figures.fn_at_fp == 0.0
    worst = figures(np.array([True, False]), np.array([0.1, 0.9]), 0.99)
    assert worst.roca == 100.0 and worst.fn_at_fp == 100.0 and worst.ham_flagged == 0.0


def test_eval_runs_every_split_for_filterd_and_bogofilter(tmp_path: Path) -> None:
    a = labelled_folder(tmp_path / "a", 30)
    b = labelled_folder(tmp_path / "b", 20)
    result = CliRunner().invoke(cli, ["--config", "/dev/null", "eval", str(a), str(b), "--batch", "10"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for run, data in (("hash", "a"), ("chrono", "b"), ("online", "a"), ("cross", "a->b"), ("cross", "b->a")):
        for name in ("filterd", "bogofilter"):
            row = next(line for line in lines if line.split()[:3] == [run, data, name])
            assert float(row.split()[3]) < 5.0  # these toy classes are easy for both


def test_eval_without_a_corpus_says_where_to_get_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FILTERD_CORPUS", str(tmp_path))
    result = CliRunner().invoke(cli, ["--config", "/dev/null", "eval"])
    assert result.exit_code == 1
    assert (
        f"no labelled corpus at {tmp_path}" in result.output and "SpamAssassin public corpus" in result.output
    )


def test_the_mail_path_never_imports_the_evaluation_package() -> None:
    code = (
        "import sys, filterd.daemon, filterd.milter, filterd.pipeline, filterd.checks.bayes, "
        "filterd.cli.filterctl; assert not [m for m in sys.modules if m.startswith('filterd_eval')]"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_several_hash_splits_are_reported_with_their_median_and_range(tmp_path: Path) -> None:
    items = load_folder(labelled_folder(tmp_path / "a", 20))
    found = plans({"A": items}, ["hash"], splits=3)
    assert [p.data for p in found] == ["A", "A#2", "A#3"]
    assert len({tuple(i.name for i in p.test) for p in found}) == 3  # three different halves
    scorer = ScorerLearner("s", lambda raw: float(len(raw)))
    text = render(evaluate({"A": items}, [lambda: scorer], runs=["hash"], splits=3), 0.99)
    assert "over several hash splits" in text and "A x3" in text

"""The learned score combination: the model file, the contributions, the pipeline and the config."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from filterd.cli.filterctl import cli
from filterd.combination import (
    BASE_SYMBOL,
    Combination,
    ModelFileError,
    ScoringSettings,
    learned_scores,
    load_model,
    logit,
    model_from_dict,
    shipped_model,
)
from filterd.config import parse_config
from filterd.driver import scan
from filterd.pipeline import Pipeline
from filterd.results import Action, Finding
from filterd.settings import ConfigError
from tests.bayes_helpers import ham_message, only_bayes, spam_message, trained_model


def model_data(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "format": "filterd-combination/1",
        "offset": 1.0,
        "scale": 2.0,
        "bayes_clip": 4.0,
        "with_bayes": {"intercept": -1.0, "bayes": 0.5, "symbols": {"PILLS": 1.5, "MISSING_DATE": 0.25}},
        "without_bayes": {"intercept": -2.0, "bayes": 0.0, "symbols": {"PILLS": 3.0}},
        "meta": {},
    }
    data.update(changes)
    return data


def test_contributions_add_up_and_unfitted_symbols_keep_their_table_score() -> None:
    model = model_from_dict(model_data())
    findings = [
        Finding("PILLS", "rule"),
        Finding("PILLS", "twice: counted once, as fitted"),
        Finding("SPF_FAIL", "not fitted"),
        Finding("BAYES_SPAM", "spamicity", value=0.999),
    ]
    scored = learned_scores(model, findings, [9.0, 9.0, 3.5, 4.5])
    # PILLS: scale 2 x 1.5; SPF_FAIL: its table score; Bayes: 2 x 0.5 x logit(0.999) clipped to 4
    assert scored.contributions == [3.0, 0.0, 3.5, 4.0]
    assert scored.base == 1.0 + 2.0 * -1.0
    assert scored.total == pytest.approx(scored.base + sum(scored.contributions))


def test_without_a_spamicity_the_variant_fitted_without_bayes_applies() -> None:
    model = model_from_dict(model_data())
    scored = learned_scores(model, [Finding("PILLS", "rule"), Finding("BAYES_UNTRAINED", "no value")], [3, 0])
    assert scored.contributions == [6.0, 0.0]  # 2 x 3.0; the untrained Bayes symbol keeps its 0
    assert scored.base == 1.0 + 2.0 * -2.0


def test_logit_is_clipped_and_takes_the_extremes() -> None:
    assert logit(0.5, 4.0) == 0.0
    assert logit(1.0, 4.0) == 4.0 and logit(0.0, 4.0) == -4.0
    assert logit(0.9, math.inf) == pytest.approx(math.log(9))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": "other"}, "not a learned combination"),
        ({"scale": 0}, "scale must be greater than zero"),
        ({"offset": float("nan")}, "offset must be a finite number"),
        ({"bayes_clip": -1}, "bayes_clip must be greater than zero"),
        ({"with_bayes": {"intercept": 0, "bayes": 1, "symbols": {"BAYES_SPAM": 1}}}, "cannot be a fitted"),
        ({"with_bayes": {"intercept": 0, "bayes": 1, "symbols": {"A": "high"}}}, "A must be a finite number"),
        ({"without_bayes": None}, "without_bayes is missing"),
    ],
)
def test_a_bad_model_is_refused_with_what_is_wrong(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ModelFileError, match=message):
        model_from_dict(model_data(**change))


def test_an_unreadable_or_broken_file_names_itself(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="cannot read"):
        load_model(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ModelFileError, match=r"broken\.json: not JSON"):
        load_model(broken)
    with pytest.raises(ConfigError, match=r"scoring\.model: .*missing\.json"):
        Combination(ScoringSettings(mode="learned", model=str(tmp_path / "missing.json")))


def test_the_shipped_model_loads_and_its_thresholds_mean_the_chosen_probabilities() -> None:
    model = load_model(shipped_model())
    assert model.meta["fitted_on"] == "spamassassin-public; csdmc2010"  # models/README.md
    # add_header (5) is P(spam) = 0.9 and reject (15) is 0.99999, as docs/scoring.md says
    assert model.probability(5.0) == pytest.approx(model.meta["p_add_header"], rel=1e-6)
    assert model.probability(15.0) == pytest.approx(model.meta["p_reject"], rel=1e-6)
    assert model.with_bayes.bayes > 0  # a higher spamicity can only raise the score
    assert len(model.with_bayes.symbols) > 50


def test_config_declares_and_validates_the_mode() -> None:
    assert parse_config({}).scoring.mode == "table"
    assert parse_config({"scoring": {"mode": "learned"}}).scoring.mode == "learned"
    with pytest.raises(ConfigError, match=r"scoring\.mode"):
        parse_config({"scoring": {"mode": "neural"}})


def write_model(tmp_path: Path, **changes: Any) -> Path:
    path = tmp_path / "scores.json"
    path.write_text(json.dumps(model_data(**changes)))
    return path


RULES = '[PILLS]\nkind = "body"\npattern = "(?i)cheap pills"\nscore = 9.0\ndescription = "sells pills"\n'
SPAM = b"From: a@example.com\r\nTo: b@example.net\r\nSubject: offer\r\n\r\nCheap pills here.\r\n"


def test_the_pipeline_scores_with_the_learned_model_and_explains_every_point(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "r.toml").write_text(RULES)
    checks: dict[str, Any] = {"rules": {"default_dir": str(rules)}, "dkim": {"enabled": False}}
    checks |= {name: {"enabled": False} for name in ("arc", "dmarc", "auth_results", "bayes")}
    table = Pipeline.from_config(parse_config({"checks": checks}))
    _, before = scan(table, SPAM)
    # table: PILLS 9 + MISSING_DATE 1 + MISSING_MESSAGE_ID 1 -> 11, flagged
    assert before.score == 11.0 and before.action is Action.ADD_HEADER
    cfg = parse_config(
        {"checks": checks, "scoring": {"mode": "learned", "model": str(write_model(tmp_path))}}
    )
    learned = Pipeline.from_config(cfg)
    _, after = scan(learned, SPAM)
    by_name = {s.name: s.score for s in after.symbols}
    # without Bayes: base 1 + 2 x -2 = -3; PILLS 2 x 3.0 = 6; the others keep their table score
    assert by_name == {BASE_SYMBOL: -3.0, "PILLS": 6.0, "MISSING_DATE": 1.0, "MISSING_MESSAGE_ID": 1.0}
    assert after.score == pytest.approx(sum(by_name.values())) == 5.0
    assert after.action is Action.ADD_HEADER
    table.close()
    learned.close()


def test_the_bayes_spamicity_reaches_the_combination_unrounded(tmp_path: Path) -> None:
    model_file = tmp_path / "bayes.npz"
    trained_model().save(model_file)
    bayes = {"model": str(model_file), "storage": "file", "signature": False}
    cfg = parse_config(
        {
            "checks": only_bayes(bayes),
            "scoring": {"mode": "learned", "model": str(write_model(tmp_path))},
        }
    )
    p = Pipeline.from_config(cfg)
    for raw, sign in ((spam_message(99), 1), (ham_message(99), -1)):
        tx, verdict = scan(p, raw)
        bayes_finding = next(f for f in tx.findings if f.symbol.startswith("BAYES_"))
        assert bayes_finding.value is not None
        expected = 2.0 * 0.5 * logit(bayes_finding.value, 4.0)
        symbol = next(s for s in verdict.symbols if s.name == bayes_finding.symbol)
        assert symbol.score == pytest.approx(expected, abs=1e-3) and sign * symbol.score > 0
        assert verdict.score == pytest.approx(sum(s.score for s in verdict.symbols), abs=1e-6)
    p.close()


def test_config_check_refuses_a_broken_model(tmp_path: Path) -> None:
    cfg = tmp_path / "filterd.toml"
    cfg.write_text(f'[scoring]\nmode = "learned"\nmodel = "{tmp_path / "nope.json"}"\n')
    result = CliRunner().invoke(cli, ["--config", str(cfg), "config", "check"])
    assert result.exit_code == 1
    assert "scoring.model" in result.output and "nope.json" in result.output

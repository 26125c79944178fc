"""How the symbols of a message become its total score: the score table, or a learned combination.

`mode = "table"` (``[scoring]``): each symbol scores its table score (the check's default, the
rule's score, ``[scores]`` overrides) and the total is their sum -- SpamAssassin's way, with
hand-set scores.

`mode = "learned"`: the scores are the weights of a logistic regression fitted on labelled mail
(`filterctl rules fit`, `filterd.combination_fit`), shipped as data in ``models/scores.json``.
The model sees each fitted symbol as hit (1) or not (0) and the Bayes spamicity p as its log-odds:

    z = intercept + sum(weight[s] for each fitted symbol s hit) + bayes_weight * logit(p)

    P(spam) = 1 / (1 + exp(-z))

and the total is z mapped onto the score scale the action thresholds use, by the straight line
fixed when the model was fitted: z at the chosen P(spam) of add_header lands on 5 (the default
add_header threshold) and z at the chosen P(spam) of reject on 15 (the default reject):

    total = offset + scale * z

Every verdict stays explained: each fitted symbol shows `scale * weight`, the Bayes symbol shows
`scale * bayes_weight * logit(p)`, and the model's starting point, `offset + scale * intercept`
(what a message with no fitted symbol and p = 0.5 scores), shows as the symbol LEARNED_BASE; the
symbols add up to the total.  Symbols the model was not fitted on -- SPF, DKIM, DMARC, antivirus,
lists, anything a stored corpus cannot reproduce, and rules that never hit its mail -- keep their
table score: the model has no evidence about them, the table's author does.

Without a spamicity (bayes off, or untrained), the model's `without_bayes` weights apply: a fit
of the same mail without the Bayes feature, so the rules' weights are not the ones that leaned on
the classifier.  This module is pure: no I/O beyond reading the model file once.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from filterd.datafiles import shipped
from filterd.results import Finding
from filterd.settings import ConfigError, setting

FORMAT = "filterd-combination/1"
BASE_SYMBOL = "LEARNED_BASE"
# The symbols of the Bayes check that carry the spamicity (as `Finding.value`).
BAYES_PREFIX = "BAYES_"
# The spamicity's log-odds are clipped to +-BAYES_CLIP (fitted models record theirs).  The chi-square
# classifier puts most messages within 1e-8 of 0 or 1 (|logit| up to 20): unclipped, its rare
# confident mistakes outweigh every rule.  Measured on the four fit/test runs of docs/scoring.md:
# clip 25 / 8 / 4 gave (1-ROCA)% 1.89 / 1.78 / 1.31 SA->CSDMC and 0.033 / 0.029 / 0.027 on SA's
# hash halves (CSDMC->SA, where the classifier trained on 2,000 messages is poor, went the other
# way: 8.3 / 8.4 / 10.0).
BAYES_CLIP = 4.0


@dataclass(frozen=True)
class ScoringSettings:
    mode: Literal["table", "learned"] = setting(
        "table",
        '"table": a message scores the sum of its symbols\' table scores; "learned": the '
        "combination fitted on labelled mail in `model` (docs/scoring.md)",
    )
    model: str = setting(
        "",
        "the learned combination (JSON, from `filterctl rules fit`); empty: the one shipped in "
        "models/scores.json",
    )


def shipped_model() -> Path:
    """``models/scores.json`` beside the package in a source checkout, else where the wheel puts
    it (``<prefix>/share/filterd/models``, as the rule files)."""
    return shipped("models/scores.json")


@dataclass(frozen=True)
class Weights:
    """One fitted variant: log-odds per hit symbol, of the Bayes logit, and the intercept."""

    intercept: float
    symbols: Mapping[str, float]
    bayes: float  # 0.0 in the variant fitted without the classifier


@dataclass(frozen=True)
class LearnedModel:
    with_bayes: Weights
    without_bayes: Weights
    offset: float  # total = offset + scale * z
    scale: float
    bayes_clip: float  # the spamicity's log-odds are clipped to +-this
    meta: Mapping[str, Any]

    def probability(self, total: float) -> float:
        """P(spam) the model gives a message of this total (fitted symbols only)."""
        z = (total - self.offset) / self.scale
        return 1.0 / (1.0 + math.exp(-max(-700.0, min(700.0, z))))


class ModelFileError(ValueError):
    """The learned-combination file is missing, not JSON, or not a model of this format."""


def load_model(path: Path) -> LearnedModel:
    """Read and validate a model file; every problem raises `ModelFileError` naming it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ModelFileError(f"cannot read {path}: {exc.strerror}") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{path}: not JSON: {exc}") from exc
    try:
        return model_from_dict(data)
    except ModelFileError as exc:
        raise ModelFileError(f"{path}: {exc}") from exc


def model_from_dict(data: Any) -> LearnedModel:
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ModelFileError(f'not a learned combination (expected "format": "{FORMAT}")')
    scale, offset = _number(data, "scale"), _number(data, "offset")
    if scale <= 0:
        raise ModelFileError("scale must be greater than zero (a higher log-odds must score higher)")
    meta = data.get("meta", {})
    if not isinstance(meta, dict):
        raise ModelFileError("meta must be a table")
    clip = _number(data, "bayes_clip")
    if clip <= 0:
        raise ModelFileError("bayes_clip must be greater than zero")
    return LearnedModel(
        _weights(data, "with_bayes"), _weights(data, "without_bayes"), offset, scale, clip, meta
    )


def _weights(data: dict[str, Any], key: str) -> Weights:
    part = data.get(key)
    if not isinstance(part, dict):
        raise ModelFileError(f"{key} is missing")
    symbols = part.get("symbols")
    if not isinstance(symbols, dict):
        raise ModelFileError(f"{key}.symbols must be a table of SYMBOL: weight")
    checked = {}
    for name in symbols:
        if not isinstance(name, str) or not name or name.startswith(BAYES_PREFIX) or name == BASE_SYMBOL:
            raise ModelFileError(f"{key}.symbols: {name!r} cannot be a fitted symbol")
        checked[name] = _number(symbols, name, f"{key}.symbols.")
    return Weights(_number(part, "intercept", f"{key}."), checked, _number(part, "bayes", f"{key}."))


def _number(data: Mapping[str, Any], key: str, where: str = "") -> float:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ModelFileError(f"{where}{key} must be a finite number, not {value!r}")
    return float(value)


def logit(p: float, clip: float) -> float:
    """log(p / (1 - p)), clipped to +-clip (p of exactly 0 or 1 included)."""
    if p <= 0.0:
        return -clip
    if p >= 1.0:
        return clip
    return max(-clip, min(clip, math.log(p) - math.log1p(-p)))


def spamicity_of(findings: Sequence[Finding]) -> float | None:
    """The Bayes spamicity the classifier reported, if it scored this message."""
    for f in findings:
        if f.symbol.startswith(BAYES_PREFIX) and f.value is not None:
            return f.value
    return None


@dataclass(frozen=True)
class Scored:
    """The findings' contributions to the total (aligned with them), plus any base line."""

    contributions: list[float]
    base: float | None  # the learned model's starting point; None in table mode
    total: float


def learned_scores(model: LearnedModel, findings: Sequence[Finding], table: Sequence[float]) -> Scored:
    """Each finding's contribution under `model`; `table` holds their table scores (aligned)."""
    p = spamicity_of(findings)
    weights = model.with_bayes if p is not None else model.without_bayes
    out: list[float] = []
    seen: set[str] = set()
    for f, table_score in zip(findings, table, strict=True):
        if f.symbol in weights.symbols:
            # a symbol counts once, as it was fitted (hit or not), however many findings name it
            out.append(0.0 if f.symbol in seen else model.scale * weights.symbols[f.symbol])
            seen.add(f.symbol)
        elif p is not None and f.symbol.startswith(BAYES_PREFIX) and f.value is not None:
            out.append(model.scale * weights.bayes * logit(p, model.bayes_clip))
        else:
            out.append(table_score)
    out = [round(c, 3) for c in out]
    base = round(model.offset + model.scale * weights.intercept, 3)
    return Scored(out, base, round(base + sum(out), 3))


def table_scores(table: Sequence[float]) -> Scored:
    out = [round(c, 3) for c in table]
    return Scored(out, None, round(sum(out), 3))


class Combination:
    """Built once per pipeline from ``[scoring]``: the mode and, when learned, its model."""

    def __init__(self, settings: ScoringSettings) -> None:
        self.model: LearnedModel | None = None
        if settings.mode == "learned":
            path = Path(settings.model) if settings.model else shipped_model()
            try:
                self.model = load_model(path)
            except ModelFileError as exc:
                raise ConfigError("scoring.model", str(exc)) from exc

    def score(self, findings: Sequence[Finding], table: Sequence[float]) -> Scored:
        if self.model is None:
            return table_scores(table)
        return learned_scores(self.model, findings, table)

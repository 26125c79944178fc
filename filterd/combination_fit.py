"""Fit the learned combination on labelled mail, and measure it beside the table and Bayes alone.

The fit (`fit_model`) is a logistic regression (scikit-learn) of "is spam" on one column per
symbol (hit or not) and the Bayes spamicity's log-odds, L2-regularised with the strength chosen by
5-fold cross-validation on the fitting mail (log-loss): a symbol that hits a handful of messages
gets the small weight its few hits support, never a weight that decides alone.  It is fitted twice,
with and without the Bayes column (`filterd.combination` picks the variant by whether a spamicity
is known).

The spamicity a message gets in the fit comes from a Bayes model that never saw it: the fitting
mail is cut into `FOLDS` parts by a hash of the file name, and each part is scored by a model
trained on the others (stacking).  Trained on its own messages the classifier is nearly always
right, and the regression would learn to trust it far more than it deserves on new mail.

The log-odds z go onto the score scale by the line that puts P(spam) = `P_ADD_HEADER` at the
default add_header threshold (5) and `P_REJECT` at the default reject threshold (15); see
docs/scoring.md for how they were chosen.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from filterd.combination import (
    BAYES_CLIP,
    BAYES_PREFIX,
    FORMAT,
    LearnedModel,
    learned_scores,
    logit,
    model_from_dict,
)
from filterd.config import ActionSettings
from filterd.results import Finding
from filterd.symbolvectors import Vector

FOLDS = 5
# Symbols about filterd's own run, not about the message: never fitted.
NOT_FITTED = frozenset({"CHECK_ERROR", "TIME_BUDGET", "TIME_BUDGET_SKIPPED", "INTERNAL_ERROR"})
P_ADD_HEADER = 0.9
P_REJECT = 0.99999
C_GRID = (0.03, 0.1, 0.3, 1.0, 3.0)
TRADEOFF_PROBABILITIES = (0.5, 0.7, 0.9, 0.99, 0.999)


# -- the Bayes spamicity, from models that never saw the message ----------------------------------


def spamicities(train: Sequence[Vector], test: Sequence[Vector]) -> np.ndarray:
    """Train a fresh classifier on `train`, return the spamicity of each message of `test`."""
    from filterd.bayes.model import Model

    model = Model.empty()
    for v in train:
        assert v.buckets is not None
        model.train(hashlib.sha256(v.file.encode()).digest(), v.buckets, "spam" if v.spam else "ham")
    out = np.empty(len(test))
    for i, v in enumerate(test):
        assert v.buckets is not None
        out[i] = model.classify_tokens([""] * len(v.buckets), v.buckets).spamicity
    return out


def fold_of(v: Vector, salt: str = "fold") -> int:
    return hashlib.sha256(f"{salt}:{v.file}".encode()).digest()[0] % FOLDS


def cross_fitted_spamicities(vectors: Sequence[Vector]) -> np.ndarray:
    """Each message's spamicity from a model trained on the other folds only."""
    out = np.empty(len(vectors))
    folds = np.array([fold_of(v) for v in vectors])
    for k in range(FOLDS):
        inside = np.flatnonzero(folds == k)
        train = [v for v, f in zip(vectors, folds, strict=True) if f != k]
        out[inside] = spamicities(train, [vectors[int(i)] for i in inside])
    return out


# -- the fit ----------------------------------------------------------------------------------------


def fitted_symbols(vectors: Sequence[Vector]) -> list[str]:
    names = {s for v in vectors for s in v.symbols}
    return sorted(n for n in names if n not in NOT_FITTED and not n.startswith(BAYES_PREFIX))


def design(vectors: Sequence[Vector], symbols: Sequence[str], p: np.ndarray | None) -> np.ndarray:
    index = {s: j for j, s in enumerate(symbols)}
    x = np.zeros((len(vectors), len(symbols) + (p is not None)))
    for i, v in enumerate(vectors):
        for s in v.symbols:
            j = index.get(s)
            if j is not None:
                x[i, j] = 1.0
    if p is not None:
        x[:, -1] = [logit(float(q), BAYES_CLIP) for q in p]
    return x


Bounds = list[tuple[float | None, float | None]]


def bayes_weight_max(bands: Sequence[Sequence[float]], scale: float) -> float:
    """The most the Bayes weight may be: the classifier alone, at its clipped log-odds, may move the
    total no further than the highest band of the score table lets it (+4.5 by default, so
    4.5 / (1.07 x 4) = 1.05).  The fit cannot learn this limit itself: its spamicities come from
    classifiers trained on the same kind of mail they score, where the classifier is nearly always
    right (fitted on CSDMC2010 alone, its weight came out at 2.8, and 10% of the SpamAssassin
    corpus's ham was then tagged); on a site whose mail is unlike the training mail it is not.  The
    table's author put the same limit on it for the same reason."""
    return max(score for _, score in bands) / (scale * BAYES_CLIP)


def sign_bounds(vectors: Sequence[Vector], symbols: Sequence[str], bayes_max: float | None) -> Bounds:
    """Each weight keeps the sign of the symbol's table score (free when that is 0); the Bayes
    weight (when `bayes_max` is given) lies between 0 and it.  SpamAssassin's perceptron keeps its rules' signs the same way: a rule
    written to catch spam must not end up rewarding a message because, in the fitting mail, it
    happened to fire with stronger rules (BULK_UNSUB_ADDRESS and BULK_NO_LONGER_WISH came out at
    -1.1 and -1.2 unconstrained, fitted on SpamAssassin mail)."""
    table: dict[str, float] = {}
    for v in vectors:
        for s, score in v.symbols.items():
            table.setdefault(s, score)
    bounds: Bounds = []
    for s in symbols:
        score = table.get(s, 0.0)
        bounds.append((0.0, None) if score > 0 else (None, 0.0) if score < 0 else (None, None))
    if bayes_max is not None:
        bounds.append((0.0, bayes_max))
    return bounds


def logistic_l2(x: np.ndarray, y: np.ndarray, c: float, bounds: Bounds) -> tuple[float, np.ndarray]:
    """Minimise  sum(log-loss) + |w|^2 / (2c)  within the bounds (the intercept is free and not
    penalised): scikit-learn's LogisticRegression(C=c), with sign bounds it does not offer."""
    from scipy.optimize import minimize
    from scipy.special import expit

    t = y.astype(float)

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        b, w = theta[0], theta[1:]
        z = b + x @ w
        err = expit(z) - t
        loss = float(np.logaddexp(0.0, z).sum() - t @ z + w @ w / (2 * c))
        return loss, np.concatenate([[err.sum()], x.T @ err + w / c])

    start = np.zeros(x.shape[1] + 1)
    result = minimize(objective, start, jac=True, method="L-BFGS-B", bounds=[(None, None), *bounds])
    return float(result.x[0]), result.x[1:]


def _fit(x: np.ndarray, y: np.ndarray, bounds: Bounds) -> tuple[float, np.ndarray, float]:
    """The L2 strength with the best 5-fold log-loss on (x, y), then the fit on all of it."""
    from scipy.special import expit
    from sklearn.model_selection import StratifiedKFold

    folds = list(StratifiedKFold(n_splits=5, shuffle=True, random_state=0).split(x, y))
    losses = {}
    for c in C_GRID:
        total = 0.0
        for train, test in folds:
            b, w = logistic_l2(x[train], y[train], c, bounds)
            q = np.clip(expit(b + x[test] @ w), 1e-15, 1 - 1e-15)
            total -= float(np.where(y[test], np.log(q), np.log1p(-q)).sum())
        losses[c] = total
    c = min(C_GRID, key=lambda k: losses[k])
    b, w = logistic_l2(x, y, c, bounds)
    return b, w, c


def fit_model(
    vectors: Sequence[Vector], p: np.ndarray, bands: Sequence[Sequence[float]], source: str = ""
) -> dict[str, Any]:
    """The model file's content (see filterd.combination) fitted on `vectors` with spamicities `p`
    (which must come from classifiers that did not see the message: `cross_fitted_spamicities`);
    `bands` are the Bayes check's table bands, which bound the Bayes weight (`bayes_weight_max`)."""
    y = np.array([v.spam for v in vectors])
    if y.all() or not y.any():
        raise ValueError("the fitting mail needs both spam and ham")
    defaults = ActionSettings()
    z_add, z_reject = logit(P_ADD_HEADER, math.inf), logit(P_REJECT, math.inf)
    scale = (defaults.reject - defaults.add_header) / (z_reject - z_add)
    offset = defaults.add_header - scale * z_add
    bayes_max = bayes_weight_max(bands, scale)
    symbols = fitted_symbols(vectors)
    b0, w0, c0 = _fit(design(vectors, symbols, p), y, sign_bounds(vectors, symbols, bayes_max))
    b1, w1, c1 = _fit(design(vectors, symbols, None), y, sign_bounds(vectors, symbols, None))
    return {
        "format": FORMAT,
        "offset": round(offset, 6),
        "scale": round(scale, 6),
        "bayes_clip": BAYES_CLIP,
        "with_bayes": {
            "intercept": round(b0, 6),
            "bayes": round(float(w0[-1]), 6),
            "symbols": {s: round(float(w), 6) for s, w in zip(symbols, w0[:-1], strict=True)},
        },
        "without_bayes": {
            "intercept": round(b1, 6),
            "bayes": 0.0,
            "symbols": {s: round(float(w), 6) for s, w in zip(symbols, w1, strict=True)},
        },
        "meta": {
            "fitted_on": source,
            "spam": int(y.sum()),
            "ham": int((~y).sum()),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "l2_C": {"with_bayes": c0, "without_bayes": c1},
            "bayes_weight_max": round(bayes_max, 6),
            "p_add_header": P_ADD_HEADER,
            "p_reject": P_REJECT,
            "hits": {s: sum(1 for v in vectors if s in v.symbols) for s in symbols},
        },
    }


def fit(vectors: Sequence[Vector], bands: Sequence[Sequence[float]], source: str = "") -> dict[str, Any]:
    """Fit on labelled mail: cross-fitted spamicities, then the regression."""
    return fit_model(vectors, cross_fitted_spamicities(vectors), bands, source)


# -- totals ------------------------------------------------------------------------------------------


def band_score(p: float, bands: Sequence[Sequence[float]]) -> float:
    return next(score for low, score in reversed(bands) if p >= low)


def _bayes_symbol(p: float, cutoffs: tuple[float, float]) -> str:
    ham_cutoff, spam_cutoff = cutoffs
    return "BAYES_SPAM" if p >= spam_cutoff else "BAYES_HAM" if p < ham_cutoff else "BAYES_UNSURE"


def table_totals(
    vectors: Sequence[Vector],
    p: np.ndarray | None,
    bands: Sequence[Sequence[float]],
) -> np.ndarray:
    """Today's total: the symbols' table scores plus the Bayes band of the spamicity (if given)."""
    totals = np.array([sum(v.symbols.values()) for v in vectors])
    if p is not None:
        totals = totals + np.array([band_score(float(q), bands) for q in p])
    return totals


def learned_totals(
    model: LearnedModel,
    vectors: Sequence[Vector],
    p: np.ndarray | None,
    bands: Sequence[Sequence[float]],
    cutoffs: tuple[float, float] = (0.45, 0.99),
) -> np.ndarray:
    """The total filterd computes at run time (`filterd.combination`, the same code) per message."""
    out = np.empty(len(vectors))
    for i, v in enumerate(vectors):
        findings = [Finding(s, "") for s in v.symbols]
        table = list(v.symbols.values())
        if p is not None:
            q = float(p[i])
            findings.append(Finding(_bayes_symbol(q, cutoffs), "", value=q))
            table.append(band_score(q, bands))
        out[i] = learned_scores(model, findings, table).total
    return out


# -- figures -----------------------------------------------------------------------------------------


def ranking(y: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """(1-ROCA)% and the spam missed (%) at the best threshold flagging at most 0.1% of ham:
    the definitions of filterd.bayes.evaluate, computed the same way for every score compared."""
    from sklearn.metrics import roc_auc_score, roc_curve

    fpr, tpr, _ = roc_curve(y, scores)
    return {
        "roca": 100.0 * (1.0 - float(roc_auc_score(y, scores))),
        "fn_at_fp": 100.0 * (1.0 - float(tpr[fpr <= 0.001].max())),
    }


def flag_rates(y: np.ndarray, totals: np.ndarray, actions: ActionSettings) -> dict[str, float]:
    """Shares (%) at the thresholds: ham flagged (>= add_header), spam flagged and spam rejected."""
    ham, spam = totals[~y], totals[y]
    return {
        "ham_flagged": 100.0 * float((ham >= actions.add_header).mean()),
        "ham_rejected": 100.0 * float((ham >= actions.reject).mean()),
        "spam_flagged": 100.0 * float((spam >= actions.add_header).mean()),
        "spam_rejected": 100.0 * float((spam >= actions.reject).mean()),
    }


@dataclass
class Scenario:
    """One fit-then-test run: what was fitted on, what was scored, and the three rankings."""

    name: str
    n_fit: int
    n_test: int
    figures: dict[str, dict[str, float]]  # scorer -> ranking
    flags: dict[str, dict[str, float]]  # scorer -> flag rates at the default thresholds
    # learned total: (P(spam) at add_header, % ham flagged, % spam flagged), were it set there
    tradeoff: list[tuple[float, float, float]]


def run_scenario(
    name: str,
    fit_on: Sequence[Vector],
    test: Sequence[Vector],
    bands: Sequence[Sequence[float]],
    source: str = "",
) -> tuple[Scenario, dict[str, Any]]:
    """Fit everything (Bayes, the combination) on `fit_on` only; score `test` three ways."""
    model_data = fit(fit_on, bands, source)
    model = model_from_dict(model_data)
    p = spamicities(fit_on, test)
    y = np.array([v.spam for v in test])
    totals = {
        "table total (hand-set, Bayes bands; the default)": table_totals(test, p, bands),
        "learned total": learned_totals(model, test, p, bands),
        "Bayes spamicity alone": p,
        "table total, Bayes off": table_totals(test, None, bands),
        "learned total, Bayes off": learned_totals(model, test, None, bands),
    }
    actions = ActionSettings()
    figures = {k: ranking(y, t) for k, t in totals.items()}
    flags = {k: flag_rates(y, t, actions) for k, t in totals.items() if k != "Bayes spamicity alone"}
    z = (totals["learned total"] - model.offset) / model.scale
    tradeoff = []
    for q in TRADEOFF_PROBABILITIES:
        flagged = z >= logit(q, math.inf)
        tradeoff.append((q, 100.0 * float(flagged[~y].mean()), 100.0 * float(flagged[y].mean())))
    return Scenario(name, len(fit_on), len(test), figures, flags, tradeoff), model_data

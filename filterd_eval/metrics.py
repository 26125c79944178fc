"""The figures, computed by the same code for every filter (scikit-learn's ROC functions).

(1-ROCA)%     100 x the area above the ROC curve: the chance that a random spam scores below a
              random ham, in percent (TREC's headline figure; lower is better)
FN@FP<=0.1%   the share of spam missed at the strictest threshold that flags at most 0.1% of ham
ham>=cut      the share of ham at or above the spam cutoff (0.99 for a spamicity)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve


@dataclass(frozen=True)
class Figures:
    roca: float  # (1-ROCA)%
    fn_at_fp: float  # % of spam missed at <= 0.1% ham flagged
    ham_flagged: float  # % of ham at or above the cutoff
    spam_missed: float  # % of spam below the cutoff
    nham: int
    nspam: int


def figures(y: np.ndarray, scores: np.ndarray, cutoff: float) -> Figures:
    """`y` True for spam; `scores` higher for spam."""
    y = np.asarray(y, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    nham, nspam = int((~y).sum()), int(y.sum())
    flagged = scores >= cutoff
    roca = fn_at_fp = float("nan")  # no ROC with one class only
    if nham and nspam:
        fpr, tpr, _ = roc_curve(y, scores)
        roca = 100.0 * (1.0 - float(roc_auc_score(y, scores)))
        fn_at_fp = 100.0 * (1.0 - float(tpr[fpr <= 0.001].max()))
    return Figures(
        roca=roca,
        fn_at_fp=fn_at_fp,
        ham_flagged=100.0 * float((flagged & ~y).sum()) / max(nham, 1),
        spam_missed=100.0 * float((~flagged & y).sum()) / max(nspam, 1),
        nham=nham,
        nspam=nspam,
    )

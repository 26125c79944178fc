"""Fit rule scores on half a labelled corpus and check them on the other half.

How the shipped scores were set (docs/rules.md, "How the scores were set"): every rule's hits are
counted on the first half of the corpus (every second file); a logistic model of "spam at score >=
threshold" is fitted by L-BFGS-B with ham weighted --ham-weight times and an L2 penalty, each
rule's score bounded by how often it hits ham (the caps below); rules with fewer than 5 hits keep
their current score, and rules that hit no ham get at least --floor.  Printed: per rule the hits, the cap, the current and the fitted score; then
spam caught and ham flagged on both halves with the current scores and with the fitted ones.

    python bench/rules_scores.py [--corpus DIR] [--ham-weight 6] [--l2 2] [--floor 1]

The corpus defaults to $FILTERD_CORPUS/spamassassin-public.  Needs numpy and scipy (dev only).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
from scipy.optimize import minimize

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from filterd.config import known_symbols  # noqa: E402
from filterd.message import Message  # noqa: E402
from filterd.rules import load_rule_set  # noqa: E402

THRESHOLD = 5.0


def cap(ham_rate: float) -> float:
    """The highest score a rule may have given its ham hit rate (docs/rules.md)."""
    if ham_rate <= 0.001:
        return 3.0
    if ham_rate <= 0.005:
        return 1.5
    if ham_rate <= 0.01:
        return 1.0
    if ham_rate <= 0.03:
        return 0.5
    return 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = (
        Path(os.environ.get("FILTERD_CORPUS", ROOT.parent / "shared" / "corpus")) / "spamassassin-public"
    )
    ap.add_argument("--corpus", type=Path, default=default, help="a directory with spam/ and ham/")
    ap.add_argument("--ham-weight", type=float, default=6.0)
    ap.add_argument("--l2", type=float, default=2.0)
    ap.add_argument(
        "--floor",
        type=float,
        default=1.0,
        help="lowest score of a rule that hits no ham (and at least 5 spam) on the fitting half",
    )
    args = ap.parse_args()

    rules = load_rule_set(reserved=known_symbols())
    names = [r.name for r in rules.all if not r.hidden and r.enabled]
    index = {n: i for i, n in enumerate(names)}
    current = np.array([rules.by_name[n].score for n in names])
    rows: list[tuple[int, int, np.ndarray]] = []  # (fold, is_spam, hit vector)
    for label in ("spam", "ham"):
        files = sorted(p for p in (args.corpus / label).iterdir() if p.is_file())
        for i, path in enumerate(files):
            x = np.zeros(len(names))
            for r in rules.match(Message(path.read_bytes())):
                if r.name in index:
                    x[index[r.name]] = 1
            rows.append((i % 2, int(label == "spam"), x))

    def half(fold: int) -> tuple[np.ndarray, np.ndarray]:
        chosen = [(y, x) for f, y, x in rows if f == fold]
        return np.array([x for _, x in chosen]), np.array([y for y, _ in chosen])

    x0, y0 = half(0)
    x1, y1 = half(1)
    spam_hits, ham_hits = x0[y0 == 1].sum(0), x0[y0 == 0].sum(0)
    n_ham = int((y0 == 0).sum())
    caps = np.array([cap(h / n_ham) for h in ham_hits])
    fixed = (spam_hits + ham_hits < 5) | (current >= 100)  # too few hits to measure; GTUBE
    weight = np.where(y0 == 1, 1.0, args.ham_weight)

    def loss(p: np.ndarray) -> tuple[float, np.ndarray]:
        s, a = p[:-1], p[-1]
        margin = x0 @ s - THRESHOLD
        z = a * margin
        per = np.where(y0 == 1, np.logaddexp(0, -z), np.logaddexp(0, z))
        sig = 1 / (1 + np.exp(-z))
        dz = np.where(y0 == 1, sig - 1, sig) * weight
        grad_s = a * (x0.T @ dz) + 2 * args.l2 * s
        return float((weight * per).sum() + args.l2 * (s**2).sum()), np.append(grad_s, (dz * margin).sum())

    bounds = [(c, c) if f else (0.0, m) for c, f, m in zip(current, fixed, caps, strict=True)] + [(0.1, 10)]
    start = np.append(np.where(fixed, current, np.minimum(caps, 1.0)), 1.0)
    fitted = np.round(minimize(loss, start, jac=True, bounds=bounds, method="L-BFGS-B").x[:-1], 1)
    # The fit gives little weight to a rule that always fires together with others in this corpus
    # (the advance-fee metas do); a rule that never hit ham keeps at least --floor, so that it
    # still counts when it fires alone on mail unlike the corpus's.
    clean = (ham_hits == 0) & (spam_hits >= 5) & ~fixed
    fitted[clean] = np.maximum(fitted[clean], args.floor)

    print(f"{'RULE':<32} {'SPAM':>5} {'HAM':>4} {'CAP':>4} {'NOW':>6} {'FIT':>5}")
    for i, n in enumerate(names):
        mark = "  (kept: too few hits)" if fixed[i] and current[i] < 100 else ""
        print(
            f"{n:<32} {int(spam_hits[i]):5d} {int(ham_hits[i]):4d} {caps[i]:4.1f} {current[i]:6.2f} "
            f"{fitted[i]:5.1f}{mark}"
        )
    print()
    for label, scores in (("current scores", current), ("fitted scores", fitted)):
        for fold, (x, y) in enumerate(((x0, y0), (x1, y1))):
            total = x @ scores
            caught = int((total[y == 1] >= THRESHOLD).sum())
            flagged = int((total[y == 0] >= THRESHOLD).sum())
            role = "fitted on" if fold == 0 else "held out"
            print(
                f"{label:<15} half {fold} ({role}): spam caught {caught}/{int((y == 1).sum())} "
                f"({caught / max(1, (y == 1).sum()):.1%}), ham flagged {flagged}/{int((y == 0).sum())} "
                f"({flagged / max(1, (y == 0).sum()):.2%})"
            )


if __name__ == "__main__":
    main()

"""The runs of an evaluation, each a train set and a test set (or a stream) of labelled items.

    hash      each corpus in halves by sha1(file name) mod 2: train on the even half, test the odd
    hash-swap the same halves the other way round: for tuning, so a choice is never made looking at
              the half `hash` reports
    chrono    each corpus in Date (or file) order: train on the first half, test the second -- the
              future is not like the past, and this is what a filter meets
    online    each corpus in order, in batches: score `batch` messages, then train them (TREC's
              online run with delayed feedback)
    cross     train on all of corpus A, test on all of corpus B, for every ordered pair: mail from
              another source and year, the figure that says whether a model generalises

Every learner is made fresh for each run (`LearnerFactory`), and every learner sees exactly the
same items in the same order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from filterd_eval.corpus import Item, in_order, in_second_half
from filterd_eval.learners import Learner
from filterd_eval.metrics import Figures, figures

RUNS = ("hash", "hash-swap", "chrono", "online", "cross")
DEFAULT_RUNS = ("hash", "chrono", "online", "cross")
LearnerFactory = Callable[[], Learner]


@dataclass(frozen=True)
class Row:
    run: str
    data: str  # "SA", or "SA->CSDMC"
    filter: str
    figures: Figures
    train_rate: float  # messages per CPU second
    score_rate: float
    y: np.ndarray
    scores: np.ndarray


def _rates(learner: Learner) -> tuple[float, float]:
    return (
        learner.trained / learner.train_cpu if learner.train_cpu > 0 else float("nan"),
        learner.scored / learner.score_cpu if learner.score_cpu > 0 else float("nan"),
    )


def train_test(learner: Learner, train: Sequence[Item], test: Sequence[Item]) -> np.ndarray:
    learner.train(train)
    return learner.score(test)


def online(learner: Learner, items: Sequence[Item], batch: int) -> np.ndarray:
    scores = np.empty(len(items))
    for start in range(0, len(items), batch):
        chunk = items[start : start + batch]
        scores[start : start + len(chunk)] = learner.score(chunk)
        learner.train(chunk)
    return scores


@dataclass(frozen=True)
class Plan:
    """One run on one data set: what to train and test (or stream)."""

    run: str
    data: str
    train: Sequence[Item]
    test: Sequence[Item]  # for online: the stream


def plans(
    corpora: dict[str, list[Item]], runs: Sequence[str], order: str = "date", splits: int = 1
) -> list[Plan]:
    """The plans of `runs`; `hash` and `hash-swap` on `splits` different hash splits (the first is
    sha1(file name) mod 2; the others are labelled "SA#2", "SA#3"...)."""
    out: list[Plan] = []
    for run in runs:
        if run == "cross":
            for a, items_a in corpora.items():
                for b, items_b in corpora.items():
                    if a != b:
                        out.append(Plan(run, f"{a}->{b}", in_order(items_a, order), in_order(items_b, order)))
            continue
        for name, items in corpora.items():
            if run in ("hash", "hash-swap"):
                for salt in range(splits):
                    first = [i for i in items if not in_second_half(i, salt)]
                    second = [i for i in items if in_second_half(i, salt)]
                    train, test = (first, second) if run == "hash" else (second, first)
                    out.append(Plan(run, name if salt == 0 else f"{name}#{salt + 1}", train, test))
            elif run == "chrono":
                ordered = in_order(items, order)
                half = len(ordered) // 2
                out.append(Plan(run, name, ordered[:half], ordered[half:]))
            elif run == "online":
                out.append(Plan(run, name, [], in_order(items, order)))
            else:
                raise ValueError(f"unknown run {run!r} (one of {', '.join(RUNS)})")
    return out


def execute(
    plan: Plan,
    factory: LearnerFactory,
    cutoff: float,
    batch: int = 200,
) -> Row:
    learner = factory()
    try:
        if plan.run == "online":
            scores = online(learner, plan.test, batch)
        else:
            scores = train_test(learner, plan.train, plan.test)
        train_rate, score_rate = _rates(learner)
        name = learner.name
    finally:
        learner.close()
    y = np.array([i.is_spam for i in plan.test], dtype=bool)
    return Row(plan.run, plan.data, name, figures(y, scores, cutoff), train_rate, score_rate, y, scores)


def evaluate(
    corpora: dict[str, list[Item]],
    factories: Sequence[LearnerFactory],
    runs: Sequence[str] = DEFAULT_RUNS,
    cutoff: float = 0.99,
    batch: int = 200,
    order: str = "date",
    say: Callable[[str], None] = lambda line: None,
    splits: int = 1,
) -> list[Row]:
    """Every run of `runs` on every corpus (and pair of corpora), for every learner."""
    rows = []
    for plan in plans(corpora, runs, order, splits):
        for factory in factories:
            row = execute(plan, factory, cutoff, batch)
            say(f"{row.run} {row.data} {row.filter}: (1-ROCA)% {row.figures.roca:.4f}")
            rows.append(row)
    return rows

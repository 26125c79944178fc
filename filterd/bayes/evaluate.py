"""Measure the classifier on a labelled corpus, beside bogofilter on the same messages.

Two runs, the ones spam-filter papers use:

(a) split: a fixed half/half split -- a message is in the test half when the first byte of the
    SHA-256 of its file name is odd -- train on one half, score the other.  Fixed, so two runs (or
    two filters) see exactly the same halves.
(b) online: TREC style -- messages in date order (manifest.csv's date_utc), each one classified
    and then trained with its true label, as a filter meets mail in production.  `online_batch`
    > 1 classifies that many before training them (faster, and it is how feedback arrives late).

Figures, from the scores of the test messages (scikit-learn's `roc_auc_score` and `roc_curve`):

    (1-ROCA)%     100 x the area above the ROC curve: the chance that a random spam scores below a
                  random ham, in percent (TREC's headline figure; lower is better)
    FN@FP<=0.1%   the share of spam missed at the threshold where at most 0.1% of ham is flagged
    FP, FN        at the configured cutoffs: ham at or above spam_cutoff; spam below spam_cutoff
                  (of which "unsure" the part at or above ham_cutoff)
    msgs/s        classify: parse + tokenize + score one message at a time; train: parse +
                  tokenize + count (filterd in one process; bogofilter in bulk mode -B).  Counted
                  in CPU seconds (this process's, or bogofilter's as a child), so a machine shared
                  with other work gives the same figure: "msgs/s on one core"

bogofilter runs with its own word list in a temporary directory (-d), trained with -s / -n and
scored with -T, with the same cutoffs (-o).
"""

from __future__ import annotations

import csv
import hashlib
import os
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from filterd.bayes.model import HAM, SPAM, Model, message_digest
from filterd.bayes.params import Params
from filterd.message import Message

ROOT = Path(__file__).resolve().parent.parent.parent


def cpu() -> float:
    """CPU seconds used by this process (filterd's work)."""
    return time.process_time()


def child_cpu() -> float:
    """CPU seconds used by finished child processes (bogofilter's work)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def default_corpus() -> Path:
    base = Path(os.environ.get("FILTERD_CORPUS", ROOT.parent / "shared" / "corpus"))
    return base / "spamassassin-public"


@dataclass(frozen=True)
class Item:
    path: Path
    label: str
    date: str

    @property
    def is_spam(self) -> bool:
        return self.label == SPAM


def load_corpus(corpus: Path, limit: int | None = None) -> list[Item]:
    with open(corpus / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    items = [Item(corpus / r["path"], r["label"], r.get("date_utc") or "") for r in rows]
    bad = [i for i in items if i.label not in (SPAM, HAM)]
    if bad:
        raise ValueError(f"{bad[0].path}: label {bad[0].label!r} is neither spam nor ham")
    if limit:
        # every k-th message rather than the first N: the manifest is sorted by class
        step = max(1, len(items) // limit)
        items = items[::step][:limit]
    return items


def in_test_half(item: Item) -> bool:
    return hashlib.sha256(item.path.name.encode()).digest()[0] & 1 == 1


def date_order(items: Sequence[Item]) -> list[Item]:
    """By date_utc, undated messages last; the file name breaks ties so the order is fixed."""
    return sorted(items, key=lambda i: (i.date == "", i.date, i.path.name))


@dataclass
class Scores:
    filter: str
    run: str
    y: np.ndarray  # True for spam
    scores: np.ndarray
    classify_rate: float  # msgs/s
    train_rate: float  # msgs/s
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class Report:
    corpus: Path
    spam_cutoff: float
    ham_cutoff: float
    results: list[Scores]
    plot: Path | None
    notes: list[str]


def metrics(y: np.ndarray, scores: np.ndarray, spam_cutoff: float, ham_cutoff: float) -> dict[str, float]:
    auc = roc_auc_score(y, scores)
    fpr, tpr, _ = roc_curve(y, scores)
    ok = fpr <= 0.001
    nham, nspam = int((~y).sum()), int(y.sum())
    flagged = scores >= spam_cutoff
    return {
        "roca": 100.0 * (1.0 - auc),
        "fn_at_fp": 100.0 * (1.0 - float(tpr[ok].max())),
        "fp": int((flagged & ~y).sum()),
        "fn": int((~flagged & y).sum()),
        "unsure_spam": int((~flagged & y & (scores >= ham_cutoff)).sum()),
        "unsure_ham": int((~flagged & ~y & (scores >= ham_cutoff)).sum()),
        "nham": nham,
        "nspam": nspam,
    }


# -- filterd ---------------------------------------------------------------------------------


def _features(model: Model, raw: bytes) -> tuple[bytes, Sequence[str], np.ndarray]:
    msg = Message(raw)
    tokens, buckets = model.features(msg)
    return message_digest(msg), tokens, buckets


def filterd_split(train: Sequence[Item], test: Sequence[Item], params: Params) -> Scores:
    model = Model.empty(params=params)
    raws = [i.path.read_bytes() for i in train]  # file reads are not what is measured
    started = cpu()
    for item, raw in zip(train, raws, strict=True):
        digest, _, buckets = _features(model, raw)
        model.train(digest, buckets, item.label)
    train_rate = len(train) / (cpu() - started)
    raws = [i.path.read_bytes() for i in test]
    started = cpu()
    scores = np.array([model.classify(Message(raw)).spamicity for raw in raws])
    classify_rate = len(test) / (cpu() - started)
    y = np.array([i.is_spam for i in test])
    return Scores("filterd", "split", y, scores, classify_rate, train_rate)


def filterd_online(items: Sequence[Item], params: Params, batch: int) -> Scores:
    """Classify, then train, each message (or each batch) in order.  Training parses and tokenizes
    the message again, as `filterctl train` would: each rate is what that step costs on its own."""
    model = Model.empty(params=params)
    scores = np.empty(len(items))
    classify_time = train_time = 0.0
    for start in range(0, len(items), batch):
        chunk = items[start : start + batch]
        raws = [i.path.read_bytes() for i in chunk]
        t0 = cpu()
        for k, raw in enumerate(raws):
            scores[start + k] = model.classify(Message(raw)).spamicity
        t1 = cpu()
        for item, raw in zip(chunk, raws, strict=True):
            digest, _, buckets = _features(model, raw)
            model.train(digest, buckets, item.label)
        classify_time += t1 - t0
        train_time += cpu() - t1
    y = np.array([i.is_spam for i in items])
    return Scores(
        "filterd",
        "online",
        y,
        scores,
        len(items) / max(classify_time, 1e-9),
        len(items) / max(train_time, 1e-9),
    )


# -- bogofilter ------------------------------------------------------------------------------


class Bogofilter:
    def __init__(self, spam_cutoff: float, ham_cutoff: float) -> None:
        exe = shutil.which("bogofilter")
        if exe is None:
            raise FileNotFoundError("bogofilter is not installed (apt-get install bogofilter)")
        self.exe = exe
        self.dir = tempfile.mkdtemp(prefix="filterd-eval-bogo-")
        self.base = [exe, "-C", "-d", self.dir, f"-o{spam_cutoff},{ham_cutoff}"]

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def train(self, items: Sequence[Item]) -> None:
        for label, flag in ((SPAM, "-s"), (HAM, "-n")):
            paths = [str(i.path) for i in items if i.label == label]
            for start in range(0, len(paths), 500):  # stay far below the argument-length limit
                subprocess.run([*self.base, flag, "-B", *paths[start : start + 500]], check=True)

    def score(self, items: Sequence[Item]) -> np.ndarray:
        out: dict[str, float] = {}
        paths = [str(i.path) for i in items]
        for start in range(0, len(paths), 500):
            proc = subprocess.run(
                [*self.base, "-T", "-B", *paths[start : start + 500]], capture_output=True, text=True
            )
            if proc.returncode == 3 and not out:  # no word list yet (nothing trained): all unsure
                return np.full(len(items), 0.5)
            for line in proc.stdout.splitlines():
                name, _, score = line.rsplit(" ", 2)
                out[name] = float(score)
        return np.array([out.get(str(i.path), 0.5) for i in items])


def bogofilter_split(train: Sequence[Item], test: Sequence[Item], bogo: Bogofilter) -> Scores:
    started = child_cpu()
    bogo.train(train)
    train_rate = len(train) / (child_cpu() - started)
    started = child_cpu()
    scores = bogo.score(test)
    classify_rate = len(test) / (child_cpu() - started)
    return Scores(
        "bogofilter", "split", np.array([i.is_spam for i in test]), scores, classify_rate, train_rate
    )


def bogofilter_online(items: Sequence[Item], bogo: Bogofilter, batch: int) -> Scores:
    scores = np.empty(len(items))
    classify_time = train_time = 0.0
    for start in range(0, len(items), batch):
        chunk = items[start : start + batch]
        t0 = child_cpu()
        scores[start : start + len(chunk)] = bogo.score(chunk)
        t1 = child_cpu()
        bogo.train(chunk)
        classify_time += t1 - t0
        train_time += child_cpu() - t1
    y = np.array([i.is_spam for i in items])
    return Scores(
        "bogofilter",
        "online",
        y,
        scores,
        len(items) / max(classify_time, 1e-9),
        len(items) / max(train_time, 1e-9),
    )


# -- the whole evaluation ----------------------------------------------------------------------


def run_eval(
    corpus: Path,
    params: Params,
    spam_cutoff: float,
    ham_cutoff: float,
    bogofilter: bool = True,
    runs: tuple[str, ...] = ("split", "online"),
    online_batch: int = 1,
    limit: int | None = None,
    plot: Path | None = None,
    say: Callable[[str], None] = lambda line: None,
) -> Report:
    items = load_corpus(corpus, limit)
    results: list[Scores] = []
    notes: list[str] = []
    train = [i for i in items if not in_test_half(i)]
    test = [i for i in items if in_test_half(i)]
    ordered = date_order(items)
    if "split" in runs:
        say(f"(a) split: filterd, training {len(train)} and scoring {len(test)} messages")
        results.append(filterd_split(train, test, params))
    if "online" in runs:
        say(f"(b) online: filterd, {len(ordered)} messages in date order")
        results.append(filterd_online(ordered, params, online_batch))
    if bogofilter:
        try:
            bogo_runs = []
            for run in runs:
                bogo = Bogofilter(spam_cutoff, ham_cutoff)  # a fresh word list per run
                try:
                    say(f"({'a' if run == 'split' else 'b'}) {run}: bogofilter")
                    if run == "split":
                        bogo_runs.append(bogofilter_split(train, test, bogo))
                    else:
                        bogo_runs.append(bogofilter_online(ordered, bogo, online_batch))
                finally:
                    bogo.close()
            results += bogo_runs
        except FileNotFoundError as exc:
            notes.append(f"bogofilter skipped: {exc}")
    for r in results:
        r.metrics = metrics(r.y, r.scores, spam_cutoff, ham_cutoff)
    if plot is not None and results:
        try:
            write_roc_plot(results, plot)
        except ImportError:
            notes.append("no ROC plot: matplotlib is not installed (pip install 'filterd[eval]')")
            plot = None
    return Report(corpus, spam_cutoff, ham_cutoff, results, plot, notes)


def write_roc_plot(results: Sequence[Scores], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len({r.run for r in results}), figsize=(11, 4.8), squeeze=False)
    for ax, run in zip(axes[0], sorted({r.run for r in results}, reverse=True), strict=True):
        for r in results:
            if r.run != run:
                continue
            fpr, tpr, _ = roc_curve(r.y, r.scores)
            label = f"{r.filter}: (1-ROCA)% {r.metrics['roca']:.3f}"
            # both axes in log: the interesting part is the corner below 1% FP; zero is drawn at 0.01
            ax.plot(
                np.maximum(fpr * 100, 0.01),
                np.maximum((1 - tpr) * 100, 0.01),
                label=label,
                drawstyle="steps-post",
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(0.01, 100)
        ax.set_ylim(0.01, 100)
        ax.axvline(0.1, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel("ham misclassified (FP %, log)")
        ax.set_ylabel("spam missed (FN %)")
        ax.set_title("(a) half/half split" if run == "split" else "(b) online, date order")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="lower left")
    fig.suptitle("ROC (error form; lower left is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(report: Report) -> str:
    lines = [
        f"corpus: {report.corpus}",
        f"cutoffs: spam >= {report.spam_cutoff}, ham < {report.ham_cutoff} (between: unsure)",
        "",
        f"{'run':<8} {'filter':<11} {'(1-ROCA)%':>10} {'FN@FP<=0.1%':>12} {'FP':>9} {'FN':>9} "
        f"{'(unsure)':>9} {'classify/s':>11} {'train/s':>9}   (msgs per CPU second)",
    ]
    for run in ("split", "online"):
        for r in report.results:
            if r.run != run:
                continue
            m = r.metrics
            lines.append(
                f"{run:<8} {r.filter:<11} {m['roca']:>10.4f} {m['fn_at_fp']:>11.2f}% "
                f"{m['fp']:>4}/{m['nham']:<4} {m['fn']:>4}/{m['nspam']:<4} {m['unsure_spam']:>9} "
                f"{r.classify_rate:>11.0f} {r.train_rate:>9.0f}"
            )
    if report.plot:
        lines.append(f"\nROC plot: {report.plot}")
    lines.extend(report.notes)
    return "\n".join(lines)

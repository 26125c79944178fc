"""What an evaluation measures: something trained on labelled items that scores raw messages.

Every filter is a `Learner`: `train(items)` with their labels, then `score(items)` -> one float per
message, higher for spam.  A plain `Scorer` (raw bytes -> float: a spamicity, or the total score of
the whole pipeline) becomes one with `ScorerLearner`; give it a `learn` function when what it
scores should see the training items too (a total score whose Bayes part is trained in the run).

CPU time is counted per learner -- this process's for filterd, the finished children's for
bogofilter -- so the rates are messages per CPU second of the filter's own work, the same on a
machine shared with other work.
"""

from __future__ import annotations

import hashlib
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from filterd_eval.corpus import HAM, SPAM, Item

Scorer = Callable[[bytes], float]
BOGOFILTER = "/usr/bin/bogofilter"


class Learner(Protocol):
    name: str
    train_cpu: float
    trained: int
    score_cpu: float
    scored: int

    def train(self, items: Sequence[Item]) -> None: ...

    def score(self, items: Sequence[Item]) -> np.ndarray: ...

    def close(self) -> None: ...


class _Counted:
    """CPU seconds and message counts of training and scoring."""

    def __init__(self, name: str, clock: Callable[[], float]) -> None:
        self.name = name
        self.clock = clock
        self.train_cpu = self.score_cpu = 0.0
        self.trained = self.scored = 0

    def close(self) -> None:
        pass


class ScorerLearner(_Counted):
    """Any scorer as a learner: `learn` (when given) sees the training items, `scorer` scores."""

    def __init__(
        self, name: str, scorer: Scorer, learn: Callable[[Sequence[Item]], None] | None = None
    ) -> None:
        super().__init__(name, time.process_time)
        self.scorer = scorer
        self.learn = learn

    def train(self, items: Sequence[Item]) -> None:
        if self.learn is None:
            return
        started = self.clock()
        self.learn(items)
        self.train_cpu += self.clock() - started
        self.trained += len(items)

    def score(self, items: Sequence[Item]) -> np.ndarray:
        started = self.clock()
        out = np.fromiter((self.scorer(i.raw) for i in items), dtype=np.float64, count=len(items))
        self.score_cpu += self.clock() - started
        self.scored += len(items)
        return out


def filterd_bayes(params: object | None = None) -> ScorerLearner:
    """filterd's classifier from an empty model: parse, tokenize and count / score, as filterd does."""
    from filterd.bayes.model import Model, message_digest
    from filterd.bayes.params import Params
    from filterd.message import Message

    model = Model.empty(params=params if isinstance(params, Params) else None)

    def learn(items: Sequence[Item]) -> None:
        for item in items:
            msg = Message(item.raw)
            _, buckets = model.features(msg)
            model.train(message_digest(msg), buckets, item.label)

    def spamicity(raw: bytes) -> float:
        return model.classify(Message(raw)).spamicity

    return ScorerLearner("filterd", spamicity, learn)


def _child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Bogofilter(_Counted):
    """bogofilter with its own word list in a private directory (-d), trained in bulk (-s / -n -B),
    scored with -T -B.  Messages are written to that directory first: bogofilter must see the same
    bytes as filterd, verdict headers removed."""

    BATCH = 500  # files per command line: far below the argument-length limit

    def __init__(self, exe: str = BOGOFILTER) -> None:
        super().__init__("bogofilter", _child_cpu)
        found = shutil.which(exe)
        if found is None:
            raise FileNotFoundError(f"{exe} not found (apt-get install bogofilter)")
        self.dir = Path(tempfile.mkdtemp(prefix="filterd-eval-bogo-"))
        (self.dir / "msgs").mkdir()
        self.base = [found, "-C", "-d", str(self.dir)]
        self._files: dict[str, str] = {}

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def _file(self, item: Item) -> str:
        path = self._files.get(item.key)
        if path is None:
            path = str(self.dir / "msgs" / hashlib.sha1(item.key.encode()).hexdigest())
            Path(path).write_bytes(item.raw)
            self._files[item.key] = path
        return path

    def train(self, items: Sequence[Item]) -> None:
        for label, flag in ((SPAM, "-s"), (HAM, "-n")):
            paths = [self._file(i) for i in items if i.label == label]
            started = self.clock()
            for start in range(0, len(paths), self.BATCH):
                subprocess.run([*self.base, flag, "-B", *paths[start : start + self.BATCH]], check=True)
            self.train_cpu += self.clock() - started
        self.trained += len(items)

    def score(self, items: Sequence[Item]) -> np.ndarray:
        paths = [self._file(i) for i in items]
        out: dict[str, float] = {}
        started = self.clock()
        for start in range(0, len(paths), self.BATCH):
            proc = subprocess.run(
                [*self.base, "-T", "-B", *paths[start : start + self.BATCH]], capture_output=True, text=True
            )
            if proc.returncode == 3 and not proc.stdout:  # no word list yet (nothing trained)
                continue
            for line in proc.stdout.splitlines():
                name, _, value = line.rsplit(" ", 2)
                out[name] = float(value)
        self.score_cpu += self.clock() - started
        self.scored += len(items)
        return np.array([out.get(p, 0.5) for p in paths])

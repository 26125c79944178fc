"""Training like DSPAM: idempotent, by message digest, in a training mode, from files or signatures.

`Trainer` takes messages one by one (from files, mailboxes or stored signatures) and trains them
into a model: the model file (storage = "file") or the shared log (storage = "redis", sent in
batches of `BATCH` in one round trip each).  What happened to each message is counted in `Tally`.

The training modes decide which messages are trained:

    teft   every message (train everything)
    toe    only a message the model gets wrong or is unsure of: spam below spam_cutoff, ham at or
           above ham_cutoff (train on error; a mature model then changes only where it must)
    tum    teft until the model has `mature_after` messages of each class, then toe

Until the model has `min_learned` messages of each class every mode trains everything: the verdict
of a model that has seen two spam and no ham is "spam" for everything, and train-on-error would
then never learn more spam.

A message already trained as the other class is always retrained (a correction), whatever the mode.
"""

from __future__ import annotations

import mailbox
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from filterd.bayes.model import HAM, SPAM, Change, Model, message_digest
from filterd.bayes.params import Params
from filterd.bayes.shared import SharedModel
from filterd.message import Message

BATCH = 200


@dataclass
class Tally:
    learned: int = 0
    moved: int = 0
    unlearned: int = 0
    unchanged: int = 0  # already trained as asked
    skipped: int = 0  # toe/tum: the model already classifies it right
    not_trained: int = 0  # --unlearn of a message not trained as that class
    missing: list[str] = field(default_factory=list)  # signatures not found (expired, or wrong id)

    def count(self, change: Change) -> None:
        if not change.changed:
            if change.after is None:
                self.not_trained += 1
            else:
                self.unchanged += 1
        elif change.after is None:
            self.unlearned += 1
        elif change.before is None:
            self.learned += 1
        else:
            self.moved += 1

    def summary(self, label: str) -> str:
        parts = [
            f"{self.learned} learned as {label}",
            f"{self.moved} moved to {label}",
            f"{self.unchanged} already {label}",
        ]
        if self.unlearned or self.not_trained:
            parts = [f"{self.unlearned} unlearned", f"{self.not_trained} were not trained as {label}"]
        if self.skipped:
            parts.append(f"{self.skipped} skipped (already classified right: train on error)")
        if self.missing:
            parts.append(f"{len(self.missing)} signatures not found ({', '.join(self.missing[:5])})")
        return "; ".join(parts)


class Trainer:
    def __init__(
        self,
        model: Model,
        shared: SharedModel | None,
        label: str,
        unlearn: bool = False,
        mode: str = "teft",
        params: Params | None = None,
        spam_cutoff: float = 0.99,
        ham_cutoff: float = 0.45,
        mature_after: int = 1000,
        signatures: SharedModel | None = None,
        min_learned: int = 20,
    ) -> None:
        """Train into `shared` (the Redis log) when given, else into `model`; look signatures up in
        `signatures` (default: `shared`)."""
        if label not in (SPAM, HAM):
            raise ValueError(f"label must be spam or ham, not {label!r}")
        self.model = model
        self.shared = shared
        self.label = label
        self.unlearn = unlearn
        self.mode = mode
        self.params = params or model.params
        self.spam_cutoff = spam_cutoff
        self.ham_cutoff = ham_cutoff
        self.mature_after = mature_after
        self.min_learned = min_learned
        self.signatures = signatures or shared
        self.tally = Tally()
        self._pending: list[tuple[bytes, np.ndarray, str | None]] = []
        # every message given (digest, buckets), whatever the mode did with it, when a caller also
        # trains a user's dictionary (filterd.bayes.peruser): a list to fill, or None
        self.seen: list[tuple[bytes, np.ndarray]] | None = None

    @property
    def current(self) -> Model:
        return self.shared.model if self.shared is not None else self.model

    def add_message(self, raw: bytes) -> None:
        msg = Message(raw)
        tokens, buckets = self.current.features(msg)
        self._add(message_digest(msg), buckets, tokens)

    def add_signature(self, sig_id: str) -> None:
        if self.signatures is None:
            raise ValueError("signatures are kept in Redis: no Redis client given")
        sig = self.signatures.signature(sig_id)
        if sig is None:
            self.tally.missing.append(sig_id)
            return
        if sig.n_features != self.current.counts.n_features:
            self.tally.missing.append(f"{sig_id} (made for a {sig.n_features}-bucket model)")
            return
        self._add(sig.digest, sig.buckets, None)

    def _add(self, digest: bytes, buckets: np.ndarray, tokens: Sequence[str] | None) -> None:
        if self.seen is not None:
            self.seen.append((digest, buckets))
        before = self.current.records.get(digest)
        if self.unlearn:
            if before != self.label:
                self.tally.not_trained += 1
                return
            self._train(digest, buckets, None)
            return
        if before is None and not self._worth_training(buckets, tokens):
            self.tally.skipped += 1
            return
        self._train(digest, buckets, self.label)

    def _worth_training(self, buckets: np.ndarray, tokens: Sequence[str] | None) -> bool:
        model = self.current
        mode = self.mode
        if mode == "tum":
            mode = "toe" if min(model.nspam, model.nham) >= self.mature_after else "teft"
        if mode == "teft" or min(model.nspam, model.nham) < self.min_learned:
            return True  # an untrained model's verdict says nothing: "right" would be luck
        names = tokens if tokens is not None else [str(b) for b in buckets]
        spamicity = model.classify_tokens(names, buckets, self.params).spamicity
        if self.label == SPAM:
            return spamicity < self.spam_cutoff
        return spamicity >= self.ham_cutoff

    def _train(self, digest: bytes, buckets: np.ndarray, label: str | None) -> None:
        if self.shared is None:
            self.tally.count(self.model.train(digest, buckets, label))
            return
        self._pending.append((digest, buckets, label))
        if len(self._pending) >= BATCH:
            self.flush()

    def flush(self) -> None:
        if self.shared is not None and self._pending:
            for change in self.shared.train(self._pending):
                self.tally.count(change)
            self._pending = []


def count_messages(files: tuple[str, ...], mboxes: tuple[str, ...], maildirs: tuple[str, ...]) -> int | None:
    """How many messages the sources hold (for the progress bar); None when stdin is among them."""
    _check_mailboxes(mboxes, maildirs)
    if "-" in files:
        return None
    total = 0
    for f in files:
        p = Path(f)
        total += (
            sum(1 for q in p.rglob("*") if q.is_file() and not q.name.startswith(".")) if p.is_dir() else 1
        )
    for m in mboxes:
        total += len(mailbox.mbox(m, create=False))
    for d in maildirs:
        total += len(mailbox.Maildir(d, factory=None, create=False))
    return total


def mailbox_messages(mboxes: tuple[str, ...], maildirs: tuple[str, ...]) -> Iterator[tuple[str, bytes]]:
    """(name, raw bytes) of every message in the mbox files and Maildir folders."""
    _check_mailboxes(mboxes, maildirs)
    for path in mboxes:
        box = mailbox.mbox(path, create=False)
        for key in box.iterkeys():
            yield f"{path}#{key}", box.get_bytes(key)
    for path in maildirs:
        md = mailbox.Maildir(path, factory=None, create=False)
        for key in md.iterkeys():
            yield f"{path}/{key}", md.get_bytes(key)


def _check_mailboxes(mboxes: tuple[str, ...], maildirs: tuple[str, ...]) -> None:
    for path in mboxes:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no such mbox file")
    for path in maildirs:
        if not (Path(path) / "cur").is_dir():
            raise FileNotFoundError(f"{path}: not a Maildir (no cur/ folder)")

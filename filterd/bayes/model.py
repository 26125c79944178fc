"""A trained model: the token counts, the per-message training records, and how they are stored.

Stored as one `.npz` file (numpy arrays, written with `allow_pickle=False` and read the same way,
so loading a model can never run code) whose `meta` entry is a JSON document: format version,
tokenizer version, bucket count, scoring parameters, when and from what it was trained.  Only the
non-zero counts are stored, as sorted bucket numbers (delta-encoded, so they compress to about a
byte each) and their values; a 2**23-bucket model trained on the 6,046 corpus messages is about
1 MB.  Files are replaced atomically (write a temporary file, fsync, rename), so a filterd that
reloads on a change never reads half a model.

Training records make training idempotent (DSPAM's rule): for every trained message the model
keeps the 16-byte digest of the message (`message_digest`) and the class it was trained as.
Training it again as the same class changes nothing; training it as the other class moves it
(unlearn from one, learn in the other); unlearning removes it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from filterd.bayes.classifier import (
    DEFAULT_N_FEATURES,
    Features,
    Hasher,
    Params,
    Result,
    TokenCounts,
    classify,
)
from filterd.bayes.tokenizer import TOKENIZER_VERSION, tokens
from filterd.message import Message

MODEL_FORMAT = 1
SPAM, HAM = "spam", "ham"
_LABEL_CODE = {HAM: 0, SPAM: 1}
_CODE_LABEL = {0: HAM, 1: SPAM}


class ModelError(ValueError):
    """A model file that cannot be used: missing, corrupt, or made by an incompatible version."""


def message_digest(msg: Message) -> bytes:
    """16 bytes that identify a message across the copies of it an admin may later train from.

    The Message-ID and the body, line endings normalised: headers that later hops add (Received,
    our own X-Filterd-*, a mailbox's Status) do not change it, and neither does an mbox "From "
    line.  Without a Message-ID, Subject, From and Date stand in for it."""
    ident = msg.header("Message-ID") or "\n".join(msg.header(h) or "" for h in ("Subject", "From", "Date"))
    body = msg.raw[len(msg.header_block) :].replace(b"\r\n", b"\n").strip()
    h = hashlib.sha256(ident.strip().encode("utf-8", "surrogateescape"))
    h.update(b"\0")
    h.update(body)
    return h.digest()[:16]


@dataclass(frozen=True)
class Change:
    """What training one message did."""

    before: str | None  # "spam", "ham" or None (not trained)
    after: str | None
    dspam: int  # +1, -1 or 0 to the spam message count (and to each of its tokens' spam counts)
    dham: int

    @property
    def changed(self) -> bool:
        return self.before != self.after


def transition(before: str | None, after: str | None) -> Change:
    """The count changes that take a message from one training state to another."""
    return Change(
        before,
        after,
        dspam=(after == SPAM) - (before == SPAM),
        dham=(after == HAM) - (before == HAM),
    )


@dataclass
class Model:
    counts: TokenCounts
    params: Params = field(default_factory=Params)
    records: dict[bytes, str] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.hasher = Hasher(self.counts.n_features)

    @classmethod
    def empty(cls, n_features: int = DEFAULT_N_FEATURES, params: Params | None = None) -> Model:
        return cls(TokenCounts(n_features), params or Params(), meta={"created": _now()})

    @property
    def nspam(self) -> int:
        return self.counts.nspam

    @property
    def nham(self) -> int:
        return self.counts.nham

    # -- classifying -------------------------------------------------------------------------

    def features(self, msg: Message) -> tuple[Features, np.ndarray]:
        """The message's distinct bucket numbers, and what names the token of each."""
        found = Features(tokens(msg), self.hasher)
        return found, found.buckets

    def classify(self, msg: Message, params: Params | None = None) -> Result:
        names, buckets = self.features(msg)
        return classify(self.counts, buckets, names, params or self.params)

    def classify_tokens(
        self, names: Sequence[str], buckets: np.ndarray, params: Params | None = None
    ) -> Result:
        return classify(self.counts, buckets, names, params or self.params)

    # -- training ----------------------------------------------------------------------------

    def train(self, digest: bytes, buckets: np.ndarray, label: str | None) -> Change:
        """Train one message as `label` ("spam", "ham"), or unlearn it (None); idempotent."""
        change = transition(self.records.get(digest), label)
        if change.changed:
            self.apply(digest, buckets, change)
        return change

    def apply(self, digest: bytes, buckets: np.ndarray, change: Change) -> None:
        """Apply a change decided elsewhere (the shared log): counts and the record."""
        self.counts.add(buckets, change.dspam, change.dham)
        if change.after is None:
            self.records.pop(digest, None)
        else:
            self.records[digest] = change.after
        self.meta["updated"] = _now()

    def copy(self) -> Model:
        """An independent copy, made directly: the file format's round trip (to_bytes, from_bytes)
        costs about a second of CPU for the 64 MB table, paid by every new worker."""
        counts = TokenCounts(self.counts.n_features)
        counts.both[...] = self.counts.both
        counts.nspam, counts.nham = self.counts.nspam, self.counts.nham
        return Model(counts, self.params, dict(self.records), dict(self.meta))

    # -- storage -----------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        arrays: dict[str, np.ndarray] = {}
        for name, counts in (("spam", self.counts.spam), ("ham", self.counts.ham)):
            nonzero = np.flatnonzero(counts).astype(np.uint32)
            arrays[f"{name}_delta"] = np.diff(nonzero, prepend=np.uint32(0)).astype(np.uint32)
            arrays[f"{name}_count"] = counts[nonzero].astype(np.uint32)
        digests = list(self.records)
        arrays["record_digest"] = np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(len(digests), 16)
        arrays["record_label"] = np.array([_LABEL_CODE[self.records[d]] for d in digests], dtype=np.int8)
        meta = dict(self.meta)
        meta.update(
            format=MODEL_FORMAT,
            tokenizer=TOKENIZER_VERSION,
            n_features=self.counts.n_features,
            nspam=self.counts.nspam,
            nham=self.counts.nham,
            params=asdict(self.params),
        )
        arrays["meta"] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
        buf = io.BytesIO()
        np.savez_compressed(buf, allow_pickle=False, **arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, where: str = "model") -> Model:
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
            meta = json.loads(arrays["meta"].tobytes().decode())
        except (OSError, ValueError, KeyError, EOFError) as exc:
            raise ModelError(f"{where}: not a filterd model file ({exc})") from exc
        if meta.get("format") != MODEL_FORMAT:
            raise ModelError(f"{where}: model format {meta.get('format')}, this filterd reads {MODEL_FORMAT}")
        if meta.get("tokenizer") != TOKENIZER_VERSION:
            raise ModelError(
                f"{where}: trained with tokenizer version {meta.get('tokenizer')}, this filterd has "
                f"{TOKENIZER_VERSION}: retrain it (see models/README.md)"
            )
        try:
            counts = TokenCounts(int(meta["n_features"]))
            for name, target in (("spam", counts.spam), ("ham", counts.ham)):
                index = np.cumsum(arrays[f"{name}_delta"], dtype=np.int64)
                target[index] = arrays[f"{name}_count"]
            counts.nspam, counts.nham = int(meta["nspam"]), int(meta["nham"])
            digests = arrays["record_digest"]
            labels = arrays["record_label"]
            records = {bytes(d): _CODE_LABEL[int(code)] for d, code in zip(digests, labels, strict=True)}
            params = Params(**meta["params"])
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise ModelError(f"{where}: damaged model ({type(exc).__name__}: {exc})") from exc
        return cls(counts, params, records, meta)

    def save(self, path: Path | str) -> None:
        """Write atomically: a reader sees the old file or the new one, never a partial one."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".bayes-", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(self.to_bytes())
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: Path | str) -> Model:
        p = Path(path)
        try:
            data = p.read_bytes()
        except OSError as exc:
            raise ModelError(f"cannot read model {p}: {exc.strerror}") from exc
        return cls.from_bytes(data, str(p))


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

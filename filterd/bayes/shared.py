"""Sharing one model between filterd hosts through Redis, and the signatures of classified mail.

Every host classifies from a model in its own memory (a Redis round trip per token lookup would
cost more than the whole classification).  What is shared is how that model changes:

    {prefix}bayes:{m}:log     a stream: one entry per training change -- the message digest, the
                              class it moved to, +1/-1 for each class, and its bucket numbers
    {prefix}bayes:{m}:rec     a hash: message digest -> "spam" / "ham" / "none", the training
                              record that makes training idempotent across hosts
    {prefix}bayes:{m}:snap    the whole model (the .npz bytes) as of a log entry, written by
                              `filterctl train` after each run: a new host starts from it
    {prefix}bayes:sig:ID      a classified message's digest and buckets, kept `signature_days`,
                              so `filterctl train --signature ID` can retrain it later

({m} is the literal "{m}": a Redis Cluster hash tag that puts the log, the records and the snapshot
in one slot, so the training script may touch all three.)

A host's model is: the snapshot if there is one, else the model file; then every log entry after
the one the snapshot was taken at, applied in order.  `sync()` applies the entries added since the
last call; it is cheap when there are none (one XRANGE that returns nothing).

Training goes through one Lua script (`_TRAIN`), so two hosts training the same message at once
cannot both count it: the script reads the record, and only when the class really changes does it
write the new record and append the log entry, atomically.

The log is trimmed to `log_max` entries when a snapshot is written.  When it was trimmed past what a
host has applied, the host reloads the snapshot (entries are counted with Redis 7's entries-added, so a gap is seen, not guessed); `filterctl train` writes a snapshot after every run, so a trimmed stream always has a
snapshot newer than what it dropped.
"""

from __future__ import annotations

import logging
import secrets
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from filterd.bayes.classifier import distinct
from filterd.bayes.model import Change, Model, ModelError, transition

log = logging.getLogger("filterd.bayes")

_TRAIN = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old then old = ARGV[3] end
if old == ARGV[2] then return {old, ''} end
local ds = (ARGV[2] == 'spam' and 1 or 0) - (old == 'spam' and 1 or 0)
local dh = (ARGV[2] == 'ham' and 1 or 0) - (old == 'ham' and 1 or 0)
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local id = redis.call('XADD', KEYS[2], '*',
                      'd', ARGV[1], 'l', ARGV[2], 's', ds, 'h', dh, 'b', ARGV[4])
return {old, id}
"""

_NONE = "none"  # the record value of a message that is not trained (unlearned)


@dataclass(frozen=True)
class Signature:
    digest: bytes
    buckets: np.ndarray
    n_features: int


def _label_name(label: str | None) -> str:
    return _NONE if label is None else label


def _label_value(name: str) -> str | None:
    return None if name == _NONE else name


class SharedModel:
    """A model kept in step with the shared log in Redis."""

    def __init__(self, redis: Any, key_prefix: str, seed: Model, log_max: int = 100_000) -> None:
        self.redis = redis
        self.prefix = f"{key_prefix}bayes:"
        self.log_key = self.prefix + "{m}:log"
        self.rec_key = self.prefix + "{m}:rec"
        self.snap_key = self.prefix + "{m}:snap"
        self.log_max = log_max
        self.seed = seed
        self.model = seed
        self.last_id = "0-0"
        self.ordinal = 0  # how many log entries (from the first ever) the model includes
        self._snapshot_ordinal = 0
        self._train = redis.register_script(_TRAIN)
        self.loaded = False

    # -- following the log -------------------------------------------------------------------

    def load(self) -> None:
        """Start from the snapshot if there is a usable one, else from the seed model."""
        data = self.redis.get(self.snap_key)
        model = None
        if data is not None:
            try:
                snap = Model.from_bytes(data, f"redis {self.snap_key}")
            except ModelError as exc:
                log.warning("ignoring the shared snapshot: %s", exc)
            else:
                if snap.counts.n_features == self.seed.counts.n_features:
                    model = snap
                else:
                    log.warning(
                        "ignoring the shared snapshot: %d buckets, the seed model has %d",
                        snap.counts.n_features,
                        self.seed.counts.n_features,
                    )
        if model is None:
            model = self.seed.copy()  # the seed stays pristine for a reload
            model.meta["log_id"], model.meta["log_ordinal"] = "0-0", 0
        self.model = model
        self.last_id = str(model.meta.get("log_id", "0-0"))
        self.ordinal = self._snapshot_ordinal = int(model.meta.get("log_ordinal", 0))
        self.loaded = True
        if self._gap():
            log.warning(
                "the shared log was trimmed past entry %s and no newer snapshot exists: "
                "run `filterctl train` once to write one",
                self.last_id,
            )
        self._catch_up()

    def sync(self) -> int:
        """Apply the log entries added since the last sync; return how many were applied."""
        if not self.loaded:
            self.load()
            return 0
        if self._gap():
            log.info("the shared log was trimmed past entry %s: reloading the snapshot", self.last_id)
            self.load()
            return 0
        return self._catch_up()

    def _catch_up(self, batch: int = 2000) -> int:
        applied = 0
        while True:
            entries = self.redis.xrange(self.log_key, min=f"({self.last_id}", max="+", count=batch)
            for entry_id, fields in entries:
                self._apply(fields)
                self.last_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                applied += 1
            if len(entries) < batch:
                break
        if applied:
            self.ordinal += applied
            self.model.meta["log_id"], self.model.meta["log_ordinal"] = self.last_id, self.ordinal
        return applied

    def _gap(self) -> bool:
        """Whether entries after the last applied one were trimmed from the log.

        Log entries are numbered 1, 2, ... in the order they were added (Redis 7 counts them:
        XINFO STREAM's entries-added); we know the number of the last one we applied (`ordinal`),
        and the first entry still in the stream is number entries-added - length + 1."""
        try:
            info = self.redis.xinfo_stream(self.log_key)
        except Exception as exc:
            if "no such key" in str(exc).lower():
                return False
            raise
        first_kept = int(info["entries-added"]) - int(info["length"]) + 1
        return first_kept > self.ordinal + 1

    def _apply(self, fields: dict[bytes, bytes]) -> None:
        digest = bytes.fromhex(fields[b"d"].decode())
        buckets = np.frombuffer(fields[b"b"], dtype="<u4").astype(np.int64)
        ds, dh = int(fields[b"s"]), int(fields[b"h"])
        after = _label_value(fields[b"l"].decode())
        before = self.model.records.get(digest)
        self.model.apply(digest, buckets, Change(before, after, ds, dh))

    # -- training ----------------------------------------------------------------------------

    def train(self, items: list[tuple[bytes, np.ndarray, str | None]]) -> list[Change]:
        """Train a batch of (digest, buckets, label or None) in one round trip; then sync."""
        pipe = self.redis.pipeline(transaction=False)
        # Registered with the pipeline here, so that its execute() loads the script on NOSCRIPT:
        # redis-py does it by itself only when handed its own Pipeline class, and ours may be the
        # circuit breaker's proxy of one (filterd.redisstate.BreakerRedis).
        pipe.scripts.add(self._train)
        for digest, buckets, label in items:
            base = self.model.records.get(digest)
            packed = distinct(buckets).astype("<u4").tobytes()
            self._train(
                keys=[self.rec_key, self.log_key],
                args=[digest.hex(), _label_name(label), _label_name(base), packed],
                client=pipe,
            )
        results = pipe.execute()
        changes = [
            transition(_label_value(old.decode() if isinstance(old, bytes) else old), label)
            for (_, _, label), (old, _id) in zip(items, results, strict=True)
        ]
        self.sync()
        if self.ordinal - self._snapshot_ordinal >= max(self.log_max // 2, 1):
            self.snapshot()  # filterd training by itself (teft, autolearn) keeps the log bounded too
        return changes

    def snapshot(self) -> None:
        """Store the model as of the last applied entry, where a new host (or one left behind by a
        trimmed log) starts; then trim the log to `log_max` entries.  Trimming only here means an
        entry leaves the log only after a snapshot includes it (unless more than `log_max` entries
        were added by others in the moment between the two)."""
        self.sync()
        self.model.meta["log_id"], self.model.meta["log_ordinal"] = self.last_id, self.ordinal
        self.redis.set(self.snap_key, self.model.to_bytes())
        self._snapshot_ordinal = self.ordinal
        self.redis.xtrim(self.log_key, maxlen=self.log_max, approximate=False)

    # -- signatures --------------------------------------------------------------------------

    def store_signature(self, digest: bytes, buckets: np.ndarray, ttl_seconds: int) -> str:
        """Keep a classified message's digest and buckets for `ttl_seconds`; return its id.

        One SET with EX (one round trip; a hash plus EXPIRE cost twice that)."""
        sig_id, key, value = self.signature_record(digest, buckets)
        self.redis.set(key, value, ex=ttl_seconds)
        return sig_id

    def signature_record(self, digest: bytes, buckets: np.ndarray) -> tuple[str, str, bytes]:
        """A new signature's id, its key and its value: the 16-byte digest, the model's bucket
        count (uint32) and the buckets (uint32 each)."""
        sig_id = secrets.token_hex(10)
        n_features = self.seed.counts.n_features
        value = digest + struct.pack("<I", n_features) + distinct(buckets).astype("<u4").tobytes()
        return sig_id, self.prefix + "sig:" + sig_id, value

    def signature(self, sig_id: str) -> Signature | None:
        if not sig_id or not all(c in "0123456789abcdef" for c in sig_id.lower()):
            return None
        value = self.redis.get(self.prefix + "sig:" + sig_id.lower())
        if value is None or len(value) < 20 or (len(value) - 20) % 4:
            return None
        return Signature(
            digest=value[:16],
            buckets=np.frombuffer(value[20:], dtype="<u4").astype(np.int64),
            n_features=struct.unpack("<I", value[16:20])[0],
        )

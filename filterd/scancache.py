"""The antivirus result cache in Redis, so identical bulk mail is scanned by clamd once.

Key::

    <prefix>av:<sha256( clamd VERSION \\0 selected header values \\0 body )>

- The body is the bytes after the blank line that ends the header block.  Per-copy headers
  (Received, To, Message-ID, Date) differ between copies of one bulk mailing, so hashing the whole
  message would never hit.
- The top-level MIME headers are in the key all the same: they decide how clamd decodes the body.
  One body under ``Content-Type: text/plain`` and under ``multipart/mixed; boundary=...`` are two
  different messages to clamd, and a body-only key would let the first one's "clean" answer the
  second.  `cache_headers` lists them (add Subject, From if you run signatures that match headers,
  as some third-party phishing databases do).
- clamd's VERSION reply ("ClamAV 1.4.6/27470/...") carries the signature version, so a signature
  update makes every older entry unreachable: a "clean" cached an hour before the signature for
  a new outbreak came out does not outlive the update.  The TTL bounds the rest.

Values: ``b"clean"`` or ``b"found:" + names joined by tabs``.  Hits and misses are counted in the
hash ``<prefix>av:stats`` (fields ``hits``, ``misses``), which has no TTL: it is a running counter
shown by ``filterctl antivirus status``.
"""

from __future__ import annotations

import hashlib
from typing import Any

from filterd.clamd import ScanResult
from filterd.message import Message

CLEAN = b"clean"
FOUND = b"found:"


class ScanCache:
    def __init__(self, redis: Any, prefix: str, ttl: int, header_names: tuple[str, ...]) -> None:
        self.redis = redis
        self.prefix = prefix
        self.ttl = ttl
        self.header_names = tuple(h.lower() for h in header_names)

    @property
    def stats_key(self) -> str:
        return f"{self.prefix}av:stats"

    def key(self, version: str, message: Message) -> str:
        h = hashlib.sha256()
        h.update(version.encode("utf-8", "replace") + b"\0")
        for name in self.header_names:
            for value in message.header_values(name):
                h.update(name.encode("ascii", "replace") + b":" + " ".join(value.split()).encode() + b"\n")
        h.update(b"\0")
        h.update(message.raw[len(message.header_block) :])
        return f"{self.prefix}av:{h.hexdigest()}"

    def get(self, key: str) -> ScanResult | None:
        """The cached result, counting a hit; redis errors propagate to the caller.

        A miss is counted by `put`, in the same round trip as the SET, or by `count_miss` when the
        scan that followed failed: a miss costs no round trip beyond the GET and the SET."""
        value = self.redis.get(key)
        if value is None:
            return None
        self.redis.hincrby(self.stats_key, "hits", 1)
        if value == CLEAN:
            return ScanResult(viruses=(), address="cache")
        if value.startswith(FOUND):
            names = value[len(FOUND) :].decode("utf-8", "replace").split("\t")
            return ScanResult(viruses=tuple(n for n in names if n), address="cache")
        return None  # not ours (a stray value under our prefix): scan again and overwrite it

    def put(self, key: str, result: ScanResult) -> None:
        """Store a fresh scan result and count the miss that caused it."""
        value = FOUND + "\t".join(result.viruses).encode() if result.viruses else CLEAN
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(key, value, ex=self.ttl)
        pipe.hincrby(self.stats_key, "misses", 1)
        pipe.execute()

    def count_miss(self) -> None:
        self.redis.hincrby(self.stats_key, "misses", 1)

    def counters(self) -> dict[str, int]:
        raw = self.redis.hgetall(self.stats_key)
        out = {k.decode(): int(v) for k, v in raw.items()}
        return {"hits": out.get("hits", 0), "misses": out.get("misses", 0)}

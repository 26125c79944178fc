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

Values are signed, because Redis is not a place to trust: anyone who can write to it (any local
user, on a Redis without a password) could otherwise store "clean" under the key of a virus and
have it delivered.  A value is ``b"v1:" + hex(HMAC-SHA256(secret, key \\0 result)) + b":" + result``,
the result being ``b"clean"`` or ``b"found:" + names joined by tabs``.  The MAC covers the key, so
a genuine "clean" copied under another message's key is refused too.  The secret comes from the
file ``[checks.antivirus] cache_key_file`` names (`read_secret`: a regular file no group or other
user can read); without one there is no cache.  An entry whose MAC does not verify (forged,
unsigned, or signed with a key since replaced) is ignored, logged and counted, and the message is
scanned as if it were a miss; the fresh result overwrites it.

Hits, misses and refused entries are counted in the hash ``<prefix>av:stats`` (fields ``hits``,
``misses``, ``forged``), which has no TTL: a running counter shown by ``filterctl antivirus status``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import stat
from pathlib import Path
from typing import Any

from filterd.clamd import ScanResult
from filterd.message import Message

log = logging.getLogger("filterd.scancache")

CLEAN = b"clean"
FOUND = b"found:"
SIGNED = b"v1:"
MIN_SECRET_BYTES = 16


class SecretFileError(ValueError):
    """The cache key file cannot be used; the message says why and what to do."""


def read_secret(path: str) -> bytes:
    """The secret in `path`: a regular file, at least 16 bytes, that no group or other user can
    read or write (0600 or 0400).  Raises SecretFileError otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise SecretFileError(f"cannot open {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise SecretFileError(f"{path} is not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise SecretFileError(
                f"{path} has mode {mode:04o}: group or other users could read the key and forge "
                f'"clean" cache entries; chmod 0600 {path} (owned by the user filterd runs as)'
            )
        secret = f.read(4096).strip()
    if len(secret) < MIN_SECRET_BYTES:
        raise SecretFileError(
            f"{path} holds {len(secret)} bytes, fewer than {MIN_SECRET_BYTES}: "
            f"make one with: head -c 32 /dev/urandom | base64 > {path}; chmod 0600 {path}"
        )
    return secret


def write_secret(path: Path) -> None:
    """Create a new random key file with mode 0600 (for the quick start and the tests)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)  # whatever the umask
        f.write(os.urandom(32).hex().encode() + b"\n")


class ScanCache:
    def __init__(
        self, redis: Any, prefix: str, ttl: int, header_names: tuple[str, ...], secret: bytes = b""
    ) -> None:
        """`secret` signs and verifies entries; without it (the counters only) get/put refuse."""
        self.redis = redis
        self.prefix = prefix
        self.ttl = ttl
        self.header_names = tuple(h.lower() for h in header_names)
        self.secret = secret

    def _mac(self, key: str, result: bytes) -> bytes:
        if not self.secret:
            raise ValueError("the antivirus cache needs a secret to sign its entries")
        return hmac.new(self.secret, key.encode() + b"\0" + result, hashlib.sha256).hexdigest().encode()

    def _sign(self, key: str, result: bytes) -> bytes:
        return SIGNED + self._mac(key, result) + b":" + result

    def _verified(self, key: str, value: bytes) -> bytes | None:
        """The result in a signed value, or None when the signature is missing or wrong."""
        if not value.startswith(SIGNED):
            return None
        mac, sep, result = value[len(SIGNED) :].partition(b":")
        if not sep or not hmac.compare_digest(mac, self._mac(key, result)):
            return None
        return result

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
        result = self._verified(key, value)
        if result is None or not (result == CLEAN or result.startswith(FOUND)):
            # forged, unsigned, or signed with another key: never believed; scanned and overwritten
            log.warning("antivirus cache: entry %s has no valid signature: ignored, scanning", key)
            self.redis.hincrby(self.stats_key, "forged", 1)
            return None
        self.redis.hincrby(self.stats_key, "hits", 1)
        if result == CLEAN:
            return ScanResult(viruses=(), address="cache")
        names = result[len(FOUND) :].decode("utf-8", "replace").split("\t")
        return ScanResult(viruses=tuple(n for n in names if n), address="cache")

    def put(self, key: str, result: ScanResult) -> None:
        """Store a fresh scan result and count the miss that caused it."""
        value = FOUND + "\t".join(result.viruses).encode() if result.viruses else CLEAN
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(key, self._sign(key, value), ex=self.ttl)
        pipe.hincrby(self.stats_key, "misses", 1)
        pipe.execute()

    def count_miss(self) -> None:
        self.redis.hincrby(self.stats_key, "misses", 1)

    def counters(self) -> dict[str, int]:
        raw = self.redis.hgetall(self.stats_key)
        out = {k.decode(): int(v) for k, v in raw.items()}
        return {"hits": out.get("hits", 0), "misses": out.get("misses", 0)}

    def forged(self) -> int:
        """Entries refused so far because their signature did not verify."""
        return int(self.redis.hget(self.stats_key, "forged") or 0)

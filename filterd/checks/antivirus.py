"""Antivirus: the whole message goes to clamd (INSTREAM), which decodes MIME and archives itself.

Replaces clamav-milter.  What happens in each case, and why:

- infected -> ``on_infected``: ``reject`` (554 5.7.1 naming the virus; the default: the sender
  learns, nothing is stored), ``quarantine`` (kept for review, see filterd/quarantine/) or
  ``discard`` (accepted and dropped).  CLAM_VIRUS names the virus in the report either way.
- clean -> ``X-Virus-Scanned`` and ``X-Virus-Status: Clean`` on the delivered message.  Incoming
  X-Virus-* headers are removed first (report.FORGEABLE_PREFIXES): a sender must not be able to
  mark its own mail clean.
- clamd unreachable, too slow, or answering ERROR (every listed socket tried) ->
  ``on_unavailable``: ``tempfail`` (451, Postfix keeps the message and the client retries; like
  clamav-milter's OnFail Defer, the default) or ``accept`` with ``X-Virus-Status: Not scanned``.
- clamd may not have looked at all of it -> ``on_unscannable``: ``reject`` (the default: 554 5.7.1
  saying why), ``quarantine``, or ``accept`` with ``X-Virus-Status: Unscanned (...)``; never
  "Clean".  That is clamd's own word (a ``Heuristics.Limits.Exceeded.*``, ``Heuristics.Broken.*``
  or ``Heuristics.Encrypted.*`` name: contrib/clamd/clamd.conf turns on AlertExceedsMax) or ours:
  filterd/scanlimits.py counts MIME depth, zip nesting and member sizes against mirrors of clamd's
  limits, because clamd without AlertExceedsMax answers OK for what it skipped, and even with it
  trims an oversized zip member silently.  clamav-milter treats these names as viruses.  A real
  virus found next to a limit is a virus (on_infected).  CLAM_UNSCANNABLE says which limit.
- larger than ``max_size`` or than clamd's StreamMaxLength -> ``on_oversize``: ``reject`` (552
  5.3.4, the default), ``tempfail`` or ``accept`` with a Not-scanned header.  Over [milter]
  max_scan_bytes the body was not kept: [milter] oversize_action decides (applied by
  filterd/checks/message_size.py first, and here again should that check be off); with "accept"
  this check says "Not scanned" (CLAM_SKIPPED_SIZE).  That is why
  `needs_body` stays False here: the pipeline skips needs_body checks on oversized messages, and
  this check must still say what it did with them.
- the result cache in Redis is signed (filterd/scancache.py): a "clean" written into Redis by
  anyone without the key in ``cache_key_file`` is ignored, and without a key there is no cache.
- Redis (the result cache) failing never stops a scan: the message is scanned as if the cache
  were off, and CLAM_CACHE_FAIL says so in the report.
- a hung clamd stalls only the messages being scanned.  Each clamd socket has a circuit breaker
  ([breaker], filterd/breaker.py): after a few failures scans fail at once into on_unavailable.
  The scan timeout is kept below half of [milter] heartbeat_timeout: a callback waiting longer
  than that is taken by the supervisor for a hung worker, which is killed with every session it
  holds.  And clamd's VERSION (asked when a worker builds this check, and once a minute) gets a
  short timeout of its own, never the scan's: a worker started while clamd hangs must serve mail
  at once, not after the scan timeout; on the mail path a failed refresh keeps the last answer.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from filterd.check import (
    AddHeader,
    Check,
    CheckContext,
    CheckSettings,
    Cost,
    Direction,
    Finding,
    Output,
    Stage,
)
from filterd.checks.message_size import oversize_decision
from filterd.clamd import ClamdError, ClamdTooLarge, ScanResult, check_address
from filterd.replies import (
    R451_VIRUS_SCAN_FAILED,
    R452_TOO_BIG_TO_SCAN,
    R552_MESSAGE_TOO_BIG,
    R554_VIRUS_FOUND,
    Discard,
    Quarantine,
    Reject,
    TempFail,
)
from filterd.scancache import ScanCache, SecretFileError, read_secret
from filterd.scanlimits import ScanLimits, exceeded
from filterd.settings import ConfigError, not_negative, positive, setting
from filterd.transaction import Transaction

log = logging.getLogger("filterd.checks.antivirus")

SCANNED_HEADER = "X-Virus-Scanned"
STATUS_HEADER = "X-Virus-Status"
VERSION_REFRESH = 60.0  # seconds a clamd VERSION answer (part of the cache key) is reused
VERSION_TIMEOUT = 2.0  # seconds for clamd's VERSION reply: it needs no scan (module docstring)
# After a Redis failure the cache is skipped this long, so a Redis that times out costs one
# [redis] timeout per CACHE_RETRY_AFTER seconds, not one per message.
CACHE_RETRY_AFTER = 10.0


def _addresses(values: tuple[str, ...]) -> str | None:
    if not values:
        return "list at least one clamd socket"
    for v in values:
        problem = check_address(v)
        if problem:
            return problem
    return None


@dataclass(frozen=True)
class AntivirusSettings(CheckSettings):
    # Off by default: with no clamd running, the default tempfail policy would refuse all mail.
    enabled: bool = setting(False, "run this check (start clamd first: every message waits for it)")
    on_error: Literal["open", "closed"] = setting(
        "closed", "when the check itself fails (a bug): closed tempfails (4xx), open skips it"
    )
    sockets: tuple[str, ...] = setting(
        ("unix:/run/clamav/clamd.ctl",),
        'clamd sockets, "unix:/path" or "inet:PORT@HOST", tried in order: the next is used when one fails',
        _addresses,
    )
    timeout: float = setting(
        15.0,
        "seconds one clamd has for one scan, sending included; at most half of [milter] heartbeat_timeout",
        positive,
    )
    connect_timeout: float = setting(2.0, "seconds to connect to one clamd", positive)
    retry_after: float = setting(
        10.0, "seconds a clamd that failed is tried last instead of first", not_negative
    )
    on_infected: Literal["reject", "quarantine", "discard"] = setting(
        "reject", 'a virus found: "reject" (554 naming it), "quarantine" or "discard"'
    )
    on_unavailable: Literal["tempfail", "accept"] = setting(
        "tempfail",
        'no clamd answered: "tempfail" (451, the client retries) or "accept" with X-Virus-Status: Not scanned',
    )
    max_size: int = setting(
        0,
        "messages larger than this many bytes are not scanned (0: [milter] max_scan_bytes); "
        "keep it below clamd's StreamMaxLength",
        not_negative,
    )
    on_oversize: Literal["reject", "tempfail", "accept"] = setting(
        "reject",
        'a message over max_size or clamd\'s StreamMaxLength: "reject" (552), "tempfail" (452) or '
        '"accept" with X-Virus-Status: Not scanned',
    )
    on_unscannable: Literal["reject", "quarantine", "accept"] = setting(
        "reject",
        "clamd may not have seen all of the message (a limit passed, a broken or encrypted file): "
        '"reject" (554), "quarantine", or "accept" with X-Virus-Status: Unscanned; never Clean',
    )
    # Mirrors of clamd's limits (contrib/clamd/clamd.conf): filterd counts for itself, so that a
    # clamd without AlertExceedsMax cannot turn "did not look" into "Clean".  Keep them equal to
    # (or below) clamd's.
    max_recursion: int = setting(
        16,
        "clamd's MaxRecursion (Debian ships 16, ClamAV's default is 17; set it to your clamd's): "
        "MIME depth plus zip nesting at or past this is unscannable",
        positive,
    )
    max_file_size: int = setting(
        25 * 1024 * 1024, "clamd's MaxFileSize: a MIME part or zip member larger is unscannable", positive
    )
    max_scan_size: int = setting(
        100 * 1024 * 1024,
        "clamd's MaxScanSize: parts and zip members adding up to more are unscannable",
        positive,
    )
    max_files: int = setting(10000, "clamd's MaxFiles: more zip members than this is unscannable", positive)
    cache_ttl: int = setting(
        3600,
        "seconds a scan result is kept in Redis, keyed by a hash of the body (0: no cache)",
        not_negative,
    )
    cache_key_file: str = setting(
        "",
        "file holding the secret that signs cache entries (HMAC-SHA256), mode 0600, at least 16 bytes: "
        "head -c 32 /dev/urandom | base64 > FILE; empty: no cache (Redis is not trusted unsigned)",
    )
    cache_headers: tuple[str, ...] = setting(
        ("Content-Type", "Content-Transfer-Encoding", "MIME-Version"),
        "headers whose values are part of the cache key besides the body (they decide how clamd decodes it)",
    )


class Antivirus(Check):
    name = "antivirus"
    stage = Stage.EOM
    cost = Cost.NETWORK
    description = "ClamAV (clamd) scan of the whole message, with a Redis result cache"
    symbols = {
        "CLAM_VIRUS": 20.0,
        "CLAM_VIRUS_FAIL": 0.0,
        "CLAM_SKIPPED_SIZE": 0.0,
        # what clamd did not see may be anything: enough to mark as spam under on_unscannable = "accept"
        "CLAM_UNSCANNABLE": 6.0,
        "CLAM_CACHE_FAIL": 0.0,
    }
    Settings = AntivirusSettings
    needs_body = False  # on purpose: see the module docstring (oversized messages)
    # outbound too: a virus sent by a compromised account must not leave either (clamav-milter scans both)
    directions = frozenset({Direction.INBOUND, Direction.OUTBOUND})

    def __init__(self, ctx: CheckContext[AntivirusSettings]) -> None:
        super().__init__(ctx)
        settings = ctx.settings
        self.s = settings
        scan_timeout = min(settings.timeout, ctx.services.longest_wait)
        if scan_timeout < settings.timeout:
            log.warning(
                "antivirus: timeout %gs is more than half of [milter] heartbeat_timeout: using %gs, "
                "so that a worker waiting for clamd is not killed as hung",
                settings.timeout,
                scan_timeout,
            )
        self.pool = ctx.services.clamd(
            settings.sockets, scan_timeout, settings.connect_timeout, settings.retry_after
        )
        self.max_size = settings.max_size or ctx.site.max_scan_bytes
        self.limits = ScanLimits(
            settings.max_recursion, settings.max_file_size, settings.max_scan_size, settings.max_files
        )
        # gethostname, not getfqdn: getfqdn may block on DNS while the daemon starts
        self.hostname = ctx.site.hostname or socket.gethostname()
        self._version: tuple[float, str] | None = None
        self._version_lock = threading.Lock()
        self._cache_down_until = 0.0
        self.cache_secret = b""
        if settings.cache_ttl and settings.cache_key_file:
            try:
                self.cache_secret = read_secret(settings.cache_key_file)
            except SecretFileError as exc:
                raise ConfigError("checks.antivirus.cache_key_file", str(exc)) from None
        elif settings.cache_ttl:
            log.info("antivirus: result cache off: no cache_key_file to sign its entries with")
        try:
            log.info("antivirus: clamd %s", self.engine_version())
        except ClamdError as exc:
            # not fatal (clamd may still be loading its signatures), but loud: mail waits for it
            log.warning(
                "antivirus: no clamd answers (%s); messages get on_unavailable=%s until one does",
                exc,
                settings.on_unavailable,
            )

    # -- the cache ---------------------------------------------------------------------------

    def _cache(self) -> ScanCache | None:
        if not self.s.cache_ttl or not self.cache_secret:
            return None
        return ScanCache(
            self.services.redis,
            self.ctx.site.key_prefix,
            self.s.cache_ttl,
            self.s.cache_headers,
            self.cache_secret,
        )

    def engine_version(self) -> str:
        """clamd's VERSION, asked at most once a minute per process; raises ClamdError when no
        clamd answers and none ever did (a failed refresh keeps the last answer)."""
        now = time.monotonic()
        with self._version_lock:
            known = self._version
        if known is not None and now - known[0] < VERSION_REFRESH:
            return known[1]
        try:
            version = self.pool.version(VERSION_TIMEOUT)
        except ClamdError:
            if known is None:
                raise
            # the scan will tell whether clamd is there; the signature version is a minute old
            with self._version_lock:
                self._version = (now, known[1])
            return known[1]
        with self._version_lock:
            self._version = (now, version)
        return version

    # -- the check ---------------------------------------------------------------------------

    def run(self, tx: Transaction) -> Iterable[Output]:
        if tx.oversized:
            # the body was not kept: [milter] oversize_action decides (the message_size check
            # normally has already; applied here too in case that check is turned off)
            reason = f"message of {tx.size} bytes not scanned for viruses: over [milter] max_scan_bytes"
            yield Finding("CLAM_SKIPPED_SIZE", reason)
            decision = oversize_decision(self.site, reason)
            if decision is not None:
                yield decision
            else:
                yield AddHeader(STATUS_HEADER, f"Not scanned (message too large: {tx.size} bytes)")
            return
        message = tx.message
        if len(message.raw) > self.max_size:
            yield from self._too_large(len(message.raw), f"over {self.max_size} bytes")
            return
        findings: list[Output] = []
        try:
            result, version = self._scan(tx, findings)
        except ClamdTooLarge as exc:
            yield from findings
            yield from self._too_large(len(message.raw), f"over clamd's StreamMaxLength ({exc})")
            return
        except ClamdError as exc:
            yield from findings
            yield from self._unavailable(str(exc))
            return
        yield from findings
        cached = " (cached)" if result.address == "cache" else ""
        if result.infected:
            yield from self._infected(result.threats, version, cached)
            return
        # counted on every message, cache hit or not: a cached OK says nothing about clamd's limits
        unscannable = [f"clamd: {name}{cached}" for name in result.unscannable]
        unscannable += [f"filterd's count: {p}" for p in exceeded(message, self.limits)]
        if unscannable:
            yield from self._unscannable(unscannable, version)
            return
        yield AddHeader(SCANNED_HEADER, f"{version} at {self.hostname}")
        yield AddHeader(STATUS_HEADER, "Clean")

    def _infected(self, threats: tuple[str, ...], version: str, cached: str) -> Iterable[Output]:
        names = ", ".join(threats)
        reason = f"virus {names} found by clamd{cached}"
        yield Finding("CLAM_VIRUS", reason)
        if self.s.on_infected == "reject":
            yield Reject(R554_VIRUS_FOUND.with_text(f"Message rejected: virus found: {names}"), reason)
        elif self.s.on_infected == "discard":
            yield Discard(reason)
        else:
            # the stored copy shows what was found, as the delivered one would have
            yield AddHeader(SCANNED_HEADER, f"{version} at {self.hostname}")
            yield AddHeader(STATUS_HEADER, f"Infected ({names})")
            yield Quarantine(reason)

    def _unscannable(self, why: list[str], version: str) -> Iterable[Output]:
        """clamd may not have looked at all of the message: never "Clean" (module docstring)."""
        reason = "not fully scanned for viruses: " + "; ".join(why)
        yield Finding("CLAM_UNSCANNABLE", reason)
        if self.s.on_unscannable == "reject":
            text = "Message rejected: it cannot be fully scanned for viruses (" + _short(why) + ")"
            yield Reject(R554_VIRUS_FOUND.with_text(text), reason)
            return
        yield AddHeader(SCANNED_HEADER, f"{version} at {self.hostname}")
        yield AddHeader(STATUS_HEADER, f"Unscanned ({_short(why)})")
        if self.s.on_unscannable == "quarantine":
            yield Quarantine(reason)

    def _scan(self, tx: Transaction, findings: list[Output]) -> tuple[ScanResult, str]:
        """Ask the cache, else clamd; return the result and clamd's version string."""
        message = tx.message
        cache = self._cache()
        version = self.engine_version()
        key = None
        if cache is not None and time.monotonic() < self._cache_down_until:
            findings.append(Finding("CLAM_CACHE_FAIL", "result cache (Redis) skipped: it failed moments ago"))
            cache = None
        if cache is not None:
            try:
                key = cache.key(version, message)
                hit = cache.get(key)
                if hit is not None:
                    return hit, version
            except Exception as exc:  # any Redis failure: scan uncached, say so
                findings.append(self._cache_failed(tx, exc))
                cache = None
        try:
            result = self.pool.scan(message.raw)
        except ClamdError:
            if cache is not None:
                # only a counter: the scan error being raised is what matters
                with contextlib.suppress(Exception):
                    cache.count_miss()
            raise
        if cache is not None and key is not None:
            try:
                cache.put(key, result)
            except Exception as exc:
                findings.append(self._cache_failed(tx, exc))
        return result, version

    def _cache_failed(self, tx: Transaction, exc: Exception) -> Finding:
        self._cache_down_until = time.monotonic() + CACHE_RETRY_AFTER
        log.warning(
            "%s: antivirus cache unavailable, scanning without it: %s: %s",
            tx.queue_id or "NOQUEUE",
            type(exc).__name__,
            exc,
        )
        return Finding("CLAM_CACHE_FAIL", f"result cache (Redis) unavailable: {type(exc).__name__}")

    def _unavailable(self, why: str) -> Iterable[Output]:
        reason = f"clamd unavailable: {why}"
        yield Finding("CLAM_VIRUS_FAIL", reason)
        if self.s.on_unavailable == "tempfail":
            yield TempFail(R451_VIRUS_SCAN_FAILED, reason)
        else:
            yield AddHeader(STATUS_HEADER, "Not scanned (virus scanner unavailable)")

    def _too_large(self, size: int, why: str) -> Iterable[Output]:
        reason = f"message of {size} bytes not scanned for viruses: {why}"
        yield Finding("CLAM_SKIPPED_SIZE", reason)
        if self.s.on_oversize == "tempfail":
            yield TempFail(R452_TOO_BIG_TO_SCAN, reason)
        elif self.s.on_oversize == "reject":
            yield Reject(R552_MESSAGE_TOO_BIG.with_text("Message too large for the virus scanner"), reason)
        else:
            yield AddHeader(STATUS_HEADER, f"Not scanned (message too large: {size} bytes)")


def _short(why: list[str]) -> str:
    """The limits named in `why`, for a header or an SMTP reply ("limits exceeded: MaxRecursion")."""
    names = []
    for text in why:
        tail = text.split(": ", 1)[-1]
        name = tail.split(" ", 1)[0]
        name = name.removeprefix("Heuristics.Limits.Exceeded.").removeprefix("Heuristics.")
        if name not in names:
            names.append(name)
    return "limits exceeded: " + ", ".join(names)

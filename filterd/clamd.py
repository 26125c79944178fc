"""Talking to clamd: INSTREAM scans over unix or TCP sockets, with failover, through pyclamd.

pyclamd 0.4.0 gives us the socket classes, the command framing and the reply parser, but four of
its habits are wrong on a mail path, so `_Connection` mixes in fixes:

- its constructors connect once "to test the socket": a clamd that is down at start-up would make
  the constructor raise.  We build the object without connecting and connect per command.
- `scan_stream` uses `socket.send`, which may write only part of a chunk on a socket with a
  timeout (Python makes it non-blocking underneath); we use `sendall`.
- `_recv_response` retries a failed `recv` five times, so a timeout of T really waits 5 T; and it
  leaves the socket open on errors.  We read once per call, against one deadline for the whole
  scan, and always close.
- when the length is a multiple of its chunk size it sends the size-0 terminator twice; we send
  it once.

A scan gives `ScanResult` (clean or the virus names) or raises `ClamdError` (unreachable, too slow,
clamd's own ERROR reply) / `ClamdTooLarge` (over clamd's StreamMaxLength).  `ClamdPool` tries the
configured sockets in order and skips one that just failed for `retry_after` seconds, so a dead
primary does not cost a connect timeout on every message.  Each socket also has a circuit breaker
(filterd/breaker.py): one that keeps failing is not tried at all for a while, and with every
socket's breaker open a scan fails at once with `ClamdBreakerOpen` (a `ClamdError`).  A scan that
times out counts against clamd only when clamd does not answer PING either: a clamd busy with one
hard message is not a dead clamd, and a sender must not be able to open the breaker with a
message that takes long to scan.
"""

from __future__ import annotations

import logging
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any

import pyclamd

from filterd.breaker import Breaker, BreakerOpen, BreakerSettings, breaker_for

log = logging.getLogger("filterd.clamd")

CHUNK = 64 * 1024
_INET = re.compile(r"^inet6?:(\d{1,5})@(.+)$")
# ExtendedDetectionInfo adds "(md5:size)" after the name; the name alone is what a reply shows.
_EXTENDED_INFO = re.compile(r"\([0-9a-f]{32,64}:\d+\)$")


class ClamdError(Exception):
    """clamd could not give an answer: unreachable, too slow, or it replied ERROR."""


class ClamdTooLarge(ClamdError):
    """The message is over clamd's StreamMaxLength (clamd replied "INSTREAM size limit exceeded")."""


class ClamdBreakerOpen(BreakerOpen, ClamdError):
    """No clamd was asked: the breaker of every configured socket is open."""


# FOUND names that say "I could not look at all of it", not "I found malware": a limit passed
# (AlertExceedsMax: Heuristics.Limits.Exceeded.MaxRecursion, .MaxFileSize, .MaxScanSize, .MaxFiles,
# ...), a file too broken to parse (AlertBrokenExecutables, AlertBrokenMedia: Heuristics.Broken.*),
# or an archive or document it cannot decrypt (AlertEncrypted*: Heuristics.Encrypted.*).  Other
# Heuristics.* names (Phishing, OLE2 macros, ...) are detections like any signature.
UNSCANNABLE_PREFIXES = ("Heuristics.Limits.Exceeded", "Heuristics.Broken.", "Heuristics.Encrypted.")


def is_unscannable(name: str) -> bool:
    """True for a FOUND name that reports a limit or an unreadable file rather than malware."""
    return name.startswith(UNSCANNABLE_PREFIXES)


@dataclass(frozen=True)
class ScanResult:
    viruses: tuple[str, ...]  # every FOUND name, unscannable ones included; empty when clean
    address: str  # the clamd that answered ("cache" when the answer came from Redis)

    @property
    def threats(self) -> tuple[str, ...]:
        """The names that report malware (a signature or a detection heuristic)."""
        return tuple(v for v in self.viruses if not is_unscannable(v))

    @property
    def unscannable(self) -> tuple[str, ...]:
        """The names that report a limit passed or a file clamd could not read."""
        return tuple(v for v in self.viruses if is_unscannable(v))

    @property
    def infected(self) -> bool:
        return bool(self.threats)


def check_address(value: str) -> str | None:
    """Validator for one clamd address in the config."""
    if value.startswith("unix:"):
        return None if value[5:].startswith("/") else "a unix socket needs an absolute path"
    m = _INET.match(value)
    if m and 0 < int(m.group(1)) < 65536:
        return None
    return f'{value!r}: expected "unix:/path/to/clamd.ctl" or "inet:PORT@HOST"'


class _Connection:
    """The fixes described in the module docstring, mixed in before a pyclamd socket class."""

    timeout: float | None
    clamd_socket: socket.socket
    deadline: float = 0.0

    def _init_socket(self) -> None:
        try:
            super()._init_socket()  # type: ignore[misc]
        except OSError:
            self.clamd_socket.close()
            raise

    def _remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("clamd did not answer in time")
        return left

    def _recv_response(self) -> str:
        self.clamd_socket.settimeout(self._remaining())
        data = self.clamd_socket.recv(4096)
        return data.decode("utf-8", "replace").strip()

    def command(self, cmd: str, timeout: float) -> str:
        """Send one short command (PING, VERSION) and return the whole reply."""
        self.deadline = time.monotonic() + timeout
        self._init_socket()
        try:
            self._send_command(cmd)  # type: ignore[attr-defined]
            return self._read_all()
        finally:
            self.clamd_socket.close()

    def _read_all(self) -> str:
        chunks = []
        while True:
            self.clamd_socket.settimeout(self._remaining())
            data = self.clamd_socket.recv(4096)
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks).decode("utf-8", "replace").strip()

    def scan_bytes(self, data: bytes, timeout: float) -> list[tuple[str, str]]:
        """INSTREAM `data`; return (status, text) per reply line, status being OK, FOUND or ERROR."""
        self.deadline = time.monotonic() + timeout
        self._init_socket()
        cut = False  # clamd closed the connection while we were still streaming
        try:
            self.clamd_socket.settimeout(self._remaining())
            self._send_command("INSTREAM")  # type: ignore[attr-defined]
            view = memoryview(data)
            try:
                for start in range(0, len(data), CHUNK):
                    chunk = view[start : start + CHUNK]
                    self.clamd_socket.settimeout(self._remaining())
                    self.clamd_socket.sendall(struct.pack("!L", len(chunk)) + bytes(chunk))
                self.clamd_socket.settimeout(self._remaining())
                self.clamd_socket.sendall(struct.pack("!L", 0))
            except (BrokenPipeError, ConnectionResetError):
                cut = True
            try:
                reply = self._read_all()
            except ConnectionResetError:
                # clamd stops reading at StreamMaxLength, writes why and closes; with our data
                # still unread in its socket the kernel resets the connection, which can destroy
                # that reply before we read it
                cut, reply = True, ""
        finally:
            self.clamd_socket.close()
        if "INSTREAM size limit exceeded" in reply:
            raise ClamdTooLarge(reply.strip())
        if cut and not reply:
            if self._answers_ping():
                raise ClamdTooLarge(
                    f"clamd closed the stream of {len(data)} bytes but answers PING: over its StreamMaxLength"
                )
            raise ClamdError("clamd closed the connection during the scan")
        results = []
        for line in reply.splitlines():
            _, text, status = self._parse_response(line)  # type: ignore[attr-defined]
            results.append((status, text))
        if not results:
            raise ClamdError("clamd closed the connection without a reply")
        return results

    def _answers_ping(self) -> bool:
        try:
            return self.command("PING", 1.0) == "PONG"
        except OSError:
            return False


class _UnixConnection(_Connection, pyclamd.ClamdUnixSocket):
    def __init__(self, path: str) -> None:  # no connect here: see the module docstring
        self.unix_socket = path
        self.timeout = None


class _TcpConnection(_Connection, pyclamd.ClamdNetworkSocket):
    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.timeout = None


def connection(address: str, connect_timeout: float) -> _Connection:
    """A connection object for one configured address (it connects per command)."""
    conn: _Connection
    if address.startswith("unix:"):
        conn = _UnixConnection(address[5:])
    else:
        m = _INET.match(address)
        if m is None:
            raise ValueError(check_address(address))
        conn = _TcpConnection(m.group(2).strip("[]"), int(m.group(1)))
    conn.timeout = connect_timeout  # pyclamd applies it to connect(); later operations use the deadline
    return conn


def virus_name(text: str) -> str:
    """The signature name from a FOUND reply, without ExtendedDetectionInfo's "(md5:size)"."""
    return _EXTENDED_INFO.sub("", text).strip()


class ClamdPool:
    """The configured clamd sockets, tried in order; one that fails is skipped for a while."""

    def __init__(
        self,
        addresses: tuple[str, ...],
        timeout: float,
        connect_timeout: float,
        retry_after: float,
        breaker: BreakerSettings | None = None,
    ) -> None:
        """`breaker`: the circuit breaker settings ([breaker]); None: no breaker (tools, tests)."""
        if not addresses:
            raise ValueError("no clamd address configured")
        self.addresses = addresses
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.retry_after = retry_after
        self._down_until: dict[str, float] = {}
        self._lock = threading.Lock()
        self._breakers = {a: breaker_for(f"clamd {a}", breaker) for a in addresses} if breaker else {}

    def _order(self) -> list[str]:
        """Healthy sockets first (config order), then the ones marked down (as a last resort)."""
        now = time.monotonic()
        with self._lock:
            up = [a for a in self.addresses if self._down_until.get(a, 0.0) <= now]
            down = [a for a in self.addresses if a not in up]
        return up + down

    def _mark(self, address: str, ok: bool) -> None:
        with self._lock:
            if ok:
                self._down_until.pop(address, None)
            else:
                self._down_until[address] = time.monotonic() + self.retry_after

    def _refusal(self, address: str) -> str | None:
        """Why `address` is not to be asked now (its breaker is open), or None."""
        breaker = self._breakers.get(address)
        return breaker.refusal() if breaker is not None else None

    def _answered(self, address: str) -> None:
        self._mark(address, True)
        breaker = self._breakers.get(address)
        if breaker is not None:
            breaker.success()

    def _failed(self, address: str, exc: BaseException, conn: _Connection | None = None) -> None:
        """Count a failure against `address`; a timed-out scan (`conn` given) only when clamd does
        not answer PING either (see the module docstring)."""
        self._mark(address, False)
        breaker: Breaker | None = self._breakers.get(address)
        if breaker is None:
            return
        timed_out = isinstance(exc, TimeoutError | socket.timeout)
        if conn is not None and timed_out and conn._answers_ping():
            breaker.success()  # alive: this message is what takes long
        else:
            breaker.failure(_describe(exc) + (" (and no answer to PING)" if timed_out and conn else ""))

    @staticmethod
    def _give_up(errors: list[str], refused: int) -> ClamdError:
        if refused == len(errors):
            return ClamdBreakerOpen("; ".join(errors))
        return ClamdError("; ".join(errors))

    def scan(self, data: bytes) -> ScanResult:
        """Scan with the first clamd that answers; raise ClamdError when none does."""
        errors = []
        refused = 0
        for address in self._order():
            refusal = self._refusal(address)
            if refusal is not None:
                errors.append(refusal)
                refused += 1
                continue
            conn = connection(address, self.connect_timeout)
            try:
                lines = conn.scan_bytes(data, self.timeout)
            except ClamdTooLarge:
                self._answered(address)  # clamd is fine, the message is too big for it
                raise
            except (OSError, ClamdError) as exc:
                self._failed(address, exc, conn)
                errors.append(f"{address}: {_describe(exc)}")
                log.warning("clamd %s failed, trying the next one: %s", address, _describe(exc))
                continue
            failed = [text for status, text in lines if status == "ERROR"]
            if failed:
                # clamd's own error (out of memory, a temp file it could not write): the next may
                # cope.  It answered at once, so its breaker counts it as alive.
                self._answered(address)
                self._mark(address, False)
                errors.append(f"{address}: clamd error: {'; '.join(failed)}")
                continue
            self._answered(address)
            found = tuple(virus_name(text) for status, text in lines if status == "FOUND")
            return ScanResult(viruses=found, address=address)
        raise self._give_up(errors, refused)

    def version(self, timeout: float | None = None) -> str:
        """clamd's VERSION reply ("ClamAV 1.4.6/27470/..."): engine and signature versions.

        `timeout` (default: the scan timeout) bounds the wait for each clamd."""
        errors = []
        refused = 0
        for address in self._order():
            refusal = self._refusal(address)
            if refusal is not None:
                errors.append(refusal)
                refused += 1
                continue
            try:
                reply = connection(address, self.connect_timeout).command("VERSION", timeout or self.timeout)
            except OSError as exc:
                self._failed(address, exc)
                errors.append(f"{address}: {_describe(exc)}")
                continue
            self._answered(address)
            return reply
        raise self._give_up(errors, refused)

    def status(self) -> list[dict[str, Any]]:
        """For `filterctl antivirus status`: each socket, whether it answers, and its version."""
        out = []
        for address in self.addresses:
            started = time.perf_counter()
            try:
                conn = connection(address, self.connect_timeout)
                pong = conn.command("PING", self.timeout)
                version = connection(address, self.connect_timeout).command("VERSION", self.timeout)
                out.append(
                    {
                        "address": address,
                        "ok": pong == "PONG",
                        "version": version,
                        "ms": round((time.perf_counter() - started) * 1000, 2),
                    }
                )
            except OSError as exc:
                out.append({"address": address, "ok": False, "error": _describe(exc)})
        return out


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, ClamdError) else f"{type(exc).__name__}: {text}"

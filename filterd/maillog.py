"""filterd's log, read as the mail log: where it goes, its severities, and the queue id on its lines.

Where (`[log] destination`):

- ``syslog`` (the default): datagrams to the local syslog socket (/dev/log), facility ``mail``,
  as Postfix, OpenDKIM and clamav-milter log, so the lines land in /var/log/mail.log (rsyslog) or
  in the journal with SYSLOG_FACILITY=2 (journald listens on /dev/log too).  A line that cannot
  be sent (syslog restarting) is written to stderr rather than lost.
- ``journald-stderr``: stderr, each line prefixed with its severity as ``<N>`` (sd-daemon(3)),
  for a systemd unit whose stderr is the journal.  journald then keeps the severity and adds
  ``filterd[pid]:`` itself, so filterd does not (that prefix used to appear twice).  journald
  takes the facility from the unit's ``SyslogFacility=``, not from the line.
- ``stderr``: plain lines ``filterd[pid]: ...`` for a terminal or a container; when systemd says
  (``$JOURNAL_STREAM``, systemd.exec(5)) that stderr is the journal, it behaves as
  ``journald-stderr``.

Severities: info for verdicts, warning when a check failed and its fail-open or fail-closed policy
was applied, error for filterd's own failures (syslog's ``err``).  As in Postfix's log, a line
that is not info says so in its text too (``warning:``): rsyslog's default mail.log shows no
severity.

The queue id: while a milter callback runs, `handling` names the message being handled (the
milter sets it around each callback), and every line logged meanwhile -- by the pipeline, a check,
or a service deep inside one (clamd, Redis, the circuit breakers) -- starts with its Postfix queue
id, ``NOQUEUE`` before Postfix has one (as Postfix writes).  A context variable rather than an
argument: those services know nothing of messages, and threading the id through every call would
change the signature of each.  libmilter runs a connection's callbacks one at a time, each in
one thread, and the variable is set on entry and reset on exit of every callback, so a thread
that serves another connection next never sees this one's id.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from logging.handlers import SysLogHandler
from types import TracebackType
from typing import Literal, Protocol

from filterd.settings import setting

DEFAULT_SOCKET = "/dev/log"
# A send to syslog blocks while its queue is full (a stuck syslog daemon); the line is logged on
# the mail path, so it waits at most this long and then goes to stderr instead.
SEND_TIMEOUT = 0.5
FACILITIES: dict[str, int] = dict(SysLogHandler.facility_names)

# syslog severities (RFC 5424 section 6.2.1) of Python's levels
_SEVERITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}
# the word a line that is not info carries in its text, as Postfix's "warning: "
_LABEL = {
    logging.DEBUG: "debug: ",
    logging.WARNING: "warning: ",
    logging.ERROR: "error: ",
    logging.CRITICAL: "critical: ",
}
# RFC 3164 timestamps use English month names, whatever the locale
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def check_facility(value: str) -> str | None:
    if value in FACILITIES:
        return None
    return "expected a syslog facility: " + ", ".join(sorted(FACILITIES))


def check_log_socket(value: str) -> str | None:
    return None if value.startswith("/") else "expected the absolute path of a unix datagram socket"


def check_ident(value: str) -> str | None:
    ok = value and value.isprintable() and not any(c in value for c in " :[]")
    return None if ok else "expected a program name without spaces, colons or brackets"


Destination = Literal["syslog", "journald-stderr", "stderr"]


@dataclass(frozen=True)
class LogSettings:
    destination: Destination = setting(
        "syslog",
        'where the log goes: "syslog" (the mail log, through the socket below), "journald-stderr" '
        "(stderr with <N> severity prefixes, for a systemd unit; set SyslogFacility=mail there) or "
        '"stderr" (plain lines; the same as journald-stderr when systemd says stderr is the journal).  '
        "The level is [milter] log_level",
    )
    facility: str = setting("mail", "syslog facility", check_facility)
    socket: str = setting(
        DEFAULT_SOCKET, "the local syslog socket (a unix datagram socket)", check_log_socket
    )
    ident: str = setting("filterd", "the program name on each line (filterd[PID]: ...)", check_ident)


# -- the message being handled -------------------------------------------------------------------


class HasQueueId(Protocol):
    @property
    def queue_id(self) -> str | None: ...


_handled: contextvars.ContextVar[HasQueueId | None] = contextvars.ContextVar("filterd_handled", default=None)


class _Handling:
    """See `handling`.  A class, not a generator-based context manager: it wraps every callback."""

    __slots__ = ("message", "token")

    def __init__(self, message: HasQueueId) -> None:
        self.message = message

    def __enter__(self) -> None:
        self.token = _handled.set(self.message)

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        _handled.reset(self.token)


def handling(message: HasQueueId) -> _Handling:
    """Within ``with handling(message):`` log lines name the queue id of `message`, read when a
    line is logged: Postfix gives the id only at DATA, in the middle of the message's callbacks."""
    return _Handling(message)


def current_queue_id() -> str | None:
    """The queue id of the message being handled (``NOQUEUE`` before Postfix gives one), or None
    outside any message (the parent, a worker's own threads)."""
    message = _handled.get()
    if message is None:
        return None
    return message.queue_id or "NOQUEUE"


def line_text(record: logging.LogRecord) -> str:
    """A record's text as the mail log shows it: the queue id first (unless the message already
    starts with it), then ``warning:`` or ``error:`` when it is not info, then the message, and
    the traceback if any."""
    message = record.getMessage()
    label = _LABEL.get(record.levelno, "")
    if getattr(record, "verdict_line", False):  # its shape stays "QID: action=..." (filterd.report)
        label = ""
    qid = current_queue_id()
    if qid is not None:
        if message.startswith(qid + ": "):
            message = message[len(qid) + 2 :]
        text = f"{qid}: {label}{message}"
    elif label:
        text = label + message
    else:
        text = message
    if record.exc_info:
        text += "\n" + logging.Formatter().formatException(record.exc_info)
    return text


def severity(levelno: int) -> int:
    """The syslog severity (0 emergency .. 7 debug) of a logging level."""
    if levelno in _SEVERITY:
        return _SEVERITY[levelno]
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    return 6 if levelno >= logging.INFO else 7


def syslog_timestamp(when: float) -> str:
    """RFC 3164's ``Mmm dd hh:mm:ss`` in local time, as glibc's syslog() writes it."""
    t = time.localtime(when)
    return f"{_MONTHS[t.tm_mon - 1]} {t.tm_mday:2d} {t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"


# -- formatters: one per destination --------------------------------------------------------------


class SyslogFormatter(logging.Formatter):
    """``<PRI>Mmm dd hh:mm:ss ident[pid]: text``: what glibc's syslog() sends to /dev/log.

    A multi-line text (a traceback) stays one datagram: syslog keeps it as one entry."""

    def __init__(self, ident: str, facility: str) -> None:
        super().__init__()
        self.ident = ident
        self.facility = FACILITIES[facility]

    def format(self, record: logging.LogRecord) -> str:
        pri = self.facility * 8 + severity(record.levelno)
        return (
            f"<{pri}>{syslog_timestamp(record.created)} {self.ident}[{record.process}]: {line_text(record)}"
        )


class JournaldFormatter(logging.Formatter):
    """Each line ``<N>text``: journald reads the severity from the prefix (sd-daemon(3)) and
    adds the program name and pid itself.  Every line of a traceback gets the prefix, so none
    of them is taken for info."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{severity(record.levelno)}>"
        return "\n".join(prefix + line for line in line_text(record).split("\n"))


class StderrFormatter(logging.Formatter):
    """``ident[pid]: text``, for a terminal or a container's log."""

    def __init__(self, ident: str) -> None:
        super().__init__()
        self.ident = ident

    def format(self, record: logging.LogRecord) -> str:
        return f"{self.ident}[{record.process}]: {line_text(record)}"


# -- the syslog handler ------------------------------------------------------------------------


class SyslogSocketHandler(logging.Handler):
    """Sends each record as one datagram to a local unix syslog socket.

    The socket is connected once, in the parent; forked workers share it (a datagram is sent
    whole, whoever sends it).  When a send fails (syslog restarted) it reconnects once and
    tries again; a line that still cannot go, or that syslog does not take within SEND_TIMEOUT,
    is written to stderr, never dropped silently."""

    def __init__(self, path: str, formatter: SyslogFormatter) -> None:
        super().__init__()
        self.path = path
        self.setFormatter(formatter)
        self.sock: socket.socket | None = None
        self.connect()

    def connect(self) -> None:
        """Connect to the socket; raises OSError when there is no syslog there."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.settimeout(SEND_TIMEOUT)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        self.sock = sock

    def emit(self, record: logging.LogRecord) -> None:
        try:
            packet = self.format(record).encode("utf-8", "backslashreplace")
        except Exception:
            self.handleError(record)
            return
        try:
            self._send(packet)
        except TimeoutError:  # syslog is there but stuck: no second wait on the mail path
            _to_stderr(packet, f"(syslog {self.path} did not take it within {SEND_TIMEOUT:g} s)")
        except OSError:
            try:
                self.connect()
                self._send(packet)
            except OSError as exc:
                _to_stderr(packet, f"(syslog {self.path} unreachable: {exc.strerror})")

    def _send(self, packet: bytes) -> None:
        if self.sock is None:
            raise OSError(0, "not connected")
        self.sock.send(packet)

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
        self.sock = None
        super().close()


_stderr_lock = threading.Lock()


def _to_stderr(packet: bytes, note: str) -> None:
    text = packet.decode("utf-8", "replace")
    with _stderr_lock:
        try:
            sys.stderr.write(f"{text} {note}\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass


# -- set-up ------------------------------------------------------------------------------------


def stderr_is_journal() -> bool:
    """Is stderr connected to the journal?  systemd sets $JOURNAL_STREAM to its device and inode
    (systemd.exec(5)) for exactly this question."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = stream.partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return st.st_dev == int(dev) and st.st_ino == int(ino)


def stderr_handler(settings: LogSettings) -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    journal = settings.destination == "journald-stderr" or stderr_is_journal()
    handler.setFormatter(JournaldFormatter() if journal else StderrFormatter(settings.ident))
    return handler


def make_handler(settings: LogSettings) -> tuple[logging.Handler, str | None]:
    """The handler for `settings`, and why it is not the one asked for (None when it is)."""
    if settings.destination == "syslog":
        try:
            return SyslogSocketHandler(
                settings.socket, SyslogFormatter(settings.ident, settings.facility)
            ), None
        except OSError as exc:
            return stderr_handler(
                settings
            ), f"cannot log to syslog at {settings.socket} ({exc.strerror}): logging to stderr"
    return stderr_handler(settings), None


_installed: logging.Handler | None = None


def configure(settings: LogSettings, level: str) -> None:
    """Send the log where `settings` says, at `level` ("debug" .. "error").  Called by the daemon
    at start and on each reload (the workers forked after it inherit the handler)."""
    global _installed
    handler, fallback = make_handler(settings)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        if old is _installed:
            old.close()
    root.addHandler(handler)
    root.setLevel(level.upper())
    _installed = handler
    if fallback:
        logging.getLogger("filterd").warning("%s", fallback)


def configure_early() -> None:
    """Before the configuration is read: plain stderr (a configuration error is printed there)."""
    configure(LogSettings(destination="stderr"), "info")

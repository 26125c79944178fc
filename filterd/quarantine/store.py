"""The quarantine store: messages held back by filterd, kept durably until an admin releases
(`filterd.quarantine.release`) or deletes them.

Replaces amavisd-new's quarantine.  Each message is two files in one directory::

    <ID>.eml   the headers filterd would have added, then the exact bytes received
    <ID>.json  metadata: time, queue id, client, HELO, envelope, score, symbols, reason, ...

Our headers go *before* the received bytes (not where Postfix would put them), so the original is
the file from ``header_offset`` on, byte for byte, and the admin who opens the .eml sees the
verdict at the top.

Durability: the milter tells Postfix to discard a quarantined message only after `put` returned,
so `put` must not return before the data is on disk.  Each file is written to a temporary name,
fsync'ed, renamed into place, and the directory is fsync'ed.  The .json is renamed last: an entry
exists once its metadata does, and a crash in between leaves only an orphan .eml, removed by
`purge`.  Any failure (disk full, read-only, permissions) raises `QuarantineError` and the milter
tempfails: Postfix keeps the message and nothing is lost.  Files are mode 0600.

Every change holds the entry's lock (`QuarantineStore.locked`): ``<ID>.lock`` created with
O_CREAT|O_EXCL (atomic on a local filesystem), so of two concurrent operations one wins and the
other is refused.  An operation that died half-way leaves the lock, and further ones are refused
until an admin checks and removes it.

IDs are ``YYYYMMDD-HHMMSS-<10 hex digits>`` (UTC time of quarantine, random suffix): they sort by
time and are validated against that pattern before any path is built from them.

`filterctl` often runs as root over a directory the filterd user writes, so every file is read
as if it were hostile (`read_private`): the directory must be a real directory writable by its
owner only; a file is opened with O_NOFOLLOW (a planted symlink is refused, not followed) and
must be a regular file with one link (a hard link to /etc/shadow is refused), writable by its
owner only, and owned by the directory's owner, by root, or by the user running the command.
Writes never follow a link either: new files use O_EXCL, replacing uses rename.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import email.utils
import errno
import hashlib
import json
import os
import re
import secrets
import stat
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from filterd.settings import positive, setting

if TYPE_CHECKING:
    from filterd.pipeline import Verdict
    from filterd.transaction import Transaction

ID_PATTERN = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{10}$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
TMP_PREFIX = ".tmp-"


def parse_duration(text: str) -> float:
    """Seconds in "90s", "15m", "12h", "30d", "2w" (a bare number is seconds); ValueError otherwise."""
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a duration: expected a number and a unit, e.g. 30d, 12h, 15m")
    return float(m.group(1)) * _UNITS[m.group(2)]


def _check_duration(value: str) -> str | None:
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        return str(exc)
    return None if seconds > 0 else "expected a duration greater than zero"


def _check_absolute(value: str) -> str | None:
    return None if value.startswith("/") else "expected an absolute path"


def _check_release_via(value: str) -> str | None:
    if value.startswith("/"):
        return None  # a UNIX-domain socket
    host, _, port = value.rpartition(":")
    if host and port.isdigit() and 0 < int(port) < 65536:
        return None
    return "expected the absolute path of a UNIX-domain socket, or HOST:PORT"


@dataclass(frozen=True)
class QuarantineSettings:
    mode: Literal["store", "hold"] = setting(
        "store",
        '"store": filterd keeps the message (filterctl quarantine ...); '
        '"hold": Postfix\'s hold queue (postqueue -p, postsuper -H)',
    )
    directory: str = setting("/var/lib/filterd/quarantine", "where stored messages are kept", _check_absolute)
    max_age: str = setting(
        "30d",
        "retention: `filterctl quarantine purge` without --older-than removes older entries",
        _check_duration,
    )
    release_via: str = setting(
        "/var/spool/postfix/private/filterd-reinject",
        "the smtpd listener without milters that released messages are re-injected to: the path of "
        "its UNIX-domain socket (only root and postfix can reach Postfix's private/), or HOST:PORT",
        _check_release_via,
    )
    release_timeout: float = setting(30.0, "seconds for the SMTP conversation of a release", positive)

    @property
    def max_age_seconds(self) -> float:
        return parse_duration(self.max_age)


class QuarantineError(Exception):
    """A quarantine operation failed; the message says what and why.  `exit_code` is for filterctl."""

    exit_code = 1


class InvalidId(QuarantineError):
    exit_code = 2


class UnknownId(QuarantineError):
    pass


class AlreadyReleased(QuarantineError):
    pass


class ReleaseLocked(QuarantineError):
    pass


class ReleaseFailed(QuarantineError):
    pass


def validate_id(qid: str) -> str:
    if not ID_PATTERN.fullmatch(qid):  # fullmatch: "$" alone would accept a trailing newline
        raise InvalidId(f"{qid!r} is not a quarantine id (expected YYYYMMDD-HHMMSS-xxxxxxxxxx)")
    return qid


@dataclass
class Entry:
    """One quarantined message: its metadata and where its data is."""

    id: str
    meta: dict[str, Any]
    data_path: Path

    @property
    def timestamp(self) -> float:
        return float(self.meta.get("timestamp", 0.0))

    @property
    def released(self) -> dict[str, Any] | None:
        return self.meta.get("released")

    def stored(self) -> bytes:
        """The .eml file: filterd's headers, then the message as received."""
        try:
            return read_private(self.data_path)
        except FileNotFoundError:
            raise QuarantineError(f"the data of {self.id} is missing: {self.data_path}") from None

    def original(self) -> bytes:
        """The exact bytes received."""
        return self.stored()[int(self.meta.get("header_offset", 0)) :]


class QuarantineStore:
    def __init__(self, settings: QuarantineSettings) -> None:
        self.settings = settings
        self.dir = Path(settings.directory)

    # -- paths --------------------------------------------------------------------------------

    def _data(self, qid: str) -> Path:
        return self.dir / f"{validate_id(qid)}.eml"

    def _meta(self, qid: str) -> Path:
        return self.dir / f"{validate_id(qid)}.json"

    def _lock(self, qid: str) -> Path:
        return self.dir / f"{validate_id(qid)}.lock"

    # -- writing ------------------------------------------------------------------------------

    def put(self, raw: bytes, added_headers: Sequence[tuple[str, str]], meta: Mapping[str, Any]) -> str:
        """Store a message durably and return its id; raise QuarantineError if it is not on disk."""
        now = time.time()
        qid = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now)) + "-" + secrets.token_hex(5)
        head = render_headers(added_headers, _line_ending(raw))
        record = dict(meta)
        record.update(
            id=qid,
            time=dt.datetime.fromtimestamp(now, dt.UTC).isoformat(timespec="seconds"),
            timestamp=now,
            size=len(raw),
            sha256=hashlib.sha256(raw).hexdigest(),
            header_offset=len(head),
            added_headers=[[n, v] for n, v in added_headers],
            released=None,
        )
        record.setdefault("subject", _header(raw, "Subject"))
        record.setdefault("header_from", _header(raw, "From"))
        try:
            meta_bytes = json.dumps(_printable(record), indent=1, ensure_ascii=False).encode("utf-8") + b"\n"
        except (TypeError, ValueError) as exc:
            raise QuarantineError(f"metadata is not JSON-serialisable: {exc}") from exc
        written: list[Path] = []
        try:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            tmp_data = self._write_temp(head + raw, written)
            tmp_meta = self._write_temp(meta_bytes, written)
            os.rename(tmp_data, self._data(qid))
            written.append(self._data(qid))
            os.rename(tmp_meta, self._meta(qid))
            written.append(self._meta(qid))
            _fsync_dir(self.dir)
        except OSError as exc:
            for path in written:
                with contextlib.suppress(OSError):
                    path.unlink()
            raise QuarantineError(f"cannot store message in quarantine {self.dir}: {why(exc)}") from exc
        return qid

    def _write_temp(self, data: bytes, written: list[Path]) -> Path:
        path = self.dir / f"{TMP_PREFIX}{secrets.token_hex(8)}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        written.append(path)
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)  # whatever the umask
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return path

    def replace_meta(self, qid: str, meta: dict[str, Any]) -> None:
        written: list[Path] = []
        try:
            tmp = self._write_temp(json.dumps(meta, indent=1, ensure_ascii=False).encode() + b"\n", written)
            os.replace(tmp, self._meta(qid))
            _fsync_dir(self.dir)
        except OSError:
            for path in written:
                with contextlib.suppress(OSError):
                    path.unlink()
            raise

    # -- reading ------------------------------------------------------------------------------

    def get(self, qid: str) -> Entry:
        meta_path = self._meta(qid)
        try:
            meta = json.loads(read_private(meta_path))
        except FileNotFoundError:
            raise UnknownId(f"no quarantined message with id {qid} in {self.dir}") from None
        except ValueError as exc:
            raise QuarantineError(f"cannot read {meta_path}: {exc}") from exc
        return Entry(id=qid, meta=meta, data_path=self._data(qid))

    def entries(self) -> list[Entry]:
        """Every complete entry, oldest first; unreadable metadata is skipped (purge removes it)."""
        try:
            names = [p.name for p in self.dir.iterdir() if p.suffix == ".json"]
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise QuarantineError(f"cannot list quarantine {self.dir}: {why(exc)}") from exc
        found = []
        for name in names:
            qid = name[: -len(".json")]
            if not ID_PATTERN.fullmatch(qid):
                continue
            try:
                found.append(self.get(qid))
            except QuarantineError:
                continue  # deleted while we listed, or unreadable
        # the id's time has a resolution of one second; the metadata's timestamp orders within it
        found.sort(key=lambda e: (e.timestamp, e.id))
        return found

    # -- changing -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self, qid: str, action: str) -> Iterator[Entry]:
        """Hold the entry's lock file for one operation (release, delete, purge)."""
        entry = self.get(qid)
        lock = self._lock(qid)
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            since = _mtime_text(lock)
            raise ReleaseLocked(
                f"{qid} is locked by another operation since {since} ({lock}); if no filterctl is "
                "running, a release may have been interrupted: check whether it was delivered, "
                "then remove the lock file"
            ) from None
        except OSError as exc:
            raise QuarantineError(f"cannot lock {qid} for {action}: {why(exc)}") from exc
        try:
            with os.fdopen(fd, "w") as f:
                f.write(f"{action} pid={os.getpid()} time={time.time():.0f}\n")
            entry = self.get(qid)  # re-read under the lock: another process may have changed it
            yield entry
        finally:
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()

    def delete(self, qid: str) -> None:
        with self.locked(qid, "delete"):
            self._remove(qid)

    def _remove(self, qid: str) -> None:
        # metadata first: once it is gone the entry no longer exists, whatever happens next
        for path in (self._meta(qid), self._data(qid)):
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise QuarantineError(f"cannot remove {path}: {why(exc)}") from exc
        with contextlib.suppress(OSError):
            _fsync_dir(self.dir)

    def purge(self, older_than: float, dry_run: bool = False) -> list[str]:
        """Remove entries quarantined more than `older_than` seconds ago, data and metadata together,
        and leftovers of interrupted writes (temporary files, .eml without .json) as old.
        Returns the ids (or file names, for leftovers) removed."""
        cutoff = time.time() - older_than
        removed: list[str] = []
        for entry in self.entries():
            if entry.timestamp >= cutoff:
                continue
            if dry_run:
                removed.append(entry.id)
                continue
            try:
                with self.locked(entry.id, "purge"):
                    self._remove(entry.id)
            except (ReleaseLocked, UnknownId):
                continue  # being released or deleted right now: leave it to that operation
            removed.append(entry.id)
        try:
            leftovers = list(self.dir.iterdir())
        except FileNotFoundError:
            return removed
        for path in leftovers:
            stem = path.name.split(".")[0]
            orphan = path.suffix == ".eml" and not (self.dir / f"{stem}.json").exists()
            if not (path.name.startswith(TMP_PREFIX) or orphan):
                continue
            with contextlib.suppress(OSError):
                if path.lstat().st_mtime < cutoff:
                    if not dry_run:
                        path.unlink()
                    removed.append(path.name)
        return removed


def matches(
    entry: Entry,
    since: float | None = None,
    reason: str | None = None,
    sender: str | None = None,
    rcpt: str | None = None,
) -> bool:
    """The filters of `filterctl quarantine list`: substring matches, case-insensitive."""
    m = entry.meta
    if since is not None and entry.timestamp < since:
        return False
    if reason and reason.lower() not in str(m.get("reason", "")).lower():
        return False
    if sender:
        haystack = f"{m.get('mail_from') or ''} {m.get('header_from') or ''}".lower()
        if sender.lower() not in haystack:
            return False
    return not (rcpt and not any(rcpt.lower() in r.lower() for r in m.get("rcpts") or []))


def meta_from(tx: Transaction, verdict: Verdict) -> dict[str, Any]:
    """The metadata the milter hands to `put` for a transaction it quarantines."""
    session = tx.session
    if verdict.decision is not None:
        reason = verdict.decision.reason
    else:
        reason = f"score {verdict.score} >= quarantine threshold"
    return {
        "queue_id": tx.queue_id,
        "client_addr": session.client_addr,
        "client_name": session.client_name,
        "helo": session.helo,
        "mail_from": tx.mail_from,
        "rcpts": list(tx.rcpts),
        "auth_user": tx.auth_user,
        "score": verdict.score,
        "required": verdict.required,
        "action": verdict.action.value,
        "symbols": [{"name": s.name, "score": s.score, "reason": s.reason} for s in verdict.symbols],
        "reason": reason,
    }


def render_headers(headers: Sequence[tuple[str, str]], eol: bytes) -> bytes:
    """Header lines in the message's own line ending; a folded value keeps its folds."""
    out = []
    for name, value in headers:
        lines = value.replace("\r\n", "\n").split("\n")
        out.append(eol.join(line.encode("utf-8") for line in [f"{name}: {lines[0]}", *lines[1:]]) + eol)
    return b"".join(out)


def _line_ending(raw: bytes) -> bytes:
    first = raw.find(b"\n")
    return b"\r\n" if first > 0 and raw[first - 1 : first] == b"\r" else b"\n"


def _header(raw: bytes, name: str) -> str | None:
    from filterd.message import Message

    return Message(raw).decoded_header(name)


def _printable(value: Any) -> Any:
    """Strings made valid UTF-8: header values decoded with surrogateescape (8-bit, non-UTF-8 input)
    would make the JSON unencodable, and a message must never be tempfailed for its Subject."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    if isinstance(value, dict):
        return {_printable(k): _printable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_printable(v) for v in value]
    return value


def read_private(path: Path) -> bytes:
    """The bytes of a file in the quarantine directory, read without trusting its name.

    Raises FileNotFoundError if it does not exist, QuarantineError (saying what is wrong) if the
    directory or the file is not as filterd leaves them: see the module docstring."""
    directory = _check_directory(path.parent)
    try:
        # O_NONBLOCK: a FIFO planted under the name must not hang the command; no effect on files
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise QuarantineError(f"refusing to read {path}: it is a symbolic link") from None
        raise QuarantineError(f"cannot read {path}: {why(exc)}") from exc
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise QuarantineError(f"refusing to read {path}: not a regular file")
        if st.st_nlink != 1:
            raise QuarantineError(
                f"refusing to read {path}: it has {st.st_nlink} hard links, filterd makes one"
            )
        _check_owner(path, st, {directory.st_uid, 0, os.geteuid()}, "file")
        try:
            return f.read()
        except OSError as exc:
            raise QuarantineError(f"cannot read {path}: {why(exc)}") from exc


def _check_directory(path: Path) -> os.stat_result:
    """The quarantine directory's status, once it is known to be a real directory that only its
    owner (root, or the user reading it) can write."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise QuarantineError(f"cannot use quarantine directory {path}: {why(exc)}") from exc
    if stat.S_ISLNK(st.st_mode):
        raise QuarantineError(f"refusing to use quarantine directory {path}: it is a symbolic link")
    if not stat.S_ISDIR(st.st_mode):
        raise QuarantineError(f"refusing to use quarantine directory {path}: not a directory")
    if st.st_mode & 0o022:
        raise QuarantineError(
            f"refusing to use quarantine directory {path}: writable by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}; it should be 0700)"
        )
    return st


def _check_owner(path: Path, st: os.stat_result, trusted: set[int], what: str) -> None:
    if st.st_mode & 0o022:
        raise QuarantineError(
            f"refusing to read {path}: the {what} is writable by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):04o})"
        )
    if st.st_uid not in trusted:
        raise QuarantineError(
            f"refusing to read {path}: owned by uid {st.st_uid}, not by the quarantine directory's "
            f"owner, root or the user running this command"
        )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno is not None:
        name = errno.errorcode.get(exc.errno, str(exc.errno))
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror or name} [{name}]{where}"
    return str(exc) or type(exc).__name__


def _mtime_text(path: Path) -> str:
    try:
        return email.utils.formatdate(path.stat().st_mtime, localtime=True)
    except OSError:
        return "an unknown time"

"""PostfixAdmin's SQL tables as a lookup source: local domains, valid recipients, DKIM keys and
per-domain policy, so that adding a domain in PostfixAdmin needs no filterd edit (docs/sql.md).

What is read, one query per table per refresh (never one per message):

- ``domain``: the local domains -- ``active = 1`` and not a backup MX (PostfixAdmin's ``ALL``
  pseudo-domain, which has no dot, is left out).  They join ``[network] local_domains``.
- ``mailbox`` and ``alias``: the valid recipients (active rows; an alias ``@example.com`` is the
  domain's catch-all), for `SqlLookup.recipient_known` and the ``recipient_exists`` check.
- ``filterd_dkim`` (ours): domain, selector, key_path, active -- extra rows of the DKIM signer's
  key table.
- ``filterd_policy`` (ours): domain, key, value -- `SqlLookup.domain_policies`, shaped as the
  TOML tables ``[policy."example.com"]`` would parse to.

The cache is per process (each milter worker has its own; nothing is shared through the fork but
the parent's first answer).  An answer is used for ``cache_seconds``; the first lookup after
that reads every table again while the other threads go on with the answer they have, so at most
one message per worker waits on the database per refresh, and none while the answer is fresh.  A
connection is opened per refresh and closed after it: nothing is held across a fork or idles
into the server's wait_timeout.

A refresh that fails (the server down, a timeout, a missing table of PostfixAdmin's) follows
``[sql] on_error``: "stale" keeps the last good answer (the static values before the first one),
"static" uses the static values alone, "tempfail" makes `recipient_known` raise
`SqlUnavailable` so ``recipient_exists`` answers 451 (the other lookups keep the last good
answer).  The next try is ``cache_seconds`` later, so a dead server costs one timeout per worker
per period, not one per message.  The outage is logged once when it starts and once when it ends.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
import time
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from filterd.settings import ConfigError

if TYPE_CHECKING:
    from filterd.config import SqlSettings

log = logging.getLogger("filterd.sql")

# Our two tables are optional: a database without them has no SQL DKIM keys or policy.
OUR_TABLES = ("filterd_dkim", "filterd_policy")
_NO_SUCH_TABLE = 1146  # ER_NO_SUCH_TABLE


class SqlUnavailable(ConnectionError):
    """The database could not be read and on_error is "tempfail" (an OSError: a dependency
    failure, so a fail-closed check tempfails on it rather than rejecting)."""


@dataclass(frozen=True, order=True)
class DkimRow:
    domain: str
    selector: str
    key_path: str


@dataclass(frozen=True)
class Snapshot:
    """One refresh's answer: every table as read at `loaded_at` (time.monotonic())."""

    domains: frozenset[str] = frozenset()
    mailboxes: frozenset[str] = frozenset()
    aliases: frozenset[str] = frozenset()  # addresses, and "@domain" for a catch-all
    dkim: tuple[DkimRow, ...] = ()
    policies: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    loaded_at: float = 0.0


@dataclass(frozen=True)
class ConnectArgs:
    """What pymysql.connect is called with, from [sql] (the password read from its file)."""

    host: str
    port: int
    unix_socket: str
    user: str
    password: str
    database: str

    @classmethod
    def from_settings(cls, s: SqlSettings) -> ConnectArgs:
        password = ""
        if s.password_file:
            try:
                with open(s.password_file, encoding="utf-8") as f:
                    password = f.readline().rstrip("\r\n")
            except OSError as exc:
                raise ConfigError("sql.password_file", f"{s.password_file!r}: {exc.strerror}") from exc
        if not s.dsn:
            return cls(s.host, s.port, s.unix_socket, s.user, password, s.database)
        url = urlsplit(s.dsn)
        query = parse_qs(url.query)
        return cls(
            host=url.hostname or s.host,
            port=url.port or 3306,
            unix_socket=query.get("unix_socket", [""])[0],
            user=unquote(url.username or s.user),
            password=unquote(url.password) if url.password else password,
            database=unquote(url.path.lstrip("/")),
        )


def policy_value(text: str) -> object:
    """A filterd_policy value as TOML would give it: ``20`` a number, ``true`` a boolean,
    ``"x"`` or ``["a", "b"]`` as written; anything TOML does not parse is the plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text.strip()


def policies_from_rows(rows: list[tuple[Any, Any, Any]]) -> dict[str, dict[str, object]]:
    """domain -> {key: value}; a dotted key ("checks.greylist") nests as a TOML dotted key does."""
    out: dict[str, dict[str, object]] = {}
    for domain, key, value in rows:
        table: dict[str, Any] = out.setdefault(str(domain).lower().rstrip("."), {})
        *parents, last = str(key).split(".")
        for part in parents:
            nested = table.get(part)
            if not isinstance(nested, dict):
                nested = table[part] = {}
            table = nested
        table[last] = policy_value(str(value))
    return out


class SqlLookup:
    """The cached answers of one process (see the module docstring)."""

    def __init__(self, settings: SqlSettings, static_domains: tuple[str, ...] = ()) -> None:
        if importlib.util.find_spec("pymysql") is None:  # a missing driver is not a database outage
            raise ConfigError("sql.enabled", "needs the PyMySQL driver: pip install 'filterd[sql]'")
        self.settings = settings
        self.connect_args = ConnectArgs.from_settings(settings)
        self.static_domains = tuple(d.lower().strip().rstrip(".") for d in static_domains)
        self.refreshes = 0  # successful refreshes in this process (tests and `filterctl` read it)
        self._snapshot: Snapshot | None = None
        self._next_try = 0.0  # time.monotonic() at which the answer is no longer fresh
        self._down_since: float | None = None
        self._missing_logged: set[str] = set()
        self._union: tuple[Snapshot | None, tuple[str, ...]] = (None, self.static_domains)
        self._pid = os.getpid()
        self._lock = threading.Lock()

    # -- the answers -------------------------------------------------------------------------

    def local_domains(self) -> tuple[str, ...]:
        """[network] local_domains and the SQL domains together (the SQL ones only while usable)."""
        snap = self._usable()
        seen, union = self._union
        if seen is snap:
            return union  # built once per refresh, not per message
        sql = sorted(snap.domains - set(self.static_domains)) if snap is not None else []
        union = (*self.static_domains, *sql)
        self._union = (snap, union)
        return union

    def sql_domains(self) -> frozenset[str]:
        """The domains PostfixAdmin hosts (empty while the database is down with no answer kept)."""
        snap = self._usable()
        return snap.domains if snap is not None else frozenset()

    def recipient_known(self, address: str, delimiter: str = "") -> bool | None:
        """Is `address` a mailbox, an alias, or covered by its domain's catch-all?  None when its
        domain is not one PostfixAdmin hosts (not ours to judge) or no answer is usable.

        `delimiter` is Postfix's recipient_delimiter: ``bob+news@`` is bob's when bob exists.
        Raises `SqlUnavailable` while the database is down and on_error is "tempfail"."""
        snap = self._usable(for_recipients=True)
        if snap is None:
            return None
        addr = address.strip().strip("<>").lower()
        local, at, domain = addr.rpartition("@")
        domain = domain.rstrip(".")
        if not at or domain not in snap.domains:
            return None
        candidates = [f"{local}@{domain}"]
        if delimiter:
            for d in delimiter:
                base = local.split(d, 1)[0]
                if base and base != local:
                    candidates.append(f"{base}@{domain}")
        return (
            any(c in snap.mailboxes or c in snap.aliases for c in candidates) or f"@{domain}" in snap.aliases
        )

    def dkim_rows(self) -> tuple[DkimRow, ...]:
        """The filterd_dkim rows (the same tuple object until the next refresh changes it)."""
        snap = self._usable()
        return snap.dkim if snap is not None else ()

    def domain_policies(self) -> dict[str, dict[str, object]]:
        """filterd_policy as ``{domain: {key: value}}``: the shape of ``[policy."example.com"]``
        tables in TOML (values typed as TOML types them; a dotted key nests)."""
        snap = self._usable()
        if snap is None:
            return {}
        return {d: dict(p) for d, p in snap.policies.items()}

    def policy_rows(self) -> Mapping[str, Mapping[str, object]]:
        """The same as `domain_policies`, uncopied: the one mapping of the current answer, so a
        caller can tell by identity whether it changed (the pipeline parses it only then)."""
        snap = self._usable()
        return {} if snap is None else snap.policies

    @property
    def down(self) -> bool:
        """Did the last refresh fail?"""
        return self._down_since is not None

    # -- the cache ---------------------------------------------------------------------------

    def _usable(self, for_recipients: bool = False) -> Snapshot | None:
        """The snapshot to answer from, refreshing it first when it is no longer fresh."""
        if time.monotonic() >= self._next_try:
            self.refresh()
        if self._down_since is None:
            return self._snapshot
        policy = self.settings.on_error
        if policy == "static":
            return None
        if policy == "tempfail" and for_recipients:
            raise SqlUnavailable("the SQL lookup tables cannot be read ([sql] on_error = tempfail)")
        return self._snapshot

    def refresh(self, force: bool = False) -> bool:
        """Read every table again, unless another thread of this process is doing it (then the
        answer it has stays in use a moment longer).  Returns whether this call read them."""
        if os.getpid() != self._pid:  # forked: a lock held by a parent's thread would never be released
            self._pid, self._lock = os.getpid(), threading.Lock()
        if not self._lock.acquire(blocking=self._snapshot is None and not self.down):
            return False
        try:
            now = time.monotonic()
            if not force and now < self._next_try:
                return False  # another thread refreshed while this one waited
            self._next_try = now + self.settings.cache_seconds
            try:
                snap = self._read_tables()
            except Exception as exc:  # whatever the driver raises, mail goes on (on_error)
                self._failed(exc)
                return True
            self._snapshot = snap
            self.refreshes += 1
            if self._down_since is not None:
                log.warning(
                    "SQL lookups: the database is back after %.0f s (%d domains, %d mailboxes, %d aliases)",
                    now - self._down_since,
                    len(snap.domains),
                    len(snap.mailboxes),
                    len(snap.aliases),
                )
                self._down_since = None
            return True
        finally:
            self._lock.release()

    def _failed(self, exc: Exception) -> None:
        if self._down_since is not None:
            return  # logged when the outage began
        self._down_since = time.monotonic()
        kept = {
            "stale": "keeping the last good answer" if self._snapshot else "using the static values",
            "static": "using the static values",
            "tempfail": "unknown-recipient checks answer 451",
        }[self.settings.on_error]
        log.warning(
            "SQL lookups: cannot read the database (%s: %s); %s (on_error = %s) until it is back",
            type(exc).__name__,
            exc,
            kept,
            self.settings.on_error,
        )

    def _read_tables(self) -> Snapshot:
        import pymysql  # only with [sql] enabled: the driver is an optional extra

        a = self.connect_args
        conn = pymysql.connect(
            host=a.host,
            port=a.port,
            unix_socket=a.unix_socket or None,
            user=a.user,
            password=a.password,
            database=a.database,
            connect_timeout=self.settings.timeout,
            read_timeout=self.settings.timeout,
            write_timeout=self.settings.timeout,
            charset="utf8mb4",
        )
        p = self.settings.table_prefix
        try:
            with conn.cursor() as cur:
                domains = self._column(
                    cur, f"SELECT domain FROM `{p}domain` WHERE active = 1 AND backupmx = 0"
                )
                mailboxes = self._column(cur, f"SELECT username FROM `{p}mailbox` WHERE active = 1")
                aliases = self._column(cur, f"SELECT address FROM `{p}alias` WHERE active = 1")
                dkim = self._optional(
                    cur,
                    "filterd_dkim",
                    "SELECT domain, selector, key_path FROM filterd_dkim WHERE active = 1",
                )
                policy = self._optional(
                    cur, "filterd_policy", "SELECT domain, `key`, value FROM filterd_policy"
                )
        finally:
            conn.close()
        return Snapshot(
            domains=frozenset(d for d in domains if "." in d),  # not PostfixAdmin's "ALL"
            mailboxes=frozenset(mailboxes),
            aliases=frozenset(aliases),
            dkim=tuple(sorted(DkimRow(str(d).lower().rstrip("."), str(s), str(k)) for d, s, k in dkim)),
            policies=policies_from_rows(policy),
            loaded_at=time.monotonic(),
        )

    @staticmethod
    def _column(cur: Any, query: str) -> list[str]:
        cur.execute(query)
        return [str(row[0]).strip().lower().rstrip(".") for row in cur.fetchall() if row[0]]

    def _optional(self, cur: Any, table: str, query: str) -> list[Any]:
        """Rows of one of our own tables; none when the admin has not created it."""
        import pymysql

        try:
            cur.execute(query)
        except pymysql.err.ProgrammingError as exc:
            if exc.args and exc.args[0] == _NO_SUCH_TABLE:
                if table not in self._missing_logged:
                    self._missing_logged.add(table)
                    log.info(
                        "SQL lookups: no table %s (docs/sql.md creates it); none of its rows used", table
                    )
                return []
            raise
        return list(cur.fetchall())


def open_lookup(settings: SqlSettings, static_domains: tuple[str, ...]) -> SqlLookup | None:
    """The lookup for ``[sql]``, with its first answer read now (None when [sql] is off).

    Built in the daemon's parent, so the forked workers start with a fresh answer; a database
    that is down now is logged and on_error applies -- filterd starts anyway, as mail must."""
    if not settings.enabled:
        return None
    lookup = SqlLookup(settings, static_domains)
    lookup.refresh(force=True)
    return lookup

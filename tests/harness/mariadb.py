"""A private MariaDB on a free loopback port holding PostfixAdmin's tables, for the SQL lookups.

`MariaDb` makes its own data directory with ``mariadb-install-db`` and runs ``mariadbd`` on it
(never the system's instance, which scripts/install leaves stopped): TCP on 127.0.0.1 for filterd,
a unix socket for the test's own root connection.  A user ``filterd`` with a password and SELECT
only is created, as an admin would grant it.  `stop()` and `start()` take the server away and
bring it back mid-test (the same data directory, so the rows survive).

The tables are PostfixAdmin's ``domain``, ``mailbox`` and ``alias`` as its setup script creates
them for MySQL (the columns filterd reads and the ones beside them), plus filterd's own
``filterd_dkim`` and ``filterd_policy`` (docs/sql.md).
"""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pymysql

from tests.harness.net import free_port, port_open, wait_for

DATABASE = "postfix"
USER = "filterd"
PASSWORD = "s3cret-for-tests"

# PostfixAdmin's own tables (the columns of its MySQL schema; filterd reads domain/backupmx/active,
# username/active, address/goto/active), then the two tables filterd adds.
SCHEMA = (
    """CREATE TABLE domain (
        domain varchar(255) NOT NULL,
        description varchar(255) NOT NULL DEFAULT '',
        aliases int(10) NOT NULL DEFAULT 0,
        mailboxes int(10) NOT NULL DEFAULT 0,
        maxquota bigint(20) NOT NULL DEFAULT 0,
        quota bigint(20) NOT NULL DEFAULT 0,
        transport varchar(255) NOT NULL DEFAULT 'virtual',
        backupmx tinyint(1) NOT NULL DEFAULT 0,
        created datetime NOT NULL DEFAULT '2000-01-01 00:00:00',
        modified datetime NOT NULL DEFAULT '2000-01-01 00:00:00',
        active tinyint(1) NOT NULL DEFAULT 1,
        PRIMARY KEY (domain)
    ) DEFAULT CHARSET=utf8mb4 COMMENT='Postfix Admin - Virtual Domains'""",
    """CREATE TABLE mailbox (
        username varchar(255) NOT NULL,
        password varchar(255) NOT NULL DEFAULT '',
        name varchar(255) NOT NULL DEFAULT '',
        maildir varchar(255) NOT NULL DEFAULT '',
        quota bigint(20) NOT NULL DEFAULT 0,
        local_part varchar(255) NOT NULL DEFAULT '',
        domain varchar(255) NOT NULL DEFAULT '',
        created datetime NOT NULL DEFAULT '2000-01-01 00:00:00',
        modified datetime NOT NULL DEFAULT '2000-01-01 00:00:00',
        active tinyint(1) NOT NULL DEFAULT 1,
        PRIMARY KEY (username),
        KEY domain (domain)
    ) DEFAULT CHARSET=utf8mb4 COMMENT='Postfix Admin - Virtual Mailboxes'""",
    """CREATE TABLE alias (
        address varchar(255) NOT NULL,
        goto text NOT NULL,
        domain varchar(255) NOT NULL DEFAULT '',
        created datetime NOT NULL DEFAULT '2000-01-01 00:00:00',
        modified datetime NOT NULL DEFAULT '2000-01-01 00:00:00',
        active tinyint(1) NOT NULL DEFAULT 1,
        PRIMARY KEY (address),
        KEY domain (domain)
    ) DEFAULT CHARSET=utf8mb4 COMMENT='Postfix Admin - Virtual Aliases'""",
    """CREATE TABLE filterd_dkim (
        domain varchar(255) NOT NULL,
        selector varchar(63) NOT NULL,
        key_path varchar(1024) NOT NULL,
        active tinyint(1) NOT NULL DEFAULT 1,
        PRIMARY KEY (domain, selector)
    ) DEFAULT CHARSET=utf8mb4""",
    """CREATE TABLE filterd_policy (
        domain varchar(255) NOT NULL,
        `key` varchar(64) NOT NULL,
        value varchar(1024) NOT NULL,
        PRIMARY KEY (domain, `key`)
    ) DEFAULT CHARSET=utf8mb4""",
)


class MariaDb:
    def __init__(self, workdir: Path | None = None) -> None:
        self.dir = workdir or Path(tempfile.mkdtemp(prefix="filterd-mariadb-"))
        self.datadir = self.dir / "data"
        self.socket = self.dir / "mysqld.sock"
        self.port = free_port()
        self.password_file = self.dir / "password"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the server; the first start also creates the data directory, user and tables."""
        fresh = not self.datadir.exists()
        if fresh:
            self._install()
        self._spawn()
        if fresh:
            self._create_schema()

    def _install(self) -> None:
        exe = shutil.which("mariadb-install-db")
        if exe is None:
            raise RuntimeError("mariadb-install-db is not installed (apt-get install mariadb-server)")
        self.dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                exe,
                f"--datadir={self.datadir}",
                "--auth-root-authentication-method=normal",
                "--user=root" if os.geteuid() == 0 else f"--user={getpass.getuser()}",
                "--skip-test-db",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=120,
        )
        self.password_file.write_text(PASSWORD + "\n")
        os.chmod(self.password_file, 0o600)

    def _spawn(self) -> None:
        self.port = self.port if not port_open(self.port) else free_port()
        argv = [
            "mariadbd",
            "--no-defaults",  # not /etc/mysql: that is the system instance's
            f"--datadir={self.datadir}",
            f"--socket={self.socket}",
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            f"--pid-file={self.dir / 'mysqld.pid'}",
            f"--log-error={self.dir / 'error.log'}",
            "--skip-name-resolve",
            "--innodb-buffer-pool-size=16M",  # a few rows: keep the footprint small on a shared host
            "--skip-log-bin",
        ]
        if os.geteuid() == 0:
            argv.append("--user=root")
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: self._alive() and port_open(self.port), 60, f"mariadbd on {self.port}")

    def _alive(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            log = (self.dir / "error.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"mariadbd exited with {self.proc.returncode}: {log}")
        return True

    def _create_schema(self) -> None:
        with self.root() as conn, conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE {DATABASE}")
            cur.execute(f"CREATE USER '{USER}'@'127.0.0.1' IDENTIFIED BY %s", (PASSWORD,))
            cur.execute(f"GRANT SELECT ON {DATABASE}.* TO '{USER}'@'127.0.0.1'")
            cur.execute(f"USE {DATABASE}")
            for statement in SCHEMA:
                cur.execute(statement)

    def root(self) -> Any:
        """A root connection over the unix socket, autocommitting (for the test's own writes)."""
        return pymysql.connect(
            unix_socket=str(self.socket), user="root", database=None, autocommit=True, connect_timeout=5
        )

    def execute(self, statement: str, args: Sequence[Any] = ()) -> None:
        with self.root() as conn, conn.cursor() as cur:
            cur.execute(f"USE {DATABASE}")
            cur.execute(statement, tuple(args))

    def settings(self, **extra: Any) -> dict[str, Any]:
        """A ``[sql]`` section for this server."""
        return {
            "enabled": True,
            "host": "127.0.0.1",
            "port": self.port,
            "user": USER,
            "password_file": str(self.password_file),
            "database": DATABASE,
            **extra,
        }

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
            self.proc = None
        # the port is closed once mariadbd is gone; a lookup now fails fast (connection refused)
        deadline = time.monotonic() + 10
        while port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.05)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

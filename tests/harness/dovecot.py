"""A private Dovecot IMAP server with the IMAPSieve learning of contrib/dovecot/, on a free loopback port.

Debian's dovecot-imapd and dovecot-sieve, run in the foreground (`dovecot -F`) as a child of the
test with its own config file, base_dir, state_dir and log in a temporary directory; ssl = no,
plain logins, one Maildir user in a passwd-file.  The learning configuration is the shipped
contrib/dovecot/95-filterd-learn.conf and its sieve scripts, with only the /etc/dovecot/sieve/
paths pointed at the temporary directory -- so the test runs what admins install.

The mail user's processes (imap, and the sieve `pipe` program under it) run as the test's user,
or as `nobody` when the test runs as root: Dovecot refuses mail processes with UID 0.  That is
why the directory is a `mkdtemp` of mode 0755 (pytest's tmp_path is 0700, unreadable by
nobody) and the Maildir and sieve folders belong to the mail user (Dovecot writes the compiled
scripts there).  `filterd-learn` in the pipe folder is a wrapper that runs this checkout's
filterd/learnclient.py with the test's configuration (and, as root, the system's python3).
"""

from __future__ import annotations

import imaplib
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.harness.net import free_port, port_open, wait_for

ROOT = Path(__file__).resolve().parents[2]
CONTRIB = ROOT / "contrib" / "dovecot"
SHIPPED_SIEVE_DIR = "/etc/dovecot/sieve/"
USER, PASSWORD = "alice@example.org", "secret"


def mail_ids() -> tuple[int, int]:
    """uid and gid for mail processes: ours, unless we are root (Dovecot refuses UID 0)."""
    if os.getuid() != 0:
        return os.getuid(), os.getgid()
    nobody = pwd.getpwnam("nobody")
    return nobody.pw_uid, nobody.pw_gid


def client_python() -> str:
    """The interpreter filterd-learn runs with.  Ours, unless the mail user is `nobody`, who may
    not be able to reach it (a pyenv under /root): then the system's python3 -- the client is
    stdlib only, so any Python >= 3.11 runs it, which this also shows."""
    if os.getuid() != 0:
        return sys.executable
    return shutil.which("python3", path="/usr/bin:/bin") or sys.executable


def dovecot_available() -> bool:
    return shutil.which("dovecot") is not None and Path("/usr/lib/dovecot/modules/sieve").is_dir()


class DovecotServer:
    def __init__(self, learn_config: Path) -> None:
        """`learn_config`: the filterd configuration filterd-learn reads (copied in, readable by
        the mail user)."""
        self.workdir = Path(tempfile.mkdtemp(prefix="filterd-dovecot-"))
        self.workdir.chmod(0o755)
        self.port = free_port()
        self.uid, self.gid = mail_ids()
        self.log = self.workdir / "dovecot.log"
        self.conf = self.workdir / "dovecot.conf"
        self.learn_config = self.workdir / "filterd.toml"
        self.proc: subprocess.Popen[bytes] | None = None
        self._write(learn_config)

    @property
    def maildir(self) -> Path:
        return self.workdir / "home" / "Maildir"

    def _write(self, learn_config: Path) -> None:
        w = self.workdir
        sieve = w / "sieve"
        bindir = sieve / "filterd-bin"
        bindir.mkdir(parents=True)
        (w / "home").mkdir()
        (w / "run").mkdir()
        (w / "state").mkdir()
        shutil.copy(learn_config, self.learn_config)
        self.learn_config.chmod(0o644)
        for script in CONTRIB.glob("*.sieve"):
            shutil.copy(script, sieve / script.name)
        learn = bindir / "filterd-learn"
        learn.write_text(
            "#!/bin/sh\n"
            f"PYTHONPATH={ROOT} exec {client_python()} -m filterd.learnclient "
            f'--config {self.learn_config} "$@"\n'
        )
        learn.chmod(0o755)
        snippet = (CONTRIB / "95-filterd-learn.conf").read_text()
        (w / "95-filterd-learn.conf").write_text(snippet.replace(SHIPPED_SIEVE_DIR, f"{sieve}/"))
        (w / "passwd").write_text(f"{USER}:{{PLAIN}}{PASSWORD}:{self.uid}:{self.gid}::{w / 'home'}::\n")
        self.conf.write_text(
            f"""base_dir = {w / "run"}
state_dir = {w / "state"}
log_path = {self.log}
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
first_valid_uid = {min(self.uid, 500)}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {w / "passwd"}
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {w / "passwd"}
}}
mail_location = maildir:~/Maildir
namespace inbox {{
  inbox = yes
  separator = /
  mailbox Junk {{
    auto = create
    special_use = \\Junk
  }}
  mailbox Trash {{
    auto = create
    special_use = \\Trash
  }}
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
!include {w / "95-filterd-learn.conf"}
"""
        )
        for path in (w / "home", sieve):
            for p in (path, *path.rglob("*")):
                os.chown(p, self.uid, self.gid)

    def start(self) -> None:
        check = subprocess.run(["doveconf", "-c", str(self.conf), "-n"], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"doveconf rejected {self.conf}: {check.stderr}")
        self.proc = subprocess.Popen(
            ["dovecot", "-F", "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        proc = self.proc
        wait_for(lambda: port_open(self.port) or proc.poll() is not None, 15, "dovecot")
        if proc.poll() is not None:
            stderr = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"dovecot exited: {stderr}{self.log_text()}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        shutil.rmtree(self.workdir, ignore_errors=True)

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def imap(self) -> imaplib.IMAP4:
        """A logged-in IMAP session of the Maildir user."""
        conn = imaplib.IMAP4("127.0.0.1", self.port, timeout=30)
        conn.login(USER, PASSWORD)
        return conn

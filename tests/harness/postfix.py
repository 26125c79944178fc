"""A private Postfix instance: own config, queue and data dirs, listening on free loopback ports.

It relays everything to a sink (`relayhost`), runs one smtpd listener wired to filterd's unix
socket and a second one without milters on a unix-domain socket in Postfix's private directory
(the re-injection listener of contrib/postfix/master.cf: only root and postfix can reach it).
The milter lines come from contrib/postfix/main.cf, so the tests exercise the shipped snippet.
Facts from ../shared/notes/real-stack.md: data_directory owned by postfix, no syslog here (a
maillog_file and the postlog service), chroot off, `postfix -c DIR start|stop`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.harness.net import free_port, port_open, wait_for

ROOT = Path(__file__).resolve().parents[2]
CONTRIB_MAIN_CF = ROOT / "contrib" / "postfix" / "main.cf"
CONTRIB_MASTER_CF = ROOT / "contrib" / "postfix" / "master.cf"

_SERVICES = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000    0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def reinject_service() -> str:
    """The re-injection listener's lines of contrib/postfix/master.cf, as shipped."""
    lines = CONTRIB_MASTER_CF.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("filterd-reinject "))
    block = [lines[start]]
    for line in lines[start + 1 :]:
        if not line.startswith((" ", "\t")):
            break
        block.append(line)
    return "\n".join(block) + "\n"


def contrib_milter_settings(socket: str) -> dict[str, str]:
    """The settings of contrib/postfix/main.cf, with the socket pointed at the test's filterd."""
    settings: dict[str, str] = {}
    for line in CONTRIB_MAIN_CF.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = (part.strip() for part in line.split("=", 1))
            settings[key] = value
    settings["smtpd_milters"] = socket
    return settings


class Postfix:
    def __init__(
        self,
        workdir: Path,
        milter_socket: str,
        relay_port: int,
        *,
        with_milter: bool = True,
        port: int | None = None,
    ) -> None:
        self.dir = workdir
        self.config_dir = workdir / "etc"
        self.queue_dir = workdir / "queue"
        self.data_dir = workdir / "data"
        self.port = port or free_port()
        # where released quarantine mail is re-injected ([quarantine] release_via)
        self.reinject_socket = self.queue_dir / "private" / "filterd-reinject"
        self.milter_socket = milter_socket
        self.relay_port = relay_port
        self.with_milter = with_milter

    @property
    def maillog(self) -> Path:
        return self.dir / "maillog"

    def write_config(self, extra: dict[str, str] | None = None) -> None:
        for d in (self.config_dir, self.queue_dir, self.data_dir):
            d.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.data_dir, "postfix", "postfix")
        settings = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "myhostname": "mx.filterd.test",
            "mydomain": "filterd.test",
            "mydestination": "",
            "mynetworks": "127.0.0.0/8",
            "relay_domains": "",
            "relayhost": f"[127.0.0.1]:{self.relay_port}",
            "smtp_dns_support_level": "disabled",
            "smtpd_peername_lookup": "no",
            "smtpd_relay_restrictions": "permit_mynetworks, reject",
            "smtpd_recipient_restrictions": "permit_mynetworks, reject",
            "maillog_file": str(self.maillog),
            "maillog_file_prefixes": f"/var, /dev/stdout, {self.dir}",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "biff": "no",
            "message_size_limit": str(60 * 1024 * 1024),
            "smtpd_recipient_limit": "1000",
            "smtp_destination_recipient_limit": "1000",
            "smtpd_client_connection_count_limit": "0",
            "smtpd_client_message_rate_limit": "0",
            "smtpd_client_connection_rate_limit": "0",
            "default_process_limit": "200",
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
            "smtpd_error_sleep_time": "0",
            "smtpd_soft_error_limit": "1000",
            "smtpd_hard_error_limit": "1000",
            "in_flow_delay": "0",
            # Loopback clients would count as local and get missing Date/Message-ID headers added
            # before the milter sees the message; tests want what a remote client sent.
            "local_header_rewrite_clients": "",
        }
        settings.update(contrib_milter_settings(self.milter_socket))
        if not self.with_milter:
            settings["smtpd_milters"] = ""
            settings["non_smtpd_milters"] = ""
        settings.update(extra or {})
        (self.config_dir / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
        master = _SERVICES + f"127.0.0.1:{self.port} inet n - n - - smtpd\n" + reinject_service()
        (self.config_dir / "master.cf").write_text(master)

    def _postfix(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["postfix", "-c", str(self.config_dir), *args], capture_output=True, text=True, timeout=60
        )

    def start(self) -> None:
        if shutil.which("postfix") is None:
            raise RuntimeError("postfix is not installed (apt-get install postfix)")
        self.write_config()
        result = self._postfix("start")
        if result.returncode != 0:
            raise RuntimeError(f"postfix start failed: {result.stdout}{result.stderr}")
        wait_for(lambda: port_open(self.port), 20, f"postfix smtpd on port {self.port}")

    def stop(self) -> None:
        self._postfix("stop")
        pid_file = self.queue_dir / "pid" / "master.pid"
        try:
            wait_for(lambda: not _alive(pid_file), 15, "postfix master to exit")
        except TimeoutError:
            pass

    def flush(self) -> None:
        self._postfix("flush")

    def queue_count(self) -> int:
        """Messages still in Postfix's queues (incoming, active, deferred, hold)."""
        total = 0
        for name in ("incoming", "active", "deferred", "hold", "maildrop"):
            d = self.queue_dir / name
            if d.exists():
                total += sum(1 for p in d.rglob("*") if p.is_file())
        return total


def _alive(pid_file: Path) -> bool:
    try:
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, 0)
        return True
    except (OSError, ValueError, IndexError):
        return False

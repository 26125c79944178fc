"""The quick start's local stack: redis-server, clamd, filterd, a private Postfix, a sink.

    scripts/up      start everything (after scripts/install), print where to look
    scripts/down    stop what `up` started

State lives in run/ at the repository root.  Postfix listens on 127.0.0.1:2525 and relays to
smtp-sink, which writes every delivered message into run/mail/ so the verdict headers can be read.
filterd runs on its defaults plus the antivirus check (run/filterd.toml), against a clamd that loads
only the test signatures in tests/clamav/; production uses the system clamd with the official ones.

Redis is its own, never a shared one: no TCP port, only the unix socket run/redis.sock (mode 0600:
the user running the quick start alone can connect) and a random password (requirepass), written
into run/filterd.toml (mode 0600) -- on an open Redis any local user could write "clean" into the
antivirus cache.  The cache's entries are also signed with the key in run/av-cache.key (0600).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from filterd.config import load_config  # noqa: E402
from filterd.scancache import write_secret  # noqa: E402
from tests.harness.clamd import ClamdServer  # noqa: E402
from tests.harness.net import port_open, wait_for  # noqa: E402
from tests.harness.postfix import Postfix  # noqa: E402
from tests.harness.redis import redis_argv  # noqa: E402

RUN = ROOT / "run"
SMTP_PORT = 2525
SINK_PORT = 2526


def _start_detached(name: str, argv: list[str]) -> None:
    log = (RUN / f"{name}.log").open("ab")
    proc = subprocess.Popen(
        argv,
        stdout=log,
        stderr=log,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    (RUN / f"{name}.pid").write_text(str(proc.pid))


def _stop_pid(name: str, sig: int = signal.SIGTERM) -> None:
    pid_file = RUN / f"{name}.pid"
    if not pid_file.exists():
        return
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, sig)
        for _ in range(300):
            os.kill(pid, 0)
            time.sleep(0.1)
    except (ProcessLookupError, ValueError):
        pass
    pid_file.unlink(missing_ok=True)


def up() -> int:
    if port_open(SMTP_PORT):
        print(f"something already listens on 127.0.0.1:{SMTP_PORT}: run scripts/down first", file=sys.stderr)
        return 1
    RUN.mkdir(exist_ok=True)
    mail = RUN / "mail"
    mail.mkdir(exist_ok=True)
    os.chmod(RUN, 0o755)
    os.chmod(mail, 0o777)  # smtp-sink writes as nobody
    # our own Redis: a unix socket only the current user can open, and a password
    redis_socket = RUN / "redis.sock"
    redis_password = secrets.token_urlsafe(24)
    redis_socket.unlink(missing_ok=True)
    _start_detached("redis", redis_argv(0, RUN, redis_password, redis_socket))
    wait_for(redis_socket.exists, 10, "redis-server")
    print(f"redis:    started on {redis_socket} (mode 0600, password in run/filterd.toml), no TCP port")
    cache_key = RUN / "av-cache.key"
    if not cache_key.exists():
        write_secret(cache_key)

    # clamd on the test signatures (tests/clamav/: EICAR and ClamAV's test file) -- a production
    # server uses the system clamd with the official signatures (docs/antivirus.md)
    clamd = ClamdServer(RUN / "clamd")
    clamd_conf = clamd.write_config()
    _start_detached(
        "clamd", [shutil.which("clamd") or "/usr/sbin/clamd", "--foreground", "-c", str(clamd_conf)]
    )
    wait_for(clamd.answers_ping, 60, "clamd")
    print(f"clamd:    running on the test signatures in tests/clamav/, socket {clamd.socket_path}")

    # filterd's defaults, plus the antivirus check on that clamd and a quarantine under run/
    postfix = Postfix(RUN / "postfix", load_config(None).milter.socket, SINK_PORT, port=SMTP_PORT)
    config_path = RUN / "filterd.toml"
    config_path.unlink(missing_ok=True)
    fd = os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # it holds the password
    with os.fdopen(fd, "w") as f:
        f.write(
            f'[redis]\nurl = "unix://{redis_socket}?db=0"\npassword = "{redis_password}"\n\n'
            f'[checks.antivirus]\nenabled = true\nsockets = ["{clamd.unix_address}"]\n'
            f'cache_key_file = "{cache_key}"\n\n'
            f'[quarantine]\ndirectory = "{RUN / "quarantine"}"\nrelease_via = "{postfix.reinject_socket}"\n'
        )
    config = load_config(config_path)
    socket_path = Path(config.milter.socket.split(":", 1)[1])
    log_path = RUN / "filterd.log"
    offset = log_path.stat().st_size if log_path.exists() else 0
    _start_detached("filterd", [sys.executable, "-m", "filterd", "--config", str(config_path)])
    # "listening on" comes once the workers serve (the socket itself exists a little earlier)
    wait_for(
        lambda: b"listening on" in log_path.read_bytes()[offset:], 30, f"filterd to listen on {socket_path}"
    )
    print(f"filterd:  running on {config_path} (defaults + antivirus), socket {config.milter.socket}")

    sink = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
    _start_detached(
        "sink", [sink, "-u", "nobody", "-d", f"{mail}/%Y%m%d-%H%M%S.", f"127.0.0.1:{SINK_PORT}", "100"]
    )
    wait_for(lambda: port_open(SINK_PORT), 10, "smtp-sink")

    postfix.start()
    print(
        f"postfix:  listening on 127.0.0.1:{SMTP_PORT}, milter {config.milter.socket}, relaying to the sink"
    )
    print(f"""
Send a message, e.g.:
  swaks --server 127.0.0.1:{SMTP_PORT} --from alice@example.org --to bob@example.net
  python3 -c "import smtplib; smtplib.SMTP('127.0.0.1', {SMTP_PORT}).sendmail('a@example.org', ['b@example.net'],
      b'From: a@example.org\\r\\nSubject: hi\\r\\n\\r\\nhello\\r\\n')"
Delivered messages, with the X-Spam-* verdict headers:  {mail}/
filterd's log (one line per message):                   {RUN / "filterd.log"}
Postfix's log:                                          {postfix.maillog}
Scan a stored message offline:  .venv/bin/filterctl --config {config_path} scan FILE
Try the virus scanner with the EICAR test file (rejected with 554 5.7.1 naming it):
  swaks --server 127.0.0.1:{SMTP_PORT} --to bob@example.net --attach - <<< 'X5O!P%@AP[4\\PZX54(P^)7CC)7}}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*'
clamd and the result cache:     .venv/bin/filterctl --config {config_path} antivirus status
Stop everything:                scripts/down""")
    return 0


def down() -> int:
    postfix_dir = RUN / "postfix" / "etc"
    if postfix_dir.exists():
        subprocess.run(["postfix", "-c", str(postfix_dir), "stop"], capture_output=True)
    for name in ("filterd", "clamd", "sink", "redis"):
        _stop_pid(name)
    print("stopped; run/ keeps the logs and delivered mail")
    return 0


def main() -> int:
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command == "up":
        return up()
    if command == "down":
        return down()
    print("usage: localstack.py up|down", file=sys.stderr)
    return 2


if __name__ == "__main__":
    socket.setdefaulttimeout(30)
    sys.exit(main())

"""filterd's CPU time per message through libmilter, driven over its socket without Postfix.

    python bench/milter_load.py [--config FILE] [--messages 2000] [--sessions 20] [--rounds 3]
        [--trivial] [--workers N]

A small client of the Sendmail milter protocol plays Postfix's part: it negotiates, then sends
each corpus message the way Postfix 3.7 does -- the macros before every event (the end-of-header
macros before each header, as Postfix does), MAIL, RCPT, one packet per header, the body in
64 KiB chunks, end of message -- and honours what the milter negotiated (events it does not want
are not sent, replies it will not give are not awaited).  --sessions connections run at once,
each sending its share of the messages, like bench/throughput.py's SMTP sessions.

What it reports is the milter's own CPU time per message (all its processes, from /proc), per
round.  Without Postfix, the SMTP client and the sink on the same two cores, this figure moves
far less from run to run than bench/throughput.py's, so a change on the mail path can be
measured in a minute; bench/throughput.py stays the judge of the throughput ratio.
--trivial drives bench/trivial_milter.py instead: the floor for any pymilter milter.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.milter_path import CHUNK, split  # noqa: E402
from bench.throughput import cpu_seconds, process_tree, sample  # noqa: E402
from tests.harness.filterd import Filterd  # noqa: E402
from tests.harness.net import run_sessions, wait_for  # noqa: E402
from tests.harness.stack import private_dir  # noqa: E402

# Protocol option bits (libmilter's mfdef.h)
NOCONNECT, NOHELO, NOMAIL, NORCPT, NOBODY, NOHDRS, NOEOH, NR_HDR = (1 << n for n in range(8))
NODATA = 1 << 9
NR_CONN, NR_HELO, NR_MAIL, NR_RCPT, NR_DATA, NR_UNKN, NR_EOH, NR_BODY = (1 << n for n in range(12, 20))
HDR_LEADSPC = 1 << 20
ALL_ACTIONS = 0x1FF
OFFERED = 0x1FFFFF  # every protocol option Postfix 3.7 offers (version 6)

# Postfix's default macro lists, as name -> value here, by the event they come before
QUEUE_ID = {"i": "4ABCDEF0123"}
MACROS = {
    b"C": {
        "j": "mx.example.net",
        "{daemon_name}": "mx",
        "{client_addr}": "127.0.0.1",
        "{client_name}": "localhost",
    },
    b"H": {},
    b"M": {**QUEUE_ID, "{mail_addr}": "sender@example.org"},
    b"R": {**QUEUE_ID, "{rcpt_addr}": "rcpt@example.net"},
    b"L": QUEUE_ID,  # Postfix sends the end-of-header macros before every header
    b"N": QUEUE_ID,
    b"B": QUEUE_ID,
    b"E": QUEUE_ID,
}


class MilterClient:
    """One MTA-side connection: negotiate once, then any number of messages."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.file = self.sock.makefile("rb")
        self.send(b"O", struct.pack(">III", 6, ALL_ACTIONS, OFFERED))
        cmd, data = self.read()
        assert cmd == b"O", cmd
        _, _, self.protocol = struct.unpack(">III", data[:12])

    def send(self, cmd: bytes, data: bytes = b"") -> None:
        self.sock.sendall(struct.pack(">I", len(data) + 1) + cmd + data)

    def read(self) -> tuple[bytes, bytes]:
        head = self.file.read(5)
        if len(head) < 5:
            raise ConnectionError("the milter closed the connection")
        (size,) = struct.unpack(">I", head[:4])
        return head[4:5], self.file.read(size - 1)

    def event(self, cmd: bytes, data: bytes, skip: int, no_reply: int) -> bytes:
        """Send an event (its macros first, as Postfix does); return the final reply's command."""
        macros = MACROS.get(cmd)
        if macros is not None:
            self.send(b"D", cmd + b"".join(f"{k}\0{v}\0".encode() for k, v in macros.items()))
        if self.protocol & skip:
            return b"c"
        self.send(cmd, data)
        if self.protocol & no_reply:
            return b"c"
        while True:  # modifications (h, m, ...) come before the final reply at end of message
            reply, _ = self.read()
            if reply not in (b"h", b"m", b"i", b"q", b"p"):
                return reply

    def connect(self) -> None:
        self.event(b"C", b"localhost\x004" + struct.pack(">H", 40000) + b"127.0.0.1\0", NOCONNECT, NR_CONN)
        self.event(b"H", b"client.example.org\0", NOHELO, NR_HELO)

    def message(self, headers: list[tuple[str, bytes]], body: bytes) -> bytes:
        rc = self.event(b"M", b"<sender@example.org>\0", NOMAIL, NR_MAIL)
        if rc == b"c":
            rc = self.event(b"R", b"<rcpt@example.net>\0", NORCPT, NR_RCPT)
        if rc == b"c":
            for name, value in headers:
                if not self.protocol & HDR_LEADSPC:
                    value = value.removeprefix(b" ")
                self.event(b"L", name.encode() + b"\0" + value + b"\0", NOHDRS, NR_HDR)
            self.event(b"N", b"", NOEOH, NR_EOH)
            for i in range(0, len(body), CHUNK):
                self.event(b"B", body[i : i + CHUNK], NOBODY, NR_BODY)
            rc = self.event(b"E", b"", 0, 0)
        self.send(b"A")  # Postfix ends every transaction with an abort
        return rc

    def close(self) -> None:
        self.send(b"Q")
        self.sock.close()


def rss_mib(pids: list[int]) -> float:
    """The processes' resident memory now (summed): does it grow from round to round?"""
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


def run_round(path: str, messages: list[tuple[list[tuple[str, bytes]], bytes]], sessions: int) -> None:
    def session(share: list[tuple[list[tuple[str, bytes]], bytes]]) -> None:
        client = MilterClient(path)
        client.connect()
        for headers, body in share:
            rc = client.message(headers, body)
            if rc not in (b"a", b"c"):
                raise RuntimeError(f"unexpected reply {rc!r}")
        client.close()

    run_sessions(session, [messages[i::sessions] for i in range(sessions)])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=ROOT / "bench" / "configs" / "foundation.toml")
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--trivial", action="store_true", help="drive bench/trivial_milter.py instead")
    args = parser.parse_args()

    messages = [split(raw) for raw in sample(args.messages)]
    workdir = private_dir("filterd-load-")
    sock = workdir / "milter.sock"
    proc: subprocess.Popen[bytes] | None = None
    filterd: Filterd | None = None
    try:
        if args.trivial:
            proc = subprocess.Popen(
                [sys.executable, str(ROOT / "bench" / "trivial_milter.py"), f"unix:{sock}"]
            )
            wait_for(sock.exists, 10, "the trivial milter's socket")
            pid = proc.pid
        else:
            filterd = Filterd(workdir, sock)
            filterd.configure({"milter": {"workers": args.workers}})
            filterd.config_path.write_text(filterd.config_path.read_text() + "\n" + args.config.read_text())
            filterd.start()
            assert filterd.proc is not None
            pid = filterd.proc.pid
        run_round(str(sock), messages[:100], args.sessions)  # warm up
        pids = process_tree(pid)
        per_round = []
        for _ in range(args.rounds):
            before = cpu_seconds(pids)
            started = time.perf_counter()
            run_round(str(sock), messages, args.sessions)
            elapsed = time.perf_counter() - started
            per_round.append(1000 * (cpu_seconds(pids) - before) / len(messages))
            print(
                f"round: {per_round[-1]:.3f} ms CPU per message, "
                f"{len(messages) / elapsed:.0f} msgs/s through the socket, RSS {rss_mib(pids):.1f} MiB"
            )
        name = "trivial pymilter" if args.trivial else "filterd"
        print(
            f"{name}: best {min(per_round):.3f}, median {sorted(per_round)[len(per_round) // 2]:.3f} ms CPU/msg"
        )
    finally:
        if filterd is not None:
            filterd.stop()
        if proc is not None:
            proc.terminate()
            proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

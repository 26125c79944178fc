"""The whole path as an admin runs it: client -> Postfix -> filterd (milter) -> Postfix -> sink.

`Stack` owns a sink, a private Postfix wired to filterd's unix socket, and filterd itself.  Tests
send with smtplib and assert on the SMTP reply or on what reached the sink.  `Stack.configured()`
runs filterd with another configuration for the length of a `with` block.
"""

from __future__ import annotations

import contextlib
import email.utils
import os
import smtplib
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tests.harness.filterd import Filterd
from tests.harness.postfix import Postfix
from tests.harness.sink import Sink


def make_message(
    subject: str | None = None,
    body: str = "Hello,\r\njust a test.\r\n",
    *,
    sender: str = "alice@example.org",
    to: str = "bob@example.net",
    headers: Sequence[tuple[str, str]] = (),
) -> tuple[bytes, str]:
    """A well-formed message with a unique marker in its Subject; returns (bytes, marker)."""
    marker = f"m-{uuid.uuid4().hex[:12]}"
    lines = [
        f"From: Alice <{sender}>",
        f"To: <{to}>",
        f"Subject: {subject or 'test'} {marker}",
        f"Date: {email.utils.formatdate(localtime=True)}",
        f"Message-ID: <{marker}@example.org>",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        *(f"{k}: {v}" for k, v in headers),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode(), marker


def private_dir(prefix: str) -> Path:
    """A temp dir the postfix user can traverse (pytest's own are 0700), for sockets Postfix opens."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(path, 0o755)
    return path


class Stack:
    def __init__(self, base_config: dict[str, Any] | None = None) -> None:
        self.dir = private_dir("filterd-stack-")
        self.sink = Sink()
        self.filterd = Filterd(self.dir, self.dir / "filterd.sock")
        self.postfix = Postfix(self.dir / "postfix", f"unix:{self.filterd.socket_path}", self.sink.port)
        # quarantined mail stays in the stack's dir (never /var/lib/filterd) and is released
        # through this Postfix's milter-less listener
        self.quarantine_dir = self.dir / "quarantine"
        self.base_config = {
            "quarantine": {
                "directory": str(self.quarantine_dir),
                "release_via": str(self.postfix.reinject_socket),
            },
            **(base_config or {}),
        }

    def start(self) -> None:
        self.sink.start()
        self.filterd.configure(self.base_config)
        self.filterd.start()
        self.postfix.start()

    def stop(self) -> None:
        self.postfix.stop()
        self.filterd.stop()
        self.sink.stop()

    @contextlib.contextmanager
    def configured(self, config: dict[str, Any]) -> Iterator[Filterd]:
        """Run filterd with `config` (merged over the base) inside the block, then restore it."""
        self.filterd.stop()
        self.filterd.configure({**self.base_config, **config})
        self.filterd.start()
        try:
            yield self.filterd
        finally:
            self.filterd.stop()
            self.filterd.configure(self.base_config)
            self.filterd.start()

    def send(
        self,
        data: bytes,
        mail_from: str = "alice@example.org",
        rcpts: Sequence[str] = ("bob@example.net",),
        helo: str = "client.example.org",
    ) -> dict[str, Any]:
        """Send one message through Postfix's filtered listener; raises smtplib's errors on 4xx/5xx."""
        with smtplib.SMTP("127.0.0.1", self.postfix.port, local_hostname=helo, timeout=60) as smtp:
            return smtp.sendmail(mail_from, list(rcpts), data)

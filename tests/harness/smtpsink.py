"""A recording SMTP sink (aiosmtpd) on a free loopback port: what a release re-injects lands here."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any

from aiosmtpd.controller import Controller

from tests.harness.net import free_port


@dataclass(frozen=True)
class Received:
    mail_from: str
    rcpts: tuple[str, ...]
    data: bytes  # the message as sent, dot-stuffing undone, CRLF kept


class _Handler:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if address in self.sink.refuse:
            return "550 5.1.1 No such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.sink.delay:
            await asyncio.sleep(self.sink.delay)  # hold the transaction open, for concurrency tests
        with self.sink.lock:
            self.sink.messages.append(
                Received(envelope.mail_from, tuple(envelope.rcpt_tos), bytes(envelope.original_content))
            )
        return "250 OK stored"


class SmtpSink:
    def __init__(self, delay: float = 0.0, refuse: tuple[str, ...] = ()) -> None:
        """`delay`: seconds each DATA is held before the reply; `refuse`: recipients refused at RCPT."""
        self.port = free_port()
        self.delay = delay
        self.refuse = set(refuse)
        self.messages: list[Received] = []
        self.lock = threading.Lock()
        self.controller = Controller(_Handler(self), hostname="127.0.0.1", port=self.port)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()

    def __enter__(self) -> SmtpSink:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

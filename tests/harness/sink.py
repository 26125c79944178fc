"""An SMTP sink on a free loopback port that records every message it receives."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from aiosmtpd.controller import Controller

from tests.harness.net import free_port


@dataclass(frozen=True)
class Received:
    mail_from: str
    rcpts: tuple[str, ...]
    data: bytes

    def header(self, name: str) -> list[str]:
        """Values of the headers called `name` (unfolded), from the received bytes."""
        from filterd.message import Message

        return Message(self.data).header_values(name)


class _Handler:
    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = Received(envelope.mail_from, tuple(envelope.rcpt_tos), bytes(envelope.original_content))
        with self.sink.lock:
            self.sink.messages.append(message)
        return "250 OK"


class Sink:
    def __init__(self) -> None:
        self.port = free_port()
        self.messages: list[Received] = []
        self.lock = threading.Lock()
        self.controller = Controller(
            _Handler(self),
            hostname="127.0.0.1",
            port=self.port,
            data_size_limit=100 * 1024 * 1024,
            decode_data=False,
        )

    def start(self) -> None:
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()

    def clear(self) -> None:
        with self.lock:
            self.messages.clear()

    def wait_for(self, count: int, timeout: float = 20.0) -> list[Received]:
        """Wait until at least `count` messages arrived; return them all."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.messages) >= count:
                    return list(self.messages)
            time.sleep(0.05)
        with self.lock:
            raise TimeoutError(f"sink has {len(self.messages)} messages, expected {count}")

    def find(self, marker: str, timeout: float = 20.0) -> Received:
        """Wait for the message whose bytes contain `marker` (e.g. a unique Subject)."""
        needle = marker.encode()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                for m in self.messages:
                    if needle in m.data:
                        return m
            time.sleep(0.05)
        raise TimeoutError(f"no message with {marker!r} reached the sink")

    def count(self, marker: str) -> int:
        needle = marker.encode()
        with self.lock:
            return sum(1 for m in self.messages if needle in m.data)

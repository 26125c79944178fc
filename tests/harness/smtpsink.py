"""The recording sink (tests/harness/sink.py) with two extras the quarantine tests need.

- `delay`: each DATA is held that many seconds before the reply, so two concurrent releases
  really overlap;
- `refuse`: recipients refused at RCPT, for a partly refused release.
Used as a context manager; `address` is its HOST:PORT, as ``[quarantine] release_via`` takes it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiosmtpd.controller import Controller

from tests.harness.sink import Received, Sink, _Handler

__all__ = ["Received", "SmtpSink"]


class _Handler2(_Handler):
    sink: SmtpSink

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if address in self.sink.refuse:
            return "550 5.1.1 No such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.sink.delay:
            await asyncio.sleep(self.sink.delay)
        return await super().handle_DATA(server, session, envelope)


class SmtpSink(Sink):
    def __init__(self, delay: float = 0.0, refuse: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.delay = delay
        self.refuse = set(refuse)
        self.controller.loop.close()  # the base class's controller, never started: replaced here
        self.controller = Controller(_Handler2(self), hostname="127.0.0.1", port=self.port, decode_data=False)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> SmtpSink:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

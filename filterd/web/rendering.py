"""A quarantined message made safe to show in a page.

The message was written by its sender, and the page is read by someone with the power to release
mail: nothing of the message may act in the reviewer's browser.  So its HTML is never shown as
HTML.  What is shown is text: the text/plain parts, and the text extracted from the HTML parts by
the same parser the checks use (filterd.htmlscan, lexbor), every character of which Jinja2 then
escapes.  No image, no link, no style and no script of the message reaches the page; the
Content-Security-Policy of every page (filterd.web.app) is a second wall behind this one.

Control characters are shown as escapes (as `filterctl quarantine show` does): a bidirectional
override in a subject must not make "moc.knab" read as "bank.com".
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from filterd.cli.quarantine_cmd import visible
from filterd.message import Message


def shown(value: Any) -> str:
    """Any value as text fit for a page: undecodable bytes as U+FFFD, controls as escapes."""
    text = "" if value is None else str(value)
    return visible(text.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))


def when(timestamp: Any) -> str:
    try:
        return dt.datetime.fromtimestamp(float(timestamp), dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    except (TypeError, ValueError, OverflowError, OSError):
        return "-"


@dataclass(frozen=True)
class PartView:
    content_type: str
    filename: str
    size: int
    attachment: bool


@dataclass(frozen=True)
class MessageView:
    headers: list[tuple[str, str]]
    text: str
    parts: list[PartView]


def message_view(raw: bytes) -> MessageView:
    message = Message(raw)
    return MessageView(
        headers=[(shown(name), shown(value)) for name, value in message.headers],
        text=shown(message.text),
        parts=[
            PartView(shown(p.content_type), shown(p.filename or ""), p.size, p.is_attachment)
            for p in message.parts
        ],
    )

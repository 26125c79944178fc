"""Small synthetic messages and models for the bayes tests."""

from __future__ import annotations

import itertools
from typing import Any

from filterd.bayes.model import Model, message_digest
from filterd.config import registered_checks
from filterd.message import Message

_counter = itertools.count()

SPAM_WORDS = [
    "viagra",
    "cheap",
    "pills",
    "winner",
    "lottery",
    "claim",
    "prize",
    "cash",
    "offer",
    "unsubscribe",
    "click",
    "free",
    "money",
]
HAM_WORDS = [
    "meeting",
    "agenda",
    "patch",
    "review",
    "kernel",
    "build",
    "release",
    "notes",
    "thanks",
    "regards",
    "python",
    "tests",
]


def make_message(
    subject: str, body: str, *, headers: tuple[tuple[str, str], ...] = (), message_id: str | None = None
) -> bytes:
    mid = message_id or f"<m{next(_counter)}@example.org>"
    head = [("From", "Someone <someone@example.org>"), ("To", "you@example.net"), ("Subject", subject)]
    head += [("Message-ID", mid), *headers]
    text = "".join(f"{n}: {v}\r\n" for n, v in head) + "\r\n" + body + "\r\n"
    return text.encode("utf-8")


def spam_message(i: int) -> bytes:
    words = [SPAM_WORDS[(i + k) % len(SPAM_WORDS)] for k in range(8)]
    body = " ".join(words) + " http://win.example.biz/claim"
    return make_message(f"{words[0]} {words[1]} now", body, message_id=f"<spam{i}@example.biz>")


def ham_message(i: int) -> bytes:
    words = [HAM_WORDS[(i + k) % len(HAM_WORDS)] for k in range(8)]
    body = " ".join(words) + " https://git.example.org/repo"
    return make_message(f"Re: {words[0]} {words[1]}", body, message_id=f"<ham{i}@example.org>")


def trained_model(n: int = 30) -> Model:
    """A model trained with n synthetic spam and n synthetic ham messages."""
    model = Model.empty()
    for i in range(n):
        for raw, label in ((spam_message(i), "spam"), (ham_message(i), "ham")):
            msg = Message(raw)
            _, buckets = model.features(msg)
            model.train(message_digest(msg), buckets, label)
    return model


def only_bayes(bayes: dict[str, Any], *also: str) -> dict[str, Any]:
    """[checks] with every check but bayes (and `also`) off: no DNS lookups from the bayes tests."""
    checks: dict[str, Any] = {c.name: {"enabled": False} for c in registered_checks() if c.name not in also}
    # the shared model and signatures, which these tests exercise (the defaults are a file, no signatures)
    checks["bayes"] = {"enabled": True, "storage": "redis", "signature": True, **bayes}
    return checks

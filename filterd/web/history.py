"""The history page: the last verdicts filterd gave, read from Redis.

filterd (filterd.stats, docs/stats.md) pushes one JSON object per verdict to the list
``{key_prefix}stats:history``, newest first, capped at ``[stats] history``; each is::

    {"ts": unix time, "qid": queue id or null, "action": str, "score": float, "from": str,
     "rcpts": [str], "subject": str, "client": str, "direction": str, "symbols": [[name, score], ...]}

The page reads the newest ``[web] history_size`` of them and searches them here.  An element that
is not such an object is skipped: the list is written by another program, and one bad entry must
not hide the others.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, request

from filterd.services import Services
from filterd.stats import StatsKeys
from filterd.web.access import may_see, visible_rcpts
from filterd.web.common import console, current_user, page
from filterd.web.passwords import User

blueprint = Blueprint("history", __name__, url_prefix="/history")


@dataclass(frozen=True)
class Verdict:
    ts: float
    qid: str
    action: str
    score: float
    sender: str
    rcpts: list[str]
    subject: str
    client: str
    direction: str
    symbols: list[tuple[str, float]]

    def matches(self, query: str) -> bool:
        q = query.lower()
        return any(q in f.lower() for f in (self.qid, self.sender, self.subject, *self.rcpts))


def parse(element: bytes | str) -> Verdict | None:
    """One element of the list, or None when it is not a verdict."""
    try:
        d: Any = json.loads(element)
        if not isinstance(d, dict):
            return None
        symbols = [
            (str(s[0]), float(s[1])) for s in d.get("symbols") or [] if isinstance(s, list) and len(s) == 2
        ]
        return Verdict(
            ts=float(d.get("ts") or 0.0),
            qid=str(d.get("qid") or ""),
            action=str(d.get("action") or ""),
            score=float(d.get("score") or 0.0),
            sender=str(d.get("from") or ""),
            rcpts=[str(r) for r in d.get("rcpts") or []],
            subject=str(d.get("subject") or ""),
            client=str(d.get("client") or ""),
            direction=str(d.get("direction") or ""),
            symbols=symbols,
        )
    except (ValueError, TypeError, AttributeError, IndexError):
        return None


def read_history(client: Any, key: str, count: int) -> list[Verdict]:
    parsed = (parse(e) for e in client.lrange(key, 0, count - 1))
    return [v for v in parsed if v is not None]


def for_user(verdicts: list[Verdict], user: User) -> list[Verdict]:
    """Only the verdicts `user` may see, each with only its recipients in the user's domains."""
    if not user.domains:
        return verdicts
    return [
        Verdict(**{**v.__dict__, "rcpts": visible_rcpts(user, v.rcpts)})
        for v in verdicts
        if may_see(user, v.rcpts)
    ]


@blueprint.get("")
def listing() -> Any:
    c, user = console(), current_user()
    query = request.args.get("q", "").strip()[:200]
    action = request.args.get("action", "").strip()[:40]
    key = StatsKeys(c.config.redis.key_prefix).history
    services = Services(c.config)
    error = None
    verdicts: list[Verdict] = []
    try:
        verdicts = for_user(read_history(services.redis, key, c.config.web.history_size), user)
    except Exception as exc:  # any Redis failure (refused, timeout, auth, breaker open): say so
        error = f"Redis at {c.config.redis.url} cannot be read: {type(exc).__name__}: {exc}"
    finally:
        services.close()
    actions = sorted({v.action for v in verdicts})
    found = [v for v in verdicts if (not query or v.matches(query)) and (not action or v.action == action)]
    return page(
        "history.html",
        verdicts=found,
        total=len(verdicts),
        query=query,
        action=action,
        actions=actions,
        error=error,
        key=key,
    )

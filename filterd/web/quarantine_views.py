"""The quarantine pages: the list (search, filters, bulk actions), one message, and the actions.

Every action goes through the code `filterctl quarantine` runs: a release is
`filterd.quarantine.release.release` (exactly once, under the entry's lock), a delete is
`QuarantineStore.delete`, and training runs `filterctl quarantine train` itself in a child
process (it holds the model's file lock and loads the model: neither belongs in the console's
threads).
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import Blueprint, abort, request
from werkzeug.datastructures import MultiDict

from filterd.quarantine import release as releasing
from filterd.quarantine.store import Entry, InvalidId, QuarantineError, UnknownId, validate_id
from filterd.web.access import may_act, may_see, visible_rcpts
from filterd.web.common import console, current_user, page
from filterd.web.passwords import User
from filterd.web.rendering import message_view, shown

blueprint = Blueprint("quarantine", __name__, url_prefix="/quarantine")

ACTIONS = {"release": "Release", "delete": "Delete", "spam": "Train as spam", "ham": "Train as ham"}
TRAIN_TIMEOUT = 600.0  # seconds: training many messages on a busy host is slow, but not this slow


@dataclass(frozen=True)
class Filters:
    """The search form of the list, from the query string; a bad date is reported and ignored."""

    q: str = ""
    reason: str = ""
    since: str = ""
    until: str = ""
    status: str = "all"

    @classmethod
    def from_args(cls, args: MultiDict[str, str]) -> tuple[Filters, list[str]]:
        errors = []
        values = {k: args.get(k, "").strip()[:200] for k in ("q", "reason", "since", "until")}
        for key in ("since", "until"):
            if values[key] and _day(values[key]) is None:
                errors.append(f"{values[key]!r} is not a date (YYYY-MM-DD): ignored")
                values[key] = ""
        status = args.get("status", "all")
        return cls(status=status if status in ("all", "held", "released") else "all", **values), errors

    def keep(self, entry: Entry) -> bool:
        m = entry.meta
        if self.status != "all" and bool(entry.released) != (self.status == "released"):
            return False
        since, until = _day(self.since), _day(self.until)
        if since is not None and entry.timestamp < since:
            return False
        if until is not None and entry.timestamp >= until + 86400:  # the whole "until" day
            return False
        if self.reason and self.reason.lower() not in str(m.get("reason") or "").lower():
            return False
        if self.q:
            fields = [m.get("mail_from"), m.get("header_from"), m.get("subject"), *(m.get("rcpts") or [])]
            return self.q.lower() in " ".join(str(f or "") for f in fields).lower()
        return True


def _day(text: str) -> float | None:
    """The UTC start of a YYYY-MM-DD day, as a timestamp."""
    try:
        return dt.datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=dt.UTC).timestamp()
    except ValueError:
        return None


@dataclass(frozen=True)
class Outcome:
    id: str
    ok: bool
    text: str


def _rcpts(entry: Entry) -> list[str]:
    return [str(r) for r in entry.meta.get("rcpts") or []]


@blueprint.get("")
def listing() -> Any:
    c, user = console(), current_user()
    filters, errors = Filters.from_args(request.args)
    try:
        entries = [
            e for e in reversed(c.store.entries()) if may_see(user, _rcpts(e)) and filters.keep(e)
        ]  # newest first
    except QuarantineError as exc:
        return page("error.html", 500, title="Quarantine unreadable", message=shown(exc))
    size = c.config.web.page_size
    pages = max(1, -(-len(entries) // size))
    try:
        number = min(max(1, int(request.args.get("page", "1"))), pages)
    except ValueError:
        number = 1
    shown_entries = entries[(number - 1) * size : number * size]
    return page(
        "quarantine.html",
        rows=[_row(e, user) for e in shown_entries],
        total=len(entries),
        filters=filters,
        errors=errors,
        page_number=number,
        pages=pages,
        actions=ACTIONS,
        hold_mode=c.config.quarantine.mode == "hold",
        args={k: v for k, v in request.args.items() if k not in ("page", "select")},
        # no script on these pages (the CSP allows none): "select all" is a link that checks the boxes
        select_all=request.args.get("select") == "all",
    )


def _row(entry: Entry, user: User) -> dict[str, Any]:
    m = entry.meta
    score = m.get("score")
    return {
        "id": entry.id,
        "timestamp": entry.timestamp,
        "sender": m.get("mail_from") or "",
        "rcpts": visible_rcpts(user, _rcpts(entry)),
        "subject": m.get("subject") or "",
        "score": f"{score:.2f}" if isinstance(score, int | float) else "",
        "reason": m.get("reason") or "",
        "released": bool(entry.released),
        "may_act": may_act(user, _rcpts(entry)),
    }


@blueprint.get("/<qid>")
def show(qid: str) -> Any:
    c, user = console(), current_user()
    try:
        entry = c.store.get(validate_id(qid))
        if not may_see(user, _rcpts(entry)):
            raise UnknownId(qid)  # a domain admin is not told that another domain's message exists
        view = message_view(entry.original())
    except (InvalidId, UnknownId):
        abort(404)
    except QuarantineError as exc:
        return page("error.html", 500, title="Message unreadable", message=shown(exc))
    return page(
        "message.html",
        entry=entry,
        row=_row(entry, user),
        meta=entry.meta,
        view=view,
        actions=ACTIONS,
    )


@blueprint.post("/act")
def act() -> Any:
    action = request.form.get("action", "")
    ids = list(dict.fromkeys(request.form.getlist("id")))  # once each, in order
    if action not in ACTIONS:
        return page("error.html", 400, title="Unknown action", message=f"{shown(action)!r} is not an action")
    if not ids:
        return page("error.html", 400, title="Nothing selected", message="Select at least one message.")
    if action == "delete" and request.form.get("confirm") != "yes":
        return page("confirm_delete.html", ids=ids)
    outcomes = perform(action, ids, current_user())
    return page("results.html", action=ACTIONS[action], outcomes=outcomes)


def perform(action: str, ids: Sequence[str], user: User) -> list[Outcome]:
    """Do `action` on each id the user may act on; one outcome per id, in order."""
    store = console().store
    outcomes: dict[str, Outcome] = {}
    allowed: list[str] = []
    for qid in ids:
        try:
            entry = store.get(validate_id(qid))
        except (InvalidId, UnknownId):
            outcomes[qid] = Outcome(qid, False, "no such quarantined message")
            continue
        except QuarantineError as exc:
            outcomes[qid] = Outcome(qid, False, shown(exc))
            continue
        if not may_see(user, _rcpts(entry)):
            outcomes[qid] = Outcome(qid, False, "no such quarantined message")
        elif not may_act(user, _rcpts(entry)):
            outcomes[qid] = Outcome(
                qid, False, "it has recipients outside your domains: an administrator must do this"
            )
        else:
            allowed.append(qid)
    if action in ("spam", "ham") and allowed:
        ok, text = train(action, allowed)
        outcomes.update({qid: Outcome(qid, ok, text) for qid in allowed})
    for qid in allowed if action in ("release", "delete") else ():
        outcomes[qid] = _release(qid) if action == "release" else _delete(qid)
    return [outcomes[qid] for qid in ids]


def _release(qid: str) -> Outcome:
    try:
        entry = releasing.release(console().store, qid)
    except QuarantineError as exc:
        return Outcome(qid, False, shown(exc))
    r = entry.released or {}
    text = f"released to {', '.join(r.get('to', []))} via {r.get('via')}"
    refused = r.get("refused") or {}
    if refused:
        text += "; refused: " + "; ".join(f"{rcpt}: {why}" for rcpt, why in refused.items())
    return Outcome(qid, not refused, shown(text))


def _delete(qid: str) -> Outcome:
    try:
        console().store.delete(qid)
    except QuarantineError as exc:
        return Outcome(qid, False, shown(exc))
    return Outcome(qid, True, "deleted")


def train(label: str, ids: Sequence[str]) -> tuple[bool, str]:
    """Run `filterctl quarantine train LABEL IDS...` with this console's configuration and code."""
    cfg = console().config
    command = [sys.executable, "-c", "from filterd.cli.filterctl import main; main()"]
    if cfg.path:
        command += ["--config", cfg.path]
    command += ["quarantine", "train", label, *ids]
    env = dict(os.environ)
    # the same filterd as the console's, installed or not
    root = str(Path(__file__).resolve().parents[2])  # the directory holding filterd/
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, errors="replace", timeout=TRAIN_TIMEOUT, env=env
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, shown(f"training failed: {exc}")
    output = " ".join((done.stdout + done.stderr).split())
    return done.returncode == 0, shown(output or f"filterctl exited with status {done.returncode}")

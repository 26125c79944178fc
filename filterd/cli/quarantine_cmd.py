"""`filterctl quarantine list|show|release|delete|purge|train`: how an admin deals with what was held
back.  `train` (and `release --train`) hand the message as received to `filterctl train`."""

from __future__ import annotations

import datetime as dt
import json
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from filterd.cli.common import load
from filterd.quarantine import release as releasing
from filterd.quarantine.store import (
    Entry,
    QuarantineError,
    QuarantineStore,
    matches,
    parse_duration,
    validate_id,
)

# Every character that a terminal may act on rather than print: C0 controls but \t and \n, DEL,
# the C1 controls (U+0080..U+009F: U+009B is a one-character CSI on many terminals), and the
# Unicode bidirectional overrides and isolates (they reorder what the admin reads).  A quarantined
# message is written by its sender: its subject must never move the cursor, retitle the window,
# ring the bell or hide text from the admin reading it.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def visible(text: str) -> str:
    """`text` with every control character shown as an escape (``\\x1b``, ``\\u202e``)."""
    return _UNSAFE.sub(_escape, text)


def _escape(m: re.Match[str]) -> str:
    code = ord(m.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _json_line(value: Any) -> str:
    """One JSON object on one line.  json escapes C0 controls itself; with ensure_ascii off it
    leaves C1 and bidi characters raw, so those are written as \\u escapes too (still valid JSON)."""
    return _UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", json.dumps(value, ensure_ascii=False))


class BadIdError(click.ClickException):
    exit_code = 2  # the ID is malformed: a usage error, as click's own


@contextmanager
def _errors() -> Iterator[None]:
    """QuarantineError -> a one-line error and a non-zero exit, never a traceback."""
    try:
        yield
    except QuarantineError as exc:
        cls = BadIdError if exc.exit_code == 2 else click.ClickException
        raise cls(visible(str(exc))) from exc  # it may quote metadata, ids or a server's reply


def _store(ctx: click.Context) -> QuarantineStore:
    cfg = load(ctx)
    if cfg.quarantine.mode == "hold":
        click.echo(
            'note: [quarantine] mode is "hold": new quarantined mail is in Postfix\'s hold queue '
            "(postqueue -p; postsuper -H ID releases); this shows only what filterd stored",
            err=True,
        )
    return QuarantineStore(cfg.quarantine)


def _parse_since(value: str) -> float:
    """`--since`: a duration back from now ("2d", "12h") or a date/time ("2024-05-01", "2024-05-01T10:00")."""
    try:
        return dt.datetime.now(dt.UTC).timestamp() - parse_duration(value)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is neither a duration (2d, 12h) nor a date (2024-05-01[T10:00])", param_hint="--since"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def _id_arg(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    with _errors():
        return validate_id(value)


def _when(entry: Entry) -> str:
    return dt.datetime.fromtimestamp(entry.timestamp, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _summary(entry: Entry) -> dict[str, Any]:
    m = entry.meta
    return {
        "id": entry.id,
        "time": m.get("time"),
        "queue_id": m.get("queue_id"),
        "mail_from": m.get("mail_from"),
        "rcpts": m.get("rcpts") or [],
        "subject": m.get("subject"),
        "score": m.get("score"),
        "reason": m.get("reason"),
        "released": m.get("released"),
    }


@click.group()
def quarantine() -> None:
    """Review quarantined messages: list, show, release, delete, purge, train."""


@quarantine.command("list")
@click.option(
    "--since", metavar="WHEN", help="only entries newer than this: 2d, 12h, or 2024-05-01[T10:00] (UTC)"
)
@click.option("--reason", metavar="TEXT", help="only entries whose reason contains TEXT (e.g. virus, score)")
@click.option(
    "--from", "sender", metavar="ADDR", help="only entries whose sender (envelope or From:) contains ADDR"
)
@click.option("--rcpt", metavar="ADDR", help="only entries with a recipient containing ADDR")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
@click.pass_context
def list_(
    ctx: click.Context,
    since: str | None,
    reason: str | None,
    sender: str | None,
    rcpt: str | None,
    as_json: bool,
) -> None:
    """List quarantined messages, oldest first."""
    store = _store(ctx)
    since_ts = _parse_since(since) if since else None
    with _errors():
        found = [e for e in store.entries() if matches(e, since_ts, reason, sender, rcpt)]
    if as_json:
        for entry in found:
            click.echo(_json_line(_summary(entry)))
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"Quarantine {store.dir}: {len(found)} message(s)", title_justify="left")
    for column in ("time (UTC)", "id", "sender", "recipients", "subject", "score", "reason", "status"):
        # the id is what the admin copies into the next command: never fold it
        fixed = column in ("time (UTC)", "id", "score", "status")
        table.add_column(column, overflow="fold", no_wrap=fixed, min_width=None)
    for entry in found:
        m = entry.meta
        score = m.get("score")
        cells = [
            _when(entry),
            entry.id,
            f"<{m.get('mail_from') or ''}>",
            ", ".join(m.get("rcpts") or []),
            str(m.get("subject") or ""),
            f"{score:.2f}" if isinstance(score, int | float) else "",
            str(m.get("reason") or ""),
            "released" if entry.released else "held",
        ]
        # Text, not markup: a subject such as "[bold]" comes from the sender and must print as is
        # and made visible: rich passes ESC and the C1 controls through to the terminal
        table.add_row(*(Text(visible(c)) for c in cells))
    Console(width=None if sys.stdout.isatty() else 160).print(table)


@quarantine.command()
@click.argument("qid", metavar="ID", callback=_id_arg)
@click.option("--raw", is_flag=True, help="print the exact bytes received, nothing else")
@click.pass_context
def show(ctx: click.Context, qid: str, raw: bool) -> None:
    """Show one message: metadata, symbols, headers and its text."""
    store = _store(ctx)
    with _errors():
        entry = store.get(qid)
        data = entry.original()
    if raw:
        if sys.stdout.isatty():
            raise click.ClickException(
                "--raw writes the sender's bytes unchanged, terminal controls included: "
                "redirect it to a file or a pager (filterctl quarantine show --raw ID | less)"
            )
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    from filterd.message import Message

    m = entry.meta
    lines = [
        f"id:         {entry.id}",
        f"time:       {m.get('time')}",
        f"queue id:   {m.get('queue_id') or '-'}",
        f"client:     {m.get('client_name') or 'unknown'}[{m.get('client_addr') or '-'}]",
        f"helo:       {m.get('helo') or '-'}",
        f"sender:     <{m.get('mail_from') or ''}>",
        f"recipients: {', '.join(m.get('rcpts') or []) or '-'}",
        f"score:      {m.get('score')} (required {m.get('required')}), action {m.get('action')}",
        f"reason:     {m.get('reason')}",
        f"size:       {m.get('size')} bytes, sha256 {m.get('sha256')}",
    ]
    released = entry.released
    if released:
        lines.append(f"released:   {released.get('time')} to {', '.join(released.get('to', []))}")
        for rcpt, why in (released.get("refused") or {}).items():
            lines.append(f"  refused:  {rcpt}: {why}")
    lines.append("symbols:")
    for s in m.get("symbols") or []:
        lines.append(f"  {s.get('score', 0):6.2f} {s.get('name')}  {s.get('reason', '')}")
    lines.append("headers filterd would have added:")
    for name, value in m.get("added_headers") or []:
        lines.append(f"  {name}: {value}")
    message = Message(data)
    lines.append("headers as received:")
    for name, value in message.headers:
        lines.append(f"  {name}: {value}")
    lines.append("")
    lines.append("text:")
    lines.append(message.text or "(no text part)")
    # 8-bit header bytes arrive as surrogate escapes: show them as U+FFFD rather than crash;
    # and no control character of the sender's reaches the terminal raw
    text = "\n".join(lines).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    click.echo(visible(text))


@quarantine.command()
@click.argument("qid", metavar="ID", callback=_id_arg)
@click.option(
    "--to",
    "to",
    multiple=True,
    metavar="ADDR",
    help="deliver to ADDR instead of the original recipients (repeatable)",
)
@click.option("--train", "train_ham", is_flag=True, help="also train the classifier with it as ham")
@click.pass_context
def release(ctx: click.Context, qid: str, to: tuple[str, ...], train_ham: bool) -> None:
    """Re-inject the message as received to its recipients (or ADDR) and mark it released."""
    store = _store(ctx)
    with _errors():
        entry = releasing.release(store, qid, to)
    released = entry.released or {}
    click.echo(visible(f"{qid}: released to {', '.join(released.get('to', []))} via {released.get('via')}"))
    if train_ham:
        _train(ctx, "ham", (qid,))
    refused = released.get("refused") or {}
    if refused:
        for rcpt, why in refused.items():
            click.echo(visible(f"{qid}: refused for {rcpt}: {why}"), err=True)
        ctx.exit(1)


@quarantine.command("train")
@click.argument("label", type=click.Choice(["spam", "ham"]))
@click.argument("qids", metavar="ID...", nargs=-1, required=True)
@click.pass_context
def train_(ctx: click.Context, label: str, qids: tuple[str, ...]) -> None:
    """Train the classifier with quarantined messages as LABEL (as `filterctl train --quarantine`)."""
    _train(ctx, label, qids)


def _train(ctx: click.Context, label: str, qids: tuple[str, ...]) -> None:
    from filterd.cli.bayes_cmd import train

    ctx.invoke(train, label=label, quarantined=qids, quiet=True)


@quarantine.command()
@click.argument("qid", metavar="ID", callback=_id_arg)
@click.pass_context
def delete(ctx: click.Context, qid: str) -> None:
    """Remove one message and its metadata."""
    store = _store(ctx)
    with _errors():
        store.delete(qid)
    click.echo(f"{qid}: deleted")


@quarantine.command()
@click.option(
    "--older-than",
    metavar="AGE",
    help="remove entries older than AGE (30d, 12h); default: [quarantine] max_age",
)
@click.option("--dry-run", is_flag=True, help="only print what would be removed")
@click.pass_context
def purge(ctx: click.Context, older_than: str | None, dry_run: bool) -> None:
    """Remove old messages (data and metadata together) and leftovers of interrupted writes."""
    store = _store(ctx)
    try:
        age = parse_duration(older_than) if older_than else store.settings.max_age_seconds
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--older-than") from None
    with _errors():
        removed = store.purge(age, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for name in removed:
        click.echo(f"{verb} {name}")
    click.echo(f"{verb} {len(removed)} item(s) older than {older_than or store.settings.max_age}")

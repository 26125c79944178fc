"""`filterctl scan`: run the pipeline offline on stored messages, like `spamassassin -t`."""

from __future__ import annotations

import json

import click

from filterd.cli.common import load, read_messages
from filterd.driver import SmtpContext
from filterd.driver import scan as scan_message
from filterd.pipeline import Pipeline
from filterd.settings import ConfigError


@click.command()
@click.argument("sources", nargs=-1, required=True, metavar="FILE|DIR|-...")
@click.option(
    "--client-ip", help="client address the message came from (checks that need it are skipped without)"
)
@click.option("--client-name", help="verified reverse-DNS name of the client")
@click.option("--helo", help="HELO/EHLO name the client gave")
@click.option("--mail-from", help="envelope sender")
@click.option("--rcpt", "rcpts", multiple=True, help="envelope recipient (repeatable)")
@click.option("--auth-user", help="treat as submitted by this authenticated user (outbound)")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
@click.pass_context
def scan(
    ctx: click.Context,
    sources: tuple[str, ...],
    client_ip: str | None,
    client_name: str | None,
    helo: str | None,
    mail_from: str | None,
    rcpts: tuple[str, ...],
    auth_user: str | None,
    as_json: bool,
) -> None:
    """Score stored messages and print score, action and symbols, one line per message."""
    cfg = load(ctx)
    try:
        pipeline = Pipeline.from_config(cfg)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    context = SmtpContext(
        client_addr=client_ip,
        client_name=client_name,
        helo=helo,
        mail_from=mail_from,
        rcpts=rcpts,
        auth_user=auth_user,
    )
    for name, raw in read_messages(sources):
        _, verdict = scan_message(pipeline, raw, context)
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "file": name,
                        "score": verdict.score,
                        "required": verdict.required,
                        "action": verdict.action.value,
                        "reply": str(verdict.decision.reply)
                        if verdict.decision and hasattr(verdict.decision, "reply")
                        else None,
                        "symbols": [
                            {"name": s.name, "score": s.score, "reason": s.reason} for s in verdict.symbols
                        ],
                    }
                )
            )
        else:
            symbols = " ".join(f"{s.name}({s.score:g})" for s in verdict.symbols) or "-"
            click.echo(f"{name}\t{verdict.score:.2f}\t{verdict.action.value}\t{symbols}")
    pipeline.close()

"""`filterctl scan`: run the pipeline offline on stored messages, like `spamassassin -t`."""

from __future__ import annotations

import dataclasses
import json

import click

from filterd.cli.common import load, read_messages
from filterd.combination import spamicity_of
from filterd.config import Config, without_network
from filterd.driver import SmtpContext
from filterd.driver import scan as scan_message
from filterd.pipeline import Pipeline
from filterd.results import Action
from filterd.settings import ConfigError

# Exit status, as `spamassassin -e` and `spamc -c` tell spam from ham (click itself exits 2 on
# bad arguments, and 1 is spam here, so an error that is not the arguments' gets its own code).
EXIT_HAM = 0
EXIT_SPAM = 1
EXIT_USAGE = 2
EXIT_ERROR = 3
# Every action but these means the message was judged spam (or refused): tagged, subject
# rewritten, quarantined, greylisted, rejected or discarded.
NOT_SPAM = frozenset({Action.ACCEPT, Action.TEMPFAIL})


class ScanError(click.ClickException):
    exit_code = EXIT_ERROR


@click.command(
    epilog="Exit status: 0 every message is ham (accepted as it is); 1 at least one message is spam "
    "(tagged, subject rewritten, quarantined, greylisted, rejected or discarded); 2 bad arguments; "
    "3 the configuration could not be used."
)
@click.argument("sources", nargs=-1, required=True, metavar="FILE|DIR|-...")
@click.option(
    "--client-ip", help="client address the message came from (checks that need it are skipped without)"
)
@click.option("--client-name", help="verified reverse-DNS name of the client")
@click.option("--helo", help="HELO/EHLO name the client gave")
@click.option("--mail-from", help="envelope sender")
@click.option("--rcpt", "rcpts", multiple=True, help="envelope recipient (repeatable)")
@click.option("--auth-user", help="treat as submitted by this authenticated user (outbound)")
@click.option(
    "--json", "as_json", is_flag=True, help="one JSON object per line (with the Bayes spamicity as a number)"
)
@click.option(
    "--local",
    is_flag=True,
    help="local checks only, as spamassassin -L: the checks that need DNS, Redis or clamd are off",
)
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
    local: bool,
) -> None:
    """Score stored messages and print score, action and symbols, one line per message."""
    try:
        cfg = offline(load(ctx))
        if local:
            cfg = without_network(cfg)
        pipeline = Pipeline.from_config(cfg)
    except (ConfigError, click.ClickException) as exc:
        raise ScanError(exc.message if isinstance(exc, click.ClickException) else str(exc)) from exc
    context = SmtpContext(
        client_addr=client_ip,
        client_name=client_name,
        helo=helo,
        mail_from=mail_from,
        rcpts=rcpts,
        auth_user=auth_user,
    )
    status = EXIT_HAM
    try:
        for name, raw in read_messages(sources):
            tx, verdict = scan_message(pipeline, raw, context)
            if verdict.action not in NOT_SPAM:
                status = EXIT_SPAM
            if as_json:
                click.echo(
                    json.dumps(
                        {
                            "file": name,
                            "score": verdict.score,
                            "required": verdict.required,
                            "action": verdict.action.value,
                            "spamicity": spamicity_of(tx.findings),  # unrounded
                            "reply": str(verdict.decision.reply)
                            if verdict.decision and hasattr(verdict.decision, "reply")
                            else None,
                            "symbols": [
                                {"name": s.name, "score": s.score, "reason": s.reason}
                                for s in verdict.symbols
                            ],
                            # recipients refused at RCPT, as Postfix would refuse them (the verdict
                            # is for the others)
                            "refused": [{"rcpt": r, "reply": str(d.reply)} for r, d in tx.refused],
                        }
                    )
                )
            else:
                symbols = " ".join(f"{s.name}({s.score:g})" for s in verdict.symbols) or "-"
                click.echo(f"{name}\t{verdict.score:.2f}\t{verdict.action.value}\t{symbols}")
                for rcpt, decision in tx.refused:
                    click.echo(f"{name}\trefused <{rcpt}>: {decision.reply}")
    finally:
        pipeline.close()
    ctx.exit(status)


def offline(cfg: Config) -> Config:
    """`cfg` for scanning stored messages: with the Bayes model in a file, Redis is only where
    signatures would go, and a scanned message is never delivered, so no one could report it:
    signatures are off and the scan never touches Redis."""
    bayes = cfg.check_settings("bayes")
    if bayes.storage != "file" or not bayes.signature:
        return cfg
    checks = dataclasses.replace(cfg.checks, bayes=dataclasses.replace(bayes, signature=False))
    return dataclasses.replace(cfg, checks=checks)

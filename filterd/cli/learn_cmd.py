"""`filterctl learn-worker`: train the reports `filterd-learn` queued (Dovecot Junk moves)."""

from __future__ import annotations

import dataclasses
import logging
import signal
import sys
from types import FrameType

import click

from filterd.cli.common import load


@click.command(name="learn-worker")
@click.option("--once", is_flag=True, help="train what is queued now, then exit (default: keep working)")
@click.option("--name", default="", help="this worker's consumer name (default: the host name)")
@click.option(
    "--log", "show_log", type=int, default=0, metavar="N", help="print the last N learn events and exit"
)
@click.pass_context
def learn_worker(ctx: click.Context, once: bool, name: str, show_log: int) -> None:
    """Train the messages users reported as spam or ham (filterd-learn, from Dovecot's IMAPSieve).

    Reports wait in Redis until a worker has trained them, so none is lost while the worker is
    stopped.  Run one per host (a systemd unit: contrib/dovecot/filterd-learn-worker.service).
    """
    from filterd.learner import BLOCK_MS, Learner, learn_log
    from filterd.redisstate import redis_errors
    from filterd.services import Services

    cfg = load(ctx)
    # The blocking read waits BLOCK_MS for a report: the socket timeout must be longer than that.
    timeout = max(cfg.redis.timeout, BLOCK_MS / 1000 + 2)
    cfg = dataclasses.replace(cfg, redis=dataclasses.replace(cfg.redis, timeout=timeout))
    services = Services(cfg)
    try:
        if show_log:
            for row in learn_log(services.redis, cfg.redis.key_prefix, show_log):
                click.echo(
                    f"{row['id']}  {row.get('label', '?'):4}  {row.get('result', '?'):9}  "
                    f"{row.get('user') or '-'}  {row.get('digest', '')[:16]}"
                )
            return
        logging.basicConfig(
            stream=sys.stderr, level=logging.INFO, format="filterctl learn-worker: %(levelname)s %(message)s"
        )
        stopping = False

        def stop(_signum: int, _frame: FrameType | None) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        learner = Learner(cfg, services.redis, consumer=name)
        done = learner.run(lambda: stopping, once=once)
        if once:
            click.echo(f"{done} reports trained")
    except redis_errors() as exc:
        raise click.ClickException(f"redis at {cfg.redis.url}: {type(exc).__name__}: {exc}") from exc
    finally:
        services.close()

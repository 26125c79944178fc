"""`filterctl reputation show|reset IP|NETWORK|DOMAIN`: what the reputation counters say, and forgetting them."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import click

from filterd.cli.common import load

if TYPE_CHECKING:
    from filterd.reputation import Entity, ReputationStore


def _target(ctx: click.Context, target: str) -> tuple[ReputationStore, list[Entity]]:
    from filterd.reputation import entities_for_target, store_for

    store = store_for(load(ctx))
    try:
        return store, entities_for_target(target, store.settings)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="IP|NETWORK|DOMAIN") from exc


def _redis_failed(ctx: click.Context, exc: Exception) -> click.ClickException:
    return click.ClickException(f"cannot reach Redis at {load(ctx).redis.url}: {type(exc).__name__}: {exc}")


@click.group()
def reputation() -> None:
    """Show or reset the verdict counters of a client address, network or domain."""


@reputation.command()
@click.argument("target", metavar="IP|NETWORK|DOMAIN")
@click.pass_context
def show(ctx: click.Context, target: str) -> None:
    """Counts over the window and what they score: an IP with its network, or a domain as HELO,
    envelope sender and authenticated (SPF/DKIM pass) domain."""
    from filterd.redisstate import redis_errors
    from filterd.reputation import assess

    store, entities = _target(ctx, target)
    try:
        all_counts = store.read(entities, time.time())
    except redis_errors() as exc:
        raise _redis_failed(ctx, exc) from exc
    min_messages = store.settings.min_messages
    click.echo(f"{'kind':<5} {'value':<40} {'ham':>6} {'spam':>6} {'virus':>6} {'reject':>6}  assessment")
    for e, c in zip(entities, all_counts, strict=True):
        verdict = assess(c, store.settings)
        if verdict is None:
            said = f"not scored (fewer than {min_messages} messages)"
        else:
            said = f"{verdict.suffix} x{verdict.strength:.2f}" + (" TRUSTED" if verdict.trusted else "")
        counts = f"{c.ham:>6} {c.spam:>6} {c.virus:>6} {c.rejected:>6}"
        click.echo(f"{e.kind:<5} {e.value:<40} {counts}  {said}")
    click.echo(f"(last {store.settings.window_days} days)")


@reputation.command()
@click.argument("target", metavar="IP|NETWORK|DOMAIN")
@click.pass_context
def reset(ctx: click.Context, target: str) -> None:
    """Forget the counters of an IP and its network, or of a domain in every role."""
    from filterd.redisstate import redis_errors

    store, entities = _target(ctx, target)
    try:
        n = store.reset(entities)
    except redis_errors() as exc:
        raise _redis_failed(ctx, exc) from exc
    click.echo(f"{target}: deleted {n} record(s)")

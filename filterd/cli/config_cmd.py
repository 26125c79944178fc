"""`filterctl config check|defaults` and `filterctl symbols`."""

from __future__ import annotations

import click

from filterd.cli.common import load
from filterd.config import known_symbols, registered_checks, render_defaults
from filterd.pipeline import Pipeline
from filterd.settings import ConfigError


@click.group()
def config() -> None:
    """Validate the configuration or print the reference one."""


@config.command()
@click.pass_context
def check(ctx: click.Context) -> None:
    """Validate the configuration exactly as filterd does at start (exit 1 on error)."""
    cfg = load(ctx)
    try:
        pipeline = Pipeline.from_config(cfg)  # also reads list files and whatever else checks load
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    warnings = [w for c in pipeline.checks for w in getattr(c, "config_warnings", list)()]
    pipeline.close()
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(
        f"{cfg.path or 'built-in defaults'}: OK" + (f" ({len(warnings)} warning(s))" if warnings else "")
    )


@config.command()
def defaults() -> None:
    """Print every setting with its default and a comment (the contrib/filterd.toml file)."""
    click.echo(render_defaults(), nl=False)


@click.command()
@click.pass_context
def symbols(ctx: click.Context) -> None:
    """List every symbol: the check that emits it, its stage and its score in this configuration."""
    cfg = load(ctx)
    for c in registered_checks():
        for name in c.symbols:
            click.echo(f"{name:<28} {cfg.score_of(name):7.2f}  {c.name} ({c.stage.label})")
    for name in known_symbols():
        if not any(name in c.symbols for c in registered_checks()):
            click.echo(f"{name:<28} {cfg.score_of(name):7.2f}  pipeline")

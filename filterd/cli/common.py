"""What every filterctl command shares: the --config option, loading it, and reading messages."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import click

from filterd.config import DEFAULT_CONFIG_PATH, Config, load_config
from filterd.settings import ConfigError


def config_path_default() -> str:
    return os.environ.get("FILTERD_CONFIG", str(DEFAULT_CONFIG_PATH))


def load(ctx: click.Context) -> Config:
    """The configuration named by --config; a missing default file means the built-in defaults."""
    try:
        return load_or_raise(ctx)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


def load_or_raise(ctx: click.Context) -> Config:
    """`load`, raising the `ConfigError` (`filterctl config check` lists its problems)."""
    path: str = ctx.obj["config_path"]
    explicit: bool = ctx.obj["config_explicit"]
    if not explicit and not Path(path).exists():
        return load_config(None)
    return load_config(path)


def read_messages(sources: tuple[str, ...]) -> Iterator[tuple[str, bytes]]:
    """(name, raw bytes) for each FILE, each file under each DIR (sorted), or stdin for "-"."""
    for source in sources:
        if source == "-":
            yield "<stdin>", sys.stdin.buffer.read()
            continue
        path = Path(source)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
            for f in files:
                yield str(f), f.read_bytes()
        elif path.is_file():
            yield str(path), path.read_bytes()
        else:
            raise click.BadParameter(f"{source}: no such file or directory", param_hint="FILE|DIR|-")

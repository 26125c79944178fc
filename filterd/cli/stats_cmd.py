"""`filterctl stats`: the verdict counters in Redis (filterd.stats), as a table, JSON or graphs."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from filterd.cli.common import load
from filterd.stats import COUNTERS, Bucket, days_of, read_buckets, read_top, totals

DEFAULT_LAST = {"hour": 24, "day": 30}
# A graph's period: the buckets it plots, and how many.  Hours are kept 8 days by default
# ([stats] hourly_days), so a week is drawn from hours and a month or a year from days.
GRAPH_PERIODS = {"day": ("hour", 24), "week": ("hour", 168), "month": ("day", 31), "year": ("day", 365)}
# mailgraph's two panels: what came in and went through, and what was held back or marked
TRAFFIC_SERIES = ("received", "accepted")
REFUSED_SERIES = ("rejected", "tagged", "tempfailed", "greylisted", "quarantined", "virus")
INSTALL_HINT = (
    "the graphs need matplotlib: pip install 'filterd[eval]' (or apt-get install python3-matplotlib)"
)


def _redis_of(ctx: click.Context) -> tuple[Any, str, Any]:
    """(client, key prefix, services) for the configuration's Redis."""
    from filterd.services import Services

    cfg = load(ctx)
    services = Services(cfg)
    return services.redis, cfg.redis.key_prefix, services


def _redis_failure(exc: Exception) -> click.ClickException:
    return click.ClickException(f"Redis: {type(exc).__name__}: {exc}")


@click.group(invoke_without_command=True)
@click.option(
    "--period",
    type=click.Choice(["hour", "day"]),
    default="hour",
    show_default=True,
    help="one row per hour or per day",
)
@click.option(
    "--last", type=click.IntRange(1, 10_000), default=None, help="rows shown [default: 24 hours, 30 days]"
)
@click.option(
    "--top", type=click.IntRange(0, 1000), default=10, show_default=True, help="entries of the top lists"
)
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of tables")
@click.pass_context
def stats(ctx: click.Context, period: str, last: int | None, top: int, as_json: bool) -> None:
    """Verdicts counted in Redis, added up over every filterd host: per hour or day, with the top
    symbols and the top sender domains of rejected mail over the days shown (docs/stats.md)."""
    if ctx.invoked_subcommand is not None:
        return
    from filterd.redisstate import redis_errors

    client, prefix, services = _redis_of(ctx)
    try:
        buckets = read_buckets(client, prefix, period, last or DEFAULT_LAST[period])
        days = days_of(buckets)
        symbols = read_top(client, prefix, "symbols", days, top) if top else []
        domains = read_top(client, prefix, "rejected_from", days, top) if top else []
    except redis_errors() as exc:
        raise _redis_failure(exc) from exc
    finally:
        services.close()
    if as_json:
        click.echo(json.dumps(stats_document(period, buckets, symbols, domains, days), indent=2))
    else:
        print_tables(period, buckets, symbols, domains, days)


def stats_document(
    period: str,
    buckets: Sequence[Bucket],
    symbols: list[tuple[str, int]],
    domains: list[tuple[str, int]],
    days: Sequence[str],
) -> dict[str, Any]:
    """What ``filterctl stats --json`` prints.  The top lists are kept per day: they cover the
    whole UTC days the buckets fall on (`top_days`)."""
    return {
        "period": period,
        "buckets": [{"start": b.start, "time": _when(b.start, period), **b.counts} for b in buckets],
        "totals": totals(buckets),
        "top_days": [_iso_day(d) for d in days],
        "top_symbols": [{"symbol": name, "count": n} for name, n in symbols],
        "top_rejected_domains": [{"domain": name, "count": n} for name, n in domains],
    }


def _when(start: int, period: str) -> str:
    return time.strftime("%Y-%m-%d %H:00" if period == "hour" else "%Y-%m-%d", time.gmtime(start))


def _iso_day(day: str) -> str:
    return f"{day[:4]}-{day[4:6]}-{day[6:]}"


def print_tables(
    period: str,
    buckets: Sequence[Bucket],
    symbols: list[tuple[str, int]],
    domains: list[tuple[str, int]],
    days: Sequence[str],
) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"verdicts per {period} (UTC)", show_footer=True)
    sums = totals(buckets)
    table.add_column(period, footer="total")
    for name in COUNTERS:
        table.add_column(name, footer=str(sums[name]), justify="right")
    for b in buckets:
        table.add_row(
            _when(b.start, period), *(str(b.counts[name]) if b.counts[name] else "." for name in COUNTERS)
        )
    console.print(table)
    span = _iso_day(days[0]) + (f" to {_iso_day(days[-1])}" if len(days) > 1 else "")
    for title, rows, what in (
        (f"top symbols, {span}", symbols, "symbol"),
        (f"top sender domains of rejected mail, {span}", domains, "domain"),
    ):
        if not rows:
            console.print(f"{title}: none")
            continue
        top = Table(title=title)
        top.add_column(what)
        top.add_column("messages", justify="right")
        for name, n in rows:
            top.add_row(name, str(n))
        console.print(top)


@stats.command()
@click.option(
    "--period",
    type=click.Choice(list(GRAPH_PERIODS)),
    default="day",
    show_default=True,
    help="the time the graph spans",
)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="the PNG file to write")
@click.pass_context
def graph(ctx: click.Context, period: str, output: str) -> None:
    """A mailgraph-style PNG: messages received and accepted, and those rejected, tagged,
    tempfailed, greylisted, quarantined or with a virus, per hour or per day."""
    try:
        import matplotlib  # noqa: F401  (only to say how to get it)
    except ImportError as exc:
        raise click.ClickException(INSTALL_HINT) from exc
    from filterd.redisstate import redis_errors

    client, prefix, services = _redis_of(ctx.parent or ctx)
    bucket_period, count = GRAPH_PERIODS[period]
    try:
        buckets = read_buckets(client, prefix, bucket_period, count)
    except redis_errors() as exc:
        raise _redis_failure(exc) from exc
    finally:
        services.close()
    plot(buckets, bucket_period, Path(output), f"filterd: the last {period}")
    click.echo(f"{output}: {count} {bucket_period}s, {totals(buckets)['received']} messages received")


def plot(buckets: Sequence[Bucket], bucket_period: str, path: Path, title: str) -> dict[str, list[float]]:
    """Draw the two panels into `path` (PNG) and return what was plotted, read back from the
    figure's lines: each series by name, one value per bucket."""
    import datetime

    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed

    times = [datetime.datetime.fromtimestamp(b.start, datetime.UTC) for b in buckets]
    figure = Figure(figsize=(9, 6), dpi=100, layout="constrained")
    traffic, refused = figure.subplots(2, 1, sharex=True)
    for axes, names in ((traffic, TRAFFIC_SERIES), (refused, REFUSED_SERIES)):
        for name in names:
            values = [b.counts[name] for b in buckets]
            axes.step(times, values, where="post", label=name, linewidth=1.2)
            if name == "received":  # mailgraph's filled area: the whole traffic
                axes.fill_between(times, values, step="post", alpha=0.25)
        axes.set_ylabel(f"messages per {bucket_period}")
        axes.set_ylim(bottom=0)
        axes.grid(True, alpha=0.3)
        axes.legend(loc="upper left", fontsize="small", ncols=len(names))
    traffic.set_title(title + " (UTC)")
    figure.autofmt_xdate()
    plotted = {
        str(line.get_label()): [float(y) for y in line.get_ydata()]
        for axes in (traffic, refused)
        for line in axes.get_lines()
    }
    figure.savefig(path, format="png")
    return plotted

"""`filterctl antivirus status`: whether each clamd answers, and the result cache's hits and misses."""

from __future__ import annotations

import json
from typing import Any

import click

from filterd.cli.common import load


@click.group()
def antivirus() -> None:
    """The ClamAV scanner: clamd sockets and the result cache."""


@antivirus.command()
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Ping every configured clamd and show the cache counters (exit 1 if no clamd answers)."""
    from filterd.clamd import ClamdPool
    from filterd.scancache import ScanCache
    from filterd.services import Services

    cfg = load(ctx)
    s = cfg.check_settings("antivirus")
    pool = ClamdPool(s.sockets, s.timeout, s.connect_timeout, s.retry_after)
    report: dict[str, Any] = {"enabled": s.enabled, "clamd": pool.status()}
    if s.cache_ttl:
        services = Services(cfg)
        try:
            counters = ScanCache(
                services.redis, cfg.redis.key_prefix, s.cache_ttl, s.cache_headers
            ).counters()
            total = counters["hits"] + counters["misses"]
            report["cache"] = {
                **counters,
                "hit_ratio": round(counters["hits"] / total, 4) if total else None,
                "ttl": s.cache_ttl,
            }
        except Exception as exc:  # Redis down is a finding here, not a crash
            report["cache"] = {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            services.close()
    else:
        report["cache"] = {"disabled": True}
    ok = any(c["ok"] for c in report["clamd"])
    if as_json:
        click.echo(json.dumps(report))
    else:
        click.echo(f"antivirus check: {'enabled' if s.enabled else 'disabled'}")
        for c in report["clamd"]:
            if c["ok"]:
                click.echo(f"  {c['address']}: OK, {c['version']} ({c['ms']} ms)")
            else:
                click.echo(f"  {c['address']}: NOT ANSWERING: {c.get('error', 'bad reply')}")
        cache = report["cache"]
        if "error" in cache:
            click.echo(f"cache: unavailable: {cache['error']}")
        elif cache.get("disabled"):
            click.echo("cache: off (cache_ttl = 0)")
        else:
            ratio = "-" if cache["hit_ratio"] is None else f"{cache['hit_ratio']:.1%}"
            click.echo(
                f"cache: {cache['hits']} hits, {cache['misses']} misses, hit ratio {ratio}, ttl {cache['ttl']}s"
            )
    if not ok:
        ctx.exit(1)

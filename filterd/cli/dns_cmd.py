"""`filterctl dns check DOMAIN`: are the domain's MX, SPF, DKIM and DMARC records right?"""

from __future__ import annotations

import click

from filterd.cli.common import load

_MARK = {"pass": "PASS", "warn": "WARN", "fail": "FAIL"}


@click.group()
def dns() -> None:
    """Check a mail domain's DNS records."""


@dns.command()
@click.argument("domain")
@click.option(
    "--selector", "-s", "selectors", multiple=True, help="also check this DKIM selector (repeatable)"
)
@click.pass_context
def check(ctx: click.Context, domain: str, selectors: tuple[str, ...]) -> None:
    """Check DOMAIN's MX, SPF, DKIM and DMARC records; exit 1 when any check fails.

    DKIM selectors come from [checks.dkim_sign.keys] (each compared with its local key file) and
    from --selector.  Lookups use the [dns] resolver of the configuration."""
    from filterd.auth.dnscheck import check_domain
    from filterd.auth.keys import SigningKey, load_signing_key
    from filterd.dns import Resolver
    from filterd.settings import ConfigError

    cfg = load(ctx)
    domain = domain.lower().rstrip(".")
    if "." not in domain or any(c.isspace() for c in domain):
        raise click.BadParameter(f"{domain!r} is not a domain name", param_hint="DOMAIN")
    local: dict[str, SigningKey | str] = {}
    for d, table in cfg.check_settings("dkim_sign").keys.items():
        if d.lower().rstrip(".") != domain:
            continue
        for selector, path in table.items():
            try:
                local[selector] = load_signing_key(domain, selector, path, f"keys.{d}.{selector}")
            except ConfigError as exc:
                local[selector] = str(exc)
    items = check_domain(Resolver(cfg.dns), domain, local, selectors)
    width = max(len(i.check) for i in items)
    for item in items:
        line = f"{_MARK[item.status]}  {item.check:<{width}}  {item.detail}"
        color = {"pass": "green", "warn": "yellow", "fail": "red"}[item.status]
        click.echo(click.style(line, fg=color))  # click drops the colour when not on a terminal
    failed = sum(1 for i in items if i.status == "fail")
    warned = sum(1 for i in items if i.status == "warn")
    click.echo(f"{domain}: {failed} failed, {warned} warnings, {len(items) - failed - warned} passed")
    if failed:
        ctx.exit(1)

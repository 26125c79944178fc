"""`filterctl dkim keygen`: make a DKIM key where the configuration expects it, print its record."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import click

from filterd.cli.common import load

# One DNS label (RFC 1035 letters, digits, hyphens; 1..63 characters, no hyphen at either end).
# The domain and the selector become a file name under key_dir: a value that is not DNS labels
# (a "/", "..", a NUL) could otherwise put the key anywhere the admin running keygen may write.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"^{_LABEL}(?:\.{_LABEL})+$")
_SELECTOR_LABELS = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$")


def _check_domain(domain: str) -> str:
    """The domain lower-cased without a trailing dot, or a usage error naming the value."""
    name = domain.lower().removesuffix(".")
    if len(name) > 253 or not _DOMAIN.match(name):
        raise click.BadParameter(
            f"{domain!r} is not a domain name (two or more DNS labels: letters, digits, hyphens)",
            param_hint="--domain",
        )
    return name


def _check_selector(selector: str) -> str:
    if len(selector) > 253 or not _SELECTOR_LABELS.match(selector):
        raise click.BadParameter(
            f"{selector!r} is not a valid selector (DNS labels: letters, digits, hyphens, dots)",
            param_hint="--selector",
        )
    return selector


def _default_key_path(key_dir: str, domain: str, selector: str) -> Path:
    """key_dir/DOMAIN.SELECTOR.key, checked to be inside key_dir once resolved (a second line of
    defence behind the label checks: symlinks inside key_dir are the admin's own)."""
    base = Path(key_dir).resolve()
    path = (base / f"{domain}.{selector}.key").resolve()
    if path.parent != base:
        raise click.ClickException(f"refusing to write {path}: it is not directly in key_dir {base}")
    return path


@click.group()
def dkim() -> None:
    """DKIM signing keys."""


@dkim.command()
@click.option("--domain", "-d", required=True, help="signing domain (d=), e.g. example.com")
@click.option("--selector", "-s", required=True, help="selector (s=), e.g. 2024a")
@click.option(
    "--type",
    "key_type",
    type=click.Choice(["rsa", "ed25519"]),
    default="rsa",
    show_default=True,
    help="key type",
)
@click.option("--bits", type=int, default=None, help="RSA key size (default 2048; 1024..8192)")
@click.option(
    "--output", "-o", type=click.Path(dir_okay=False), help="key file (default: from the key table)"
)
@click.option("--owner", help="chown the key file to USER[:GROUP] (the user filterd runs as)")
@click.option("--force", is_flag=True, help="replace an existing key file")
@click.pass_context
def keygen(
    ctx: click.Context,
    domain: str,
    selector: str,
    key_type: str,
    bits: int | None,
    output: str | None,
    owner: str | None,
    force: bool,
) -> None:
    """Write a new private key (mode 0600) and print the DNS TXT record to publish.

    The file goes where ``[checks.dkim_sign.keys]`` says for DOMAIN and SELECTOR; a pair not in
    the table yet goes to ``key_dir``/DOMAIN.SELECTOR.key, and the line to add is printed."""
    from filterd.auth.keys import generate, write_private_key, zone_record

    cfg = load(ctx)
    settings = cfg.check_settings("dkim_sign")
    domain = _check_domain(domain)
    selector = _check_selector(selector)
    if key_type == "ed25519" and bits is not None:
        raise click.BadParameter("Ed25519 keys have a fixed size; leave out --bits", param_hint="--bits")
    if key_type == "rsa":
        bits = 2048 if bits is None else bits
        if not 1024 <= bits <= 8192:
            raise click.BadParameter(f"{bits} is outside 1024..8192", param_hint="--bits")
    configured = {d.lower().rstrip("."): s for d, s in settings.keys.items()}.get(domain, {}).get(selector)
    if output or configured:
        path = Path(output or configured)  # named by the admin: on the command line or in the key table
    else:
        path = _default_key_path(settings.key_dir, domain, selector)
    if path.exists() and not force:
        raise click.ClickException(f"{path} exists: use --force to replace it (and republish the record)")
    pem, public = generate(key_type, bits or 0)  # type: ignore[arg-type]
    try:
        write_private_key(path, pem, overwrite=force)
        if owner:
            user, _, group = owner.partition(":")
            if user and group:
                shutil.chown(path, user, group)
            elif user:
                shutil.chown(path, user=user)
            else:
                shutil.chown(path, group=group)
    except (OSError, LookupError) as exc:
        raise click.ClickException(f"cannot write {path}: {exc}") from exc
    size = f"{bits}-bit RSA" if key_type == "rsa" else "Ed25519"
    click.echo(f"; wrote {size} private key to {path} (mode 0600)", err=True)
    if bits == 1024:
        click.echo("; note: 1024-bit RSA is the minimum receivers accept; 2048 is recommended", err=True)
    click.echo("; publish this record in the zone of " + domain + ":", err=True)
    click.echo(zone_record(selector, domain, key_type, public))  # type: ignore[arg-type]
    if output is None and configured is None:
        click.echo("; and add the key to the configuration:", err=True)
        click.echo(f'; [checks.dkim_sign.keys."{domain}"]', err=True)
        click.echo(f'; {selector} = "{path}"', err=True)

"""`filterctl web`: serve the web console; `filterctl web passwd USER`: who may log in."""

from __future__ import annotations

import ipaddress
import os
import secrets
import stat
import sys
from pathlib import Path

import click

from filterd.cli.common import load
from filterd.config import check_listen

SECRET_BYTES = 32


def load_or_create_secret(path: Path) -> bytes:
    """The key that signs session cookies; a new random one, mode 0600, when the file is missing."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        pass
    except OSError as exc:
        raise click.ClickException(f"cannot create the session key {path}: {exc.strerror}") from exc
    else:
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_hex(SECRET_BYTES).encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())
    try:
        st = os.stat(path, follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode):
            raise click.ClickException(f"the session key {path} is not a regular file")
        if st.st_mode & 0o077:
            raise click.ClickException(
                f"the session key {path} is readable or writable by others (mode {st.st_mode & 0o777:04o}): "
                f"whoever reads it can forge a login; chmod 600 it"
            )
        key = path.read_bytes().strip()
    except OSError as exc:
        raise click.ClickException(f"cannot read the session key {path}: {exc.strerror}") from exc
    if len(key) < 32:
        raise click.ClickException(f"the session key {path} is too short: remove it and a new one is made")
    return key


@click.group(invoke_without_command=True)
@click.option("--listen", metavar="IP:PORT", help="where to serve (default: [web] listen, 127.0.0.1:8143)")
@click.option("--threads", default=4, show_default=True, help="requests served at once")
@click.pass_context
def web(ctx: click.Context, listen: str | None, threads: int) -> None:
    """Serve the web console: quarantine review, history, scan (docs/web.md)."""
    if ctx.invoked_subcommand is not None:
        return
    cfg = load(ctx)
    address = listen or cfg.web.listen
    problem = check_listen(address)
    if problem:
        raise click.BadParameter(problem, param_hint="--listen")
    host = address.rpartition(":")[0].strip("[]")
    if not ipaddress.ip_address(host).is_loopback and not cfg.web.secure_cookies:
        click.echo(
            f"warning: serving on {address}, not loopback, over plain HTTP: passwords and session "
            "cookies cross the network in clear; put a TLS reverse proxy in front (docs/web.md)",
            err=True,
        )
    secret = load_or_create_secret(Path(cfg.web.session_secret_file))
    from waitress import serve

    from filterd.web.app import create_app

    app = create_app(cfg, secret)
    click.echo(f"filterd web console on http://{address}/ (users: {cfg.web.password_file})", err=True)
    # Behind a proxy, its X-Forwarded-* headers are read by the application (werkzeug's ProxyFix,
    # one hop) and waitress must pass them on; otherwise waitress drops any a client sent.
    serve(
        app,
        listen=address,
        threads=threads,
        ident="filterd",
        clear_untrusted_proxy_headers=not cfg.web.behind_proxy,
    )


@web.command()
@click.argument("user")
@click.option(
    "--domain",
    "domains",
    multiple=True,
    metavar="DOMAIN",
    help="limit the user to mail for recipients in DOMAIN (repeatable); none: every domain",
)
@click.option("--delete", is_flag=True, help="remove the user instead")
@click.option("--password-stdin", is_flag=True, help="read the password from the first line of stdin")
@click.pass_context
def passwd(
    ctx: click.Context, user: str, domains: tuple[str, ...], delete: bool, password_stdin: bool
) -> None:
    """Add USER to the console's password file, or change its password or domains."""
    from filterd.web.passwords import (
        USER_NAME,
        PasswordFileError,
        User,
        hash_password,
        parse_domains,
        write_user,
    )

    cfg = load(ctx)
    path = Path(cfg.web.password_file)
    if not USER_NAME.fullmatch(user):
        raise click.BadParameter("letters, digits and . _ @ + - only, at most 64", param_hint="USER")
    try:
        if delete:
            write_user(path, None, remove=user)
            click.echo(f"{user}: removed from {path}")
            return
        try:
            limited = parse_domains(",".join(domains))
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--domain") from None
        if password_stdin:
            password = sys.stdin.readline().rstrip("\r\n")
        else:
            password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
        if len(password) < 8:
            raise click.BadParameter("at least 8 characters", param_hint="password")
        write_user(path, User(user, hash_password(password), limited))
    except (PasswordFileError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    scope = f"domains {', '.join(limited)}" if limited else "every domain"
    click.echo(f"{user}: written to {path} ({scope})")

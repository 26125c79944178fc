"""filterctl: the admin CLI.  Each command group lives in its own module and is registered here."""

from __future__ import annotations

import os

import click

from filterd.cli import (
    antivirus_cmd,
    bayes_cmd,
    config_cmd,
    dkim_cmd,
    dns_cmd,
    learn_cmd,
    quarantine_cmd,
    reputation_cmd,
    rules_cmd,
    scan_cmd,
    stats_cmd,
    web_cmd,
)
from filterd.cli.common import config_path_default


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="filterd", prog_name="filterctl", message="%(prog)s %(version)s")
@click.option(
    "--config",
    "config_path",
    default=None,
    metavar="PATH",
    help="configuration file (default: $FILTERD_CONFIG or /etc/filterd/filterd.toml)",
)
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """Administer filterd: check the configuration, scan stored messages."""
    ctx.obj = {
        "config_path": config_path or config_path_default(),
        # A file named by --config or $FILTERD_CONFIG must exist (filterd refuses to start without
        # it too); only the default path, absent, means the built-in defaults.
        "config_explicit": config_path is not None or bool(os.environ.get("FILTERD_CONFIG")),
    }


cli.add_command(config_cmd.config)
cli.add_command(config_cmd.symbols)
cli.add_command(scan_cmd.scan)
cli.add_command(dkim_cmd.dkim)
cli.add_command(dns_cmd.dns)
cli.add_command(reputation_cmd.reputation)
cli.add_command(quarantine_cmd.quarantine)
cli.add_command(antivirus_cmd.antivirus)
cli.add_command(rules_cmd.rules)
cli.add_command(bayes_cmd.train)
cli.add_command(bayes_cmd.eval_)
cli.add_command(learn_cmd.learn_worker)
cli.add_command(stats_cmd.stats)
cli.add_command(web_cmd.web)


def main() -> None:
    cli(prog_name="filterctl")


if __name__ == "__main__":  # `python -m filterd.cli.filterctl ...`, as without the console script
    main()

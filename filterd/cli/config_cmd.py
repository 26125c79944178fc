"""`filterctl config check|show|defaults` and `filterctl symbols`."""

from __future__ import annotations

import json
import re
from typing import Any

import click

from filterd.check import PIPELINE_SYMBOLS
from filterd.cli.common import load, load_or_raise
from filterd.config import (
    Config,
    config_table,
    known_symbols,
    load_config,
    registered_checks,
    render_config,
    render_defaults,
)
from filterd.settings import ConfigError, Problem, changed, json_ready


@click.group()
def config() -> None:
    """Validate the configuration, print it, or print the reference one."""


@config.command()
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
@click.pass_context
def check(ctx: click.Context, as_json: bool) -> None:
    """Validate the configuration exactly as filterd does at start, naming every error at once
    (exit 1 on an error; warnings do not fail the check)."""
    from filterd.pipeline import Pipeline  # builds every check: not for the other commands

    cfg: Config | None = None
    errors: tuple[Problem, ...] = ()
    warnings: list[Problem] = []
    try:
        cfg = load_or_raise(ctx)
        # Building the pipeline reads what the checks read at start (key and list files, rules,
        # models), so an error there is found here and not at filterd's next restart.
        pipeline = Pipeline.from_config(cfg)
    except ConfigError as exc:
        errors = exc.problems
    else:
        warnings = [*cfg.warnings, *check_warnings(pipeline)]
        pipeline.close()
    source = (cfg.path if cfg else ctx.obj["config_path"]) or "built-in defaults"
    if as_json:
        entries = {"errors": errors, "warnings": warnings}
        result = {k: [{"key": p.key, "message": p.message} for p in v] for k, v in entries.items()}
        click.echo(json.dumps({"config": source, "ok": not errors, **result}, indent=2))
    else:
        for problem in errors:
            click.echo(f"error: {problem}", err=True)
        for problem in warnings:
            click.echo(f"warning: {problem}", err=True)
        counts = [f"{len(errors)} error(s)"] if errors else []
        counts += [f"{len(warnings)} warning(s)"] if warnings else []
        click.echo(
            f"{source}: {'FAILED' if errors else 'OK'}" + (f" ({', '.join(counts)})" if counts else "")
        )
    if errors:
        ctx.exit(1)


def check_warnings(pipeline: Any) -> list[Problem]:
    """What the built checks say about their setup (`config_warnings()`, e.g. no Bayes model yet)."""
    found = []
    for c in pipeline.checks:
        for text in getattr(c, "config_warnings", list)():
            m = re.match(r"([\w.]+): (.*)", text, re.DOTALL)
            found.append(Problem(m.group(1), m.group(2)) if m else Problem(f"checks.{c.name}", text))
    return found


@config.command()
@click.option("-n", "non_default", is_flag=True, help="only the settings that differ from the defaults")
@click.option("-d", "defaults_only", is_flag=True, help="the built-in defaults, ignoring the file")
@click.option("--json", "as_json", is_flag=True, help='print JSON (infinite thresholds as "inf")')
@click.pass_context
def show(ctx: click.Context, non_default: bool, defaults_only: bool, as_json: bool) -> None:
    """Print the effective configuration as TOML, shaped like the file (like postconf)."""
    if non_default and defaults_only:
        raise click.UsageError("-n and -d exclude each other")
    default = config_table(load_config(None))
    table = default if defaults_only else config_table(load(ctx))
    if non_default:
        table = changed(table, default)
    if as_json:
        click.echo(json.dumps(json_ready(table), indent=2))
    else:
        click.echo(render_config(table), nl=False)


@config.command()
def defaults() -> None:
    """Print every setting with its default and a comment (the contrib/filterd.toml file)."""
    click.echo(render_defaults(), nl=False)


# The pipeline's own symbols (filterd.check.PIPELINE_SYMBOLS), described for `filterctl symbols`.
_PIPELINE_DESCRIPTIONS = {
    "CHECK_ERROR": "a check failed and was skipped (fail-open)",
    "TIME_BUDGET": "the message's CPU budget ([milter] cpu_budget) was spent",
    "TIME_BUDGET_SKIPPED": "an optional content check was not run: the CPU budget was spent",
    "INTERNAL_ERROR": "filterd's own milter path failed; the message was delivered anyway",
    "TOO_MANY_HEADERS": "more header fields than [milter] max_headers",
}


def symbol_rows(cfg: Config) -> list[dict[str, Any]]:
    """Every symbol a message can get with this configuration: the checks', the pipeline's and
    each rule's, with its score here, where it comes from and what it means."""
    rows = []
    for c in registered_checks():
        for name in c.symbols:
            rows.append(
                {
                    "symbol": name,
                    "score": cfg.score_of(name),
                    "source": c.name,
                    "stage": c.stage.label,
                    "description": c.description,
                }
            )
    for name in PIPELINE_SYMBOLS:
        rows.append(
            {
                "symbol": name,
                "score": cfg.score_of(name),
                "source": "pipeline",
                "stage": "",
                "description": _PIPELINE_DESCRIPTIONS.get(name, ""),
            }
        )
    rows.extend(rule_rows(cfg))
    return rows


def rule_rows(cfg: Config) -> list[dict[str, Any]]:
    from filterd.rules import load_rule_set  # compiles the rules: only for this command

    settings = cfg.check_settings("rules")
    stage = next(c.stage.label for c in registered_checks() if c.name == "rules")
    try:
        rules = load_rule_set(settings.default_dir, settings.local_dir, reserved=known_symbols())
    except ConfigError as exc:
        raise click.ClickException(f"the rule files: {exc}") from exc
    return [
        {
            "symbol": rule.name,
            "score": cfg.scores.get(rule.name, rule.score),
            "source": "rules",
            "stage": stage,
            "description": rule.description,
        }
        for rule in rules.all
        if not rule.hidden and rule.enabled
    ]


@click.command()
@click.option("--json", "as_json", is_flag=True, help="print a JSON list")
@click.pass_context
def symbols(ctx: click.Context, as_json: bool) -> None:
    """List every symbol: its score in this configuration, the check (or rule) that gives it,
    and what it means.  Each can be scored in [scores]."""
    rows = symbol_rows(load(ctx))
    if as_json:
        click.echo(json.dumps(json_ready(rows), indent=2))
        return
    for row in rows:
        source = f"{row['source']} ({row['stage']})" if row["stage"] else row["source"]
        click.echo(f"{row['symbol']:<28} {row['score']:7.2f}  {source}: {row['description']}")

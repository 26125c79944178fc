"""`filterctl rules check|test|stats`: validate rule files, see what hits, measure a rule set."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import click

from filterd.cli.common import load, read_messages
from filterd.config import Config, known_symbols
from filterd.message import Message
from filterd.rules import RuleError, RuleSet, load_rule_set, shipped_dir

_LOCAL_DIR = click.option(
    "--local-dir",
    metavar="DIR",
    help="use this directory as the admin's rules instead of [checks.rules] local_dir (try before a reload)",
)
_DEFAULT_DIR = click.option(
    "--default-dir", metavar="DIR", help="use this directory instead of [checks.rules] default_dir"
)


def _rule_set(cfg: Config, default_dir: str | None, local_dir: str | None) -> RuleSet:
    settings = cfg.check_settings("rules")
    try:
        return load_rule_set(
            default_dir if default_dir is not None else settings.default_dir,
            local_dir if local_dir is not None else settings.local_dir,
            reserved=known_symbols(),
        )
    except RuleError as exc:
        raise click.ClickException(str(exc)) from exc


@click.group()
def rules() -> None:
    """Content rules: validate the rule files, test messages against them, measure them."""


@rules.command()
@_DEFAULT_DIR
@_LOCAL_DIR
@click.pass_context
def check(ctx: click.Context, default_dir: str | None, local_dir: str | None) -> None:
    """Validate the rule files as filterd loads them (exit 1 naming the file and rule on error)."""
    cfg = load(ctx)
    rule_set = _rule_set(cfg, default_dir, local_dir)
    settings = cfg.check_settings("rules")
    base = default_dir or settings.default_dir or str(shipped_dir())
    local = local_dir if local_dir is not None else settings.local_dir
    enabled = [r for r in rule_set.all if r.enabled]
    kinds: dict[str, int] = {}
    for r in enabled:
        kinds[r.kind] = kinds.get(r.kind, 0) + 1
    overridden = sum(1 for r in rule_set.all if ", " in r.source)
    click.echo(f"{base}" + (f" + {local}" if local else "") + ": OK")
    click.echo(
        f"{len(rule_set)} rules, {len(enabled)} enabled, {overridden} overridden locally; "
        + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))
    )


@rules.command()
@click.argument("sources", nargs=-1, required=True, metavar="FILE|DIR|-...")
@_DEFAULT_DIR
@_LOCAL_DIR
@click.option("--all", "show_all", is_flag=True, help="also show __ rules (those that only feed metas)")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per message")
@click.pass_context
def test(
    ctx: click.Context,
    sources: tuple[str, ...],
    default_dir: str | None,
    local_dir: str | None,
    show_all: bool,
    as_json: bool,
) -> None:
    """Show which rules hit each message, with their scores and the text that matched."""
    rule_set = _rule_set(load(ctx), default_dir, local_dir)
    for name, raw in read_messages(sources):
        hits = [h for h in rule_set.explain(Message(raw)) if show_all or not h.rule.hidden]
        total = round(sum(h.rule.score for h in hits), 3)
        if as_json:
            rows = [
                {
                    "rule": h.rule.name,
                    "score": h.rule.score,
                    "description": h.rule.description,
                    "matched": h.detail,
                }
                for h in hits
            ]
            click.echo(json.dumps({"file": name, "score": total, "hits": rows}, ensure_ascii=False))
            continue
        click.echo(f"{name}\tscore {total:g}\t{len(hits)} rule(s)")
        for h in hits:
            detail = " ".join(h.detail.split())[:100]
            click.echo(f"  {h.rule.score:7.2f} {h.rule.name:<30} {h.rule.description}")
            if detail:
                click.echo(f"          {'':<30} matched: {detail!r}")


@dataclass
class _Counts:
    spam: int = 0
    ham: int = 0


@dataclass
class _Tally:
    """Confusion counts at the spam threshold."""

    caught: int = 0  # spam at or above it
    false_pos: int = 0  # ham at or above it

    def line(self, label: str, spam: int, ham: int) -> str:
        accuracy = (self.caught + ham - self.false_pos) / max(1, spam + ham)
        return (
            f"{label:<26} spam caught {self.caught:5d}/{spam} ({_pct(self.caught, spam)})  "
            f"ham flagged {self.false_pos:4d}/{ham} ({_pct(self.false_pos, ham)})  accuracy {accuracy:.2%}"
        )


@dataclass
class _Stats:
    spam: int = 0
    ham: int = 0
    per_rule: dict[str, _Counts] = field(default_factory=dict)
    base: _Tally = field(default_factory=_Tally)
    with_rules: _Tally = field(default_factory=_Tally)
    rules_only: _Tally = field(default_factory=_Tally)


def _pct(n: int, d: int) -> str:
    return f"{100 * n / d:.1f}%" if d else "-"


@rules.command()
@click.option(
    "--corpus",
    "corpus",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="a directory with spam/ and ham/ subdirectories of messages, one per file",
)
@click.option(
    "--fold", default="0/1", metavar="K/N", help="use only every Nth file, from the Kth (0/2, 1/2 ...)"
)
@_DEFAULT_DIR
@_LOCAL_DIR
@click.option(
    "--rules-only", is_flag=True, help="do not run the other checks (no comparison, no DNS lookups)"
)
@click.option(
    "--sort",
    type=click.Choice(["name", "spam", "ham", "ratio"]),
    default="name",
    help="order of the rule table",
)
@click.pass_context
def stats(
    ctx: click.Context,
    corpus: Path,
    fold: str,
    default_dir: str | None,
    local_dir: str | None,
    rules_only: bool,
    sort: str,
) -> None:
    """Per rule, hits on spam and on ham and S/O (SpamAssassin's mass-check), then how much the
    rule set adds to the accuracy of the total score at the spam threshold."""
    from filterd.driver import scan  # the pipeline is heavy: only this command needs it
    from filterd.pipeline import Pipeline

    try:
        k, n = (int(x) for x in fold.split("/"))
        if not 0 <= k < n:
            raise ValueError
    except ValueError:
        raise click.BadParameter("expected K/N with 0 <= K < N, e.g. 0/2", param_hint="--fold") from None
    for label in ("spam", "ham"):
        if not (corpus / label).is_dir():
            raise click.BadParameter(f"{corpus} has no {label}/ subdirectory", param_hint="--corpus")
    cfg = load(ctx)
    rule_set = _rule_set(cfg, default_dir, local_dir)
    pipeline = None if rules_only else Pipeline.from_config(cfg)
    others = None
    if pipeline is not None:  # the same pipeline without the rules: what the rules add on top
        others = Pipeline(cfg, [c for c in pipeline.checks if c.name != "rules"], pipeline.services)
    required = cfg.actions.required
    st = _Stats(per_rule={r.name: _Counts() for r in rule_set.all if r.enabled})
    for label in ("spam", "ham"):
        files = sorted(p for p in (corpus / label).iterdir() if p.is_file() and not p.name.startswith("."))
        for path in files[k::n]:
            raw = path.read_bytes()
            is_spam = label == "spam"
            if is_spam:
                st.spam += 1
            else:
                st.ham += 1
            hits = rule_set.match(Message(raw))
            for r in hits:
                counts = st.per_rule[r.name]
                if is_spam:
                    counts.spam += 1
                else:
                    counts.ham += 1
            rules_score = sum(r.score for r in hits)
            other_score = scan(others, raw)[1].score if others is not None else 0.0
            for tally, score in (
                (st.base, other_score),
                (st.with_rules, other_score + rules_score),
                (st.rules_only, rules_score),
            ):
                if score >= required:
                    if is_spam:
                        tally.caught += 1
                    else:
                        tally.false_pos += 1
    if pipeline is not None:
        pipeline.close()
    _print_stats(st, rule_set, sort, required, compared=pipeline is not None)


def _print_stats(st: _Stats, rule_set: RuleSet, sort: str, required: float, compared: bool) -> None:
    def so(c: _Counts) -> float:
        s, h = c.spam / max(1, st.spam), c.ham / max(1, st.ham)
        return s / (s + h) if s + h else math.nan

    keys = {
        "name": lambda name: name,
        "spam": lambda name: -st.per_rule[name].spam,
        "ham": lambda name: -st.per_rule[name].ham,
        "ratio": lambda name: (
            -(so(st.per_rule[name]) if st.per_rule[name].spam + st.per_rule[name].ham else -1)
        ),
    }
    click.echo(f"{'RULE':<32} {'SCORE':>7} {'SPAM':>6} {'SPAM%':>6} {'HAM':>5} {'HAM%':>6} {'S/O':>5}")
    for name in sorted(st.per_rule, key=keys[sort]):
        c = st.per_rule[name]
        ratio = so(c)
        click.echo(
            f"{name:<32} {rule_set.by_name[name].score:7.2f} {c.spam:6d} {_pct(c.spam, st.spam):>6} "
            f"{c.ham:5d} {_pct(c.ham, st.ham):>6} {'-' if math.isnan(ratio) else f'{ratio:.3f}':>5}"
        )
    click.echo("")
    click.echo(f"{st.spam} spam, {st.ham} ham; a message is spam at score >= {required:g}")
    if compared:
        click.echo(st.base.line("other checks alone", st.spam, st.ham))
    click.echo(st.rules_only.line("rules alone", st.spam, st.ham))
    if compared:
        click.echo(st.with_rules.line("other checks + rules", st.spam, st.ham))

"""`filterctl rules check|test|stats|fit|eval`: validate rule files, see what hits, measure the
symbols on labelled mail, fit the learned combination and compare it with the score table."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from filterd.cli.common import load, read_messages
from filterd.config import Config, known_symbols
from filterd.message import Message
from filterd.rules import RuleError, RuleSet, load_rule_set, shipped_dir

if TYPE_CHECKING:
    from filterd.symbolvectors import LabelledFile, Vector

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


# -- measuring on labelled mail ----------------------------------------------------------------

# A rule "flags more than a small share of ham" when, on some corpus, it hits at least 0.1% of
# the ham, and at least 3 ham messages (fewer is one sender's habit, not a pattern), and more
# than one ham for every nine spam (as shares: S/O below 0.9).
FLAG_HAM_RATE = 0.001
FLAG_HAM_HITS = 3
FLAG_SO = 0.9
CRITERION = (
    f"a scoring symbol that hits >= {100 * FLAG_HAM_RATE:g}% and >= {FLAG_HAM_HITS} of the ham "
    f"with S/O < {FLAG_SO:g} (more than 1 ham per 9 spam, as shares) on some corpus"
)
_DEFAULT_CORPORA = ("spamassassin-public", "csdmc2010")
_WHERE_TO_GET = (
    "labelled corpora are folders with manifest.csv (path,label) or spam/ and ham/; by default "
    "$FILTERD_CORPUS/spamassassin-public (the SpamAssassin public corpus, "
    "https://spamassassin.apache.org/old/publiccorpus/) and $FILTERD_CORPUS/csdmc2010 (CSDMC2010, "
    "ICONIP 2010; docs/scoring.md says how they were prepared)"
)
_CORPUS = click.option(
    "--corpus",
    "corpora",
    multiple=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="a labelled folder (manifest.csv, or spam/ and ham/); repeatable; default: the two shared corpora",
)
_CACHE = click.option(
    "--cache",
    type=click.Path(file_okay=False, path_type=Path),
    help="keep the symbol vectors in this directory (e.g. /tmp/filterd-vectors) and reuse them",
)


def _corpora(corpora: tuple[Path, ...]) -> list[Path]:
    if corpora:
        return list(corpora)
    from filterd.symbolvectors import default_corpus_root

    root = default_corpus_root()
    found = [root / n for n in _DEFAULT_CORPORA if (root / n).is_dir()]
    if not found:
        raise click.ClickException(f"no corpus found under {root}: {_WHERE_TO_GET}")
    return found


def _offline_config(cfg: Config, default_dir: str | None, local_dir: str | None) -> Config:
    rules = cfg.check_settings("rules")
    changed = dataclasses.replace(
        rules,
        default_dir=default_dir if default_dir is not None else rules.default_dir,
        local_dir=local_dir if local_dir is not None else rules.local_dir,
    )
    return dataclasses.replace(cfg, checks=dataclasses.replace(cfg.checks, rules=changed))


def _vectors(files: Sequence[LabelledFile], cfg: Config, cache: Path | None, label: str) -> list[Vector]:
    from filterd.symbolvectors import cached_vectors

    def progress(n: int) -> None:
        click.echo(f"{label}: {n}/{len(files)} scanned", err=True)

    try:
        return cached_vectors(files, cfg, cache, progress)
    except RuleError as exc:
        raise click.ClickException(str(exc)) from exc


def _labelled(folder: Path) -> list[LabelledFile]:
    from filterd.symbolvectors import labelled_files

    try:
        files = labelled_files(folder)
    except ValueError as exc:
        raise click.BadParameter(f"{exc} ({_WHERE_TO_GET})", param_hint="--corpus") from exc
    if not files:
        raise click.BadParameter(f"{folder}: no messages", param_hint="--corpus")
    return files


def symbol_stats(
    by_corpus: Mapping[str, Sequence[Vector]], rule_scores: dict[str, float], table: dict[str, float]
) -> list[dict[str, Any]]:
    """Per symbol and corpus: hits and hit rates on spam and ham, S/O, and the flag."""
    names = set(rule_scores) | {s for vs in by_corpus.values() for v in vs for s in v.symbols}
    rows = []
    for name in sorted(names):
        per: dict[str, dict[str, float]] = {}
        flagged = False
        for corpus, vs in by_corpus.items():
            nspam = sum(1 for v in vs if v.spam)
            nham = len(vs) - nspam
            spam_hits = sum(1 for v in vs if v.spam and name in v.symbols)
            ham_hits = sum(1 for v in vs if not v.spam and name in v.symbols)
            s, h = spam_hits / max(1, nspam), ham_hits / max(1, nham)
            so = s / (s + h) if s + h else math.nan
            per[corpus] = {
                "spam_hits": spam_hits,
                "ham_hits": ham_hits,
                "spam_rate": s,
                "ham_rate": h,
                "so": so,
            }
            flagged |= h >= FLAG_HAM_RATE and ham_hits >= FLAG_HAM_HITS and so < FLAG_SO
        kind = "rule" if name in rule_scores else "check"
        score = rule_scores.get(name, table.get(name, 0.0))
        rows.append(
            {"symbol": name, "kind": kind, "score": score, "corpora": per, "flagged": flagged and score > 0}
        )
    return rows


@rules.command()
@_CORPUS
@_DEFAULT_DIR
@_LOCAL_DIR
@_CACHE
@click.option("--all", "show_all", is_flag=True, help="also list rules that hit nothing")
@click.option("--json", "as_json", is_flag=True, help="the table as one JSON document")
@click.pass_context
def stats(
    ctx: click.Context,
    corpora: tuple[Path, ...],
    default_dir: str | None,
    local_dir: str | None,
    cache: Path | None,
    show_all: bool,
    as_json: bool,
) -> None:
    """Per symbol (every rule and every check's symbol), its hit rates on spam and on ham of each
    corpus and S/O, from the offline pipeline with the message's age neutralised (docs/scoring.md).
    A "!" marks a scoring symbol that flags more than a small share of ham."""
    from filterd.config import known_symbols

    cfg = _offline_config(load(ctx), default_dir, local_dir)
    rule_set = _rule_set(cfg, None, None)
    by_corpus = {
        folder.name: _vectors(_labelled(folder), cfg, cache, folder.name) for folder in _corpora(corpora)
    }
    rule_scores = {r.name: r.score for r in rule_set.all if r.enabled and not r.hidden}
    rows = symbol_stats(by_corpus, rule_scores, {s: cfg.score_of(s) for s in known_symbols()})
    if not show_all:
        rows = [r for r in rows if any(c["spam_hits"] + c["ham_hits"] for c in r["corpora"].values())]
    if as_json:
        sizes = {
            name: {"spam": sum(v.spam for v in vs), "ham": sum(not v.spam for v in vs)}
            for name, vs in by_corpus.items()
        }
        click.echo(json.dumps({"corpora": sizes, "criterion": CRITERION, "symbols": rows}, indent=1))
        return
    head = f"{'SYMBOL':<30} {'KIND':<5} {'SCORE':>6}"
    for name in by_corpus:
        head += f" | {name[:20]:>20} {'':>6}"
    click.echo(head)
    sub = f"{'':<30} {'':<5} {'':>6}" + "".join(
        f" | {'SPAM%':>7} {'HAM%':>6} {'S/O':>5}  " for _ in by_corpus
    )
    click.echo(sub)
    for r in rows:
        line = f"{r['symbol']:<30} {r['kind']:<5} {r['score']:6.2f}"
        for c in r["corpora"].values():
            so = "-" if math.isnan(c["so"]) else f"{c['so']:.2f}"
            line += f" | {100 * c['spam_rate']:7.2f} {100 * c['ham_rate']:6.2f} {so:>5}  "
        click.echo(line + (" !" if r["flagged"] else ""))
    click.echo("")
    for name, vs in by_corpus.items():
        click.echo(f"{name}: {sum(v.spam for v in vs)} spam, {sum(not v.spam for v in vs)} ham")
    click.echo(f"!: {CRITERION}")


@rules.command()
@click.option(
    "--ham", type=click.Path(exists=True, file_okay=False, path_type=Path), help="a directory of ham"
)
@click.option(
    "--spam", type=click.Path(exists=True, file_okay=False, path_type=Path), help="a directory of spam"
)
@_CORPUS
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="the model file to write",
)
@_DEFAULT_DIR
@_LOCAL_DIR
@_CACHE
@click.pass_context
def fit(
    ctx: click.Context,
    ham: Path | None,
    spam: Path | None,
    corpora: tuple[Path, ...],
    output: Path,
    default_dir: str | None,
    local_dir: str | None,
    cache: Path | None,
) -> None:
    """Fit the learned combination ([scoring] mode = "learned") on your own labelled mail:
    --ham DIR --spam DIR, or labelled --corpus folders.  Writes the model file (JSON)."""
    from filterd.combination_fit import fit as fit_combination
    from filterd.symbolvectors import from_dirs

    if (ham is None) != (spam is None):
        raise click.UsageError("give both --ham and --spam")
    if ham is None and not corpora:
        raise click.UsageError("give --ham DIR --spam DIR, or --corpus DIR")
    cfg = _offline_config(load(ctx), default_dir, local_dir)
    vectors: list[Vector] = []
    sources = []
    if ham is not None and spam is not None:
        vectors += _vectors(from_dirs(ham, spam), cfg, cache, "mail")
        sources.append(f"ham {ham}, spam {spam}")
    for folder in corpora:
        vectors += _vectors(_labelled(folder), cfg, cache, folder.name)
        sources.append(folder.name)
    try:
        data = fit_combination(vectors, cfg.check_settings("bayes").bands, "; ".join(sources))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    output.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    meta = data["meta"]
    click.echo(
        f"{output}: fitted on {meta['spam']} spam and {meta['ham']} ham; "
        f"{len(data['with_bayes']['symbols'])} symbols; L2 C = {meta['l2_C']['with_bayes']:g}"
    )
    top = sorted(data["with_bayes"]["symbols"].items(), key=lambda kv: -abs(kv[1]))[:10]
    click.echo("strongest: " + ", ".join(f"{k} {data['scale'] * v:+.2f}" for k, v in top))


@rules.command(name="eval")
@_CORPUS
@_DEFAULT_DIR
@_LOCAL_DIR
@_CACHE
@click.option("--json", "as_json", is_flag=True, help="the figures as one JSON document")
@click.pass_context
def eval_(
    ctx: click.Context,
    corpora: tuple[Path, ...],
    default_dir: str | None,
    local_dir: str | None,
    cache: Path | None,
    as_json: bool,
) -> None:
    """Rank unseen mail by the table total, the learned total and the Bayes spamicity alone:
    fit on A / test on B, both directions, and each corpus's hash halves (docs/scoring.md)."""
    from filterd.combination_fit import run_scenario
    from filterd.symbolvectors import in_second_half

    cfg = _offline_config(load(ctx), default_dir, local_dir)
    folders = _corpora(corpora)
    by_corpus = {f.name: _vectors(_labelled(f), cfg, cache, f.name) for f in folders}
    bands = cfg.check_settings("bayes").bands
    runs: list[tuple[str, Sequence[Vector], Sequence[Vector]]] = []
    names = list(by_corpus)
    for a in names:
        for b in names:
            if a != b:
                runs.append((f"{a} -> {b}", by_corpus[a], by_corpus[b]))
    for a in names:
        vs = by_corpus[a]
        first = [v for v in vs if not in_second_half(Path(v.file))]
        second = [v for v in vs if in_second_half(Path(v.file))]
        runs.append((f"{a} hash halves", first, second))
    results = []
    for name, fit_on, test in runs:
        click.echo(f"{name}: fitting on {len(fit_on)}, testing on {len(test)}", err=True)
        scenario, _ = run_scenario(name, fit_on, test, bands)
        results.append(scenario)
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(r) for r in results], indent=1))
        return
    click.echo("(1-ROCA)% / spam missed at <= 0.1% ham flagged (lower is better)")
    click.echo("")
    scorers = list(results[0].figures)
    click.echo(f"{'fit -> test':<44}" + "".join(f" | {s[:26]:>26}" for s in scorers[:3]))
    for r in results:
        line = f"{r.name:<44}"
        for s in scorers[:3]:
            f = r.figures[s]
            line += f" | {f['roca']:>14.3f} / {f['fn_at_fp']:5.1f}%"
        click.echo(line)
    click.echo("")
    click.echo("At the default thresholds (add_header 5, reject 15), fitted on the first corpus:")
    head = results[0]
    for s, f in head.flags.items():
        click.echo(
            f"  {head.name}, {s:<42} ham flagged {f['ham_flagged']:5.2f}%  spam flagged "
            f"{f['spam_flagged']:5.1f}%  rejected {f['spam_rejected']:5.1f}%  (ham rejected {f['ham_rejected']:.2f}%)"
        )
    click.echo("")
    click.echo(
        "Learned total, were add_header set at another P(spam) (threshold = offset + scale x logit(P)):"
    )
    for r in results:
        click.echo(
            f"  {r.name:<42}" + "  ".join(f"P {q:g}: ham {h:.2f}% spam {s:.1f}%" for q, h, s in r.tradeoff)
        )

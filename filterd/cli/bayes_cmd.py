"""`filterctl train` and `filterctl eval`: train the naive-Bayes classifier, and measure it.

numpy and scikit-learn are imported inside the commands, so other filterctl commands start fast.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from filterd.cli.common import load, read_messages


@contextlib.contextmanager
def _file_lock(model: Path) -> Iterator[None]:
    """One `filterctl train` at a time per model folder: two would each save and one would be lost.

    The lock is on the folder (flock works on a directory's descriptor), so no lock file is left
    beside the model."""
    model.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(model.parent, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise click.ClickException(
                f"{model} is being trained by another filterctl; try again later"
            ) from None
        yield
    finally:
        os.close(fd)


@click.command()
@click.argument("label", type=click.Choice(["spam", "ham"]))
@click.argument("sources", nargs=-1, metavar="[FILE|DIR|-]...")
@click.option("--mbox", "mboxes", multiple=True, metavar="FILE", help="an mbox file (repeatable)")
@click.option("--maildir", "maildirs", multiple=True, metavar="DIR", help="a Maildir folder (repeatable)")
@click.option(
    "--signature",
    "signatures",
    multiple=True,
    metavar="ID",
    help="retrain the message filterd classified with this X-Filterd-Signature (repeatable)",
)
@click.option(
    "--quarantine",
    "quarantined",
    multiple=True,
    metavar="ID",
    help="a message in filterd's quarantine, as it was received (repeatable)",
)
@click.option("--unlearn", is_flag=True, help="remove messages trained as LABEL instead of training them")
@click.option(
    "--mode",
    type=click.Choice(["toe", "teft", "tum"]),
    help="training mode (default: [checks.bayes] train_mode)",
)
@click.option("--model", "model_opt", metavar="PATH", help="the model file (default: [checks.bayes] model)")
@click.option(
    "--storage",
    type=click.Choice(["redis", "file"]),
    help="where training goes (default: [checks.bayes] storage)",
)
@click.option(
    "--user",
    metavar="ADDRESS",
    help="also train this user's own dictionary in Redis ([checks.bayes] per_user; docs/bayes.md)",
)
@click.option("--quiet", "-q", is_flag=True, help="no progress bar")
@click.pass_context
def train(
    ctx: click.Context,
    label: str,
    sources: tuple[str, ...],
    mboxes: tuple[str, ...],
    maildirs: tuple[str, ...],
    signatures: tuple[str, ...],
    quarantined: tuple[str, ...],
    unlearn: bool,
    mode: str | None,
    model_opt: str | None,
    storage: str | None,
    user: str | None,
    quiet: bool,
) -> None:
    """Train the classifier with messages of class LABEL (spam or ham).

    Messages come from FILEs, every file under a DIR, stdin ("-"), --mbox files, --maildir folders,
    --signature ids or --quarantine ids.  Training is idempotent: a message already trained as LABEL
    is left alone, one trained as the other class is moved.
    """
    if not (sources or mboxes or maildirs or signatures or quarantined):
        raise click.UsageError(
            "nothing to train: give FILE, DIR, -, --mbox, --maildir, --signature or --quarantine"
        )
    from redis import RedisError

    from filterd.bayes.model import ModelError
    from filterd.bayes.store import ModelHolder, model_path
    from filterd.bayes.training import Trainer, count_messages, mailbox_messages
    from filterd.checks.bayes import params_of
    from filterd.services import Services

    cfg = load(ctx)
    held = _quarantined(cfg, quarantined)  # a wrong id fails before any training
    s = cfg.check_settings("bayes")
    storage = storage or s.storage
    path = Path(model_opt) if model_opt else model_path(s.model)
    services = Services(cfg)
    lock = _file_lock(path) if storage == "file" else contextlib.nullcontext()
    try:
        with lock:
            holder = ModelHolder(path, storage, lambda: services.redis, cfg.redis.key_prefix, s.log_max)
            # storage = "file" needs Redis only to look signatures up: no shared model to load
            shared = holder.connect() if storage == "redis" else holder.client() if signatures else None
            trainer = Trainer(
                holder.model if storage == "file" else shared.model,  # type: ignore[union-attr]
                shared if storage == "redis" else None,
                label,
                unlearn=unlearn,
                mode=mode or s.train_mode,
                params=params_of(s),
                spam_cutoff=s.spam_cutoff,
                ham_cutoff=s.ham_cutoff,
                mature_after=s.mature_after,
                signatures=shared,
                min_learned=s.min_learned,
            )
            if user:
                trainer.seen = []  # every message given, for the user's dictionary below
            total = count_messages(sources, mboxes, maildirs)
            with _progress(quiet, total and total + len(held), f"training {label}") as advance:
                messages = itertools.chain(
                    read_messages(sources) if sources else (), mailbox_messages(mboxes, maildirs), held
                )
                for _name, raw in messages:
                    trainer.add_message(raw)
                    advance()
                for sig_id in signatures:
                    trainer.add_signature(sig_id)
                trainer.flush()
            if storage == "file":
                trainer.model.save(path)
            else:
                shared.snapshot()  # type: ignore[union-attr]
            user_note = _train_user(services, cfg, s, user, trainer, label, unlearn) if user else ""
    except ModelError as exc:
        raise click.ClickException(str(exc)) from exc
    except FileNotFoundError as exc:
        raise click.BadParameter(str(exc)) from exc
    except RedisError as exc:
        raise click.ClickException(
            f'redis at {cfg.redis.url}: {type(exc).__name__}: {exc} (storage = "file" trains the model file)'
        ) from exc
    finally:
        services.close()
    model = trainer.current
    click.echo(f"{trainer.tally.summary(label)}")
    click.echo(
        f"model: {model.nspam} spam, {model.nham} ham ({storage}: {path if storage == 'file' else cfg.redis.url})"
    )
    if user_note:
        click.echo(user_note)
    if trainer.tally.missing:
        ctx.exit(1)


def _train_user(services: Any, cfg: Any, s: Any, user: str, trainer: Any, label: str, unlearn: bool) -> str:
    """Train `user`'s dictionary with every message the run was given (whatever the training mode
    did with it in the global model: the user's own mail is what the dictionary is for); a summary."""
    from filterd.bayes.peruser import BATCH, UserDictionaries, user_name

    users = UserDictionaries(
        services.redis, cfg.redis.key_prefix, int(s.per_user_days * 86400), s.per_user_max_messages
    )
    items = [(user, digest, buckets, None if unlearn else label) for digest, buckets in trainer.seen]
    changed = full = 0
    for start in range(0, len(items), BATCH):
        for change in users.train(items[start : start + BATCH]):
            full += change is None
            changed += change is not None and change.changed
    nspam, nham = users.totals(user)
    note = f"user {user_name(user)}: {changed} changed, {len(items) - changed - full} already so"
    if full:
        note += f", {full} not added (the dictionary holds {s.per_user_max_messages} messages at most)"
    off = "" if s.per_user else " ([checks.bayes] per_user is off: not used for scoring)"
    return f"{note}; dictionary: {nspam} spam, {nham} ham{off}"


def _quarantined(cfg: Any, ids: tuple[str, ...]) -> list[tuple[str, bytes]]:
    """(id, the bytes received) of each quarantined message named."""
    if not ids:
        return []
    from filterd.quarantine.store import QuarantineError, QuarantineStore, validate_id

    store = QuarantineStore(cfg.quarantine)
    try:
        return [(qid, store.get(validate_id(qid)).original()) for qid in ids]
    except QuarantineError as exc:
        raise click.BadParameter(str(exc), param_hint="--quarantine") from None


@contextlib.contextmanager
def _progress(quiet: bool, total: int | None, what: str) -> Iterator[Any]:
    """A rich progress bar on stderr (nothing when quiet or stderr is not a terminal)."""
    if quiet or not os.isatty(2):
        yield lambda: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as progress:
        task = progress.add_task(what, total=total)
        yield lambda: progress.advance(task)


@click.command(name="eval")
@click.argument("folders", nargs=-1, metavar="[FOLDER]...")
@click.option(
    "--run",
    "runs",
    multiple=True,
    type=click.Choice(["hash", "hash-swap", "chrono", "online", "cross"]),
    help="a run to make (repeatable; default: hash, chrono, online and cross)",
)
@click.option("--no-bogofilter", is_flag=True, help="measure filterd only")
@click.option("--batch", default=200, show_default=True, help="online: score this many, then train them")
@click.option(
    "--order",
    type=click.Choice(["date", "file"]),
    default="date",
    show_default=True,
    help="chrono and online: Date order or file-name order",
)
@click.option("--limit", type=int, help="use only N messages of each folder (every k-th: a quick look)")
@click.option(
    "--splits",
    default=1,
    show_default=True,
    help="hash and hash-swap: this many different hash splits, with their median and range",
)
@click.option("--plot", metavar="PNG", default="", help="write the ROC curves there (needs matplotlib)")
@click.pass_context
def eval_(
    ctx: click.Context,
    folders: tuple[str, ...],
    runs: tuple[str, ...],
    no_bogofilter: bool,
    batch: int,
    order: str,
    limit: int | None,
    splits: int,
    plot: str,
) -> None:
    """Measure the classifier, and bogofilter beside it, on labelled FOLDERs.

    A FOLDER holds a manifest.csv (path,label[,date_utc]) or ham/ and spam/ subfolders.  Default:
    spamassassin-public and csdmc2010 under $FILTERD_CORPUS (../shared/corpus beside the source
    tree).  Verdict headers another filter added (X-Spam-*, X-DSPAM-*, X-Bogosity, X-Virus-* and
    the like) are removed first.  Runs: hash (halves by sha1(file name) mod 2), hash-swap (the
    same halves the other way, for tuning), chrono (first half / second half in order), online
    (score --batch messages, then train them) and cross (train on one folder, test on another,
    every ordered pair).  Prints (1-ROCA)%, the spam missed at <= 0.1% ham flagged, ham and spam on
    the wrong side of spam_cutoff, and train / score messages per CPU second.
    """
    from filterd.checks.bayes import params_of
    from filterd_eval.corpus import CORPORA, WHERE_TO_GET, CorpusMissing, corpus_root, load_folder
    from filterd_eval.learners import Bogofilter, filterd_bayes
    from filterd_eval.report import render, write_roc_plot
    from filterd_eval.runs import DEFAULT_RUNS, LearnerFactory, evaluate

    cfg = load(ctx)
    s = cfg.check_settings("bayes")
    if batch < 1:
        raise click.BadParameter("must be 1 or more", param_hint="--batch")
    if splits < 1:
        raise click.BadParameter("must be 1 or more", param_hint="--splits")
    paths = [Path(f) for f in folders] or [corpus_root() / name for name in CORPORA]
    present = [p for p in paths if p.is_dir()]
    if folders and len(present) < len(paths):
        missing = next(p for p in paths if not p.is_dir())
        raise click.BadParameter(f"{missing}: no such folder", param_hint="FOLDER")
    if not present:
        raise click.ClickException(
            f"no labelled corpus at {corpus_root()} (set FILTERD_CORPUS, or name FOLDERs): get {WHERE_TO_GET}"
        )
    for p in paths:
        if p not in present:
            click.echo(f"{p}: not there, skipped ({WHERE_TO_GET})", err=True)
    try:
        corpora = {_short(p.name): load_folder(p, limit) for p in present}
    except (CorpusMissing, ValueError) as exc:
        raise click.BadParameter(str(exc), param_hint="FOLDER") from exc
    params = params_of(s)
    factories: list[LearnerFactory] = [lambda: filterd_bayes(params)]
    if not no_bogofilter:
        try:
            Bogofilter().close()
            factories.append(Bogofilter)
        except FileNotFoundError as exc:
            click.echo(f"bogofilter skipped: {exc}", err=True)
    rows = evaluate(
        corpora,
        factories,
        runs or DEFAULT_RUNS,
        cutoff=s.spam_cutoff,
        batch=batch,
        order=order,
        say=lambda line: click.echo(line, err=True),
        splits=splits,
    )
    click.echo(render(rows, s.spam_cutoff))
    if plot:
        try:
            write_roc_plot(rows, Path(plot))
            click.echo(f"ROC plot: {plot}")
        except ImportError:
            click.echo("no ROC plot: matplotlib is not installed (pip install 'filterd[eval]')")


def _short(name: str) -> str:
    return {"spamassassin-public": "SA", "csdmc2010": "CSDMC"}.get(name, name)

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
    if trainer.tally.missing:
        ctx.exit(1)


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
@click.option(
    "--corpus",
    "corpus_dir",
    metavar="DIR",
    help="labelled corpus with manifest.csv (default: $FILTERD_CORPUS/spamassassin-public, "
    "FILTERD_CORPUS defaulting to ../shared/corpus beside the source tree)",
)
@click.option("--no-bogofilter", is_flag=True, help="measure filterd only")
@click.option("--split/--no-split", default=True, help="run (a): the fixed half/half split")
@click.option("--online/--no-online", default=True, help="run (b): the online run in date order")
@click.option(
    "--online-batch", default=1, show_default=True, help="online: classify this many, then train them"
)
@click.option("--limit", type=int, help="use only the first N messages of the corpus (a quick look)")
@click.option(
    "--plot", metavar="PNG", default="bayes-roc.png", show_default=True, help="ROC plot ('' for none)"
)
@click.pass_context
def eval_(
    ctx: click.Context,
    corpus_dir: str | None,
    no_bogofilter: bool,
    split: bool,
    online: bool,
    online_batch: int,
    limit: int | None,
    plot: str,
) -> None:
    """Measure the classifier (and bogofilter beside it) on a labelled corpus.

    Reports (1-ROCA)%, the false-negative rate where false positives are at most 0.1%, FP and FN
    at the configured cutoffs, and classify / train throughput, for (a) a fixed half/half split by
    a hash of the file name and (b) a TREC-style online run in date order.
    """
    from filterd.bayes.evaluate import default_corpus, render, run_eval
    from filterd.checks.bayes import params_of

    cfg = load(ctx)
    s = cfg.check_settings("bayes")
    corpus = Path(corpus_dir) if corpus_dir else default_corpus()
    if not (corpus / "manifest.csv").is_file():
        raise click.BadParameter(f"{corpus}: no manifest.csv there", param_hint="--corpus")
    if online_batch < 1:
        raise click.BadParameter("must be 1 or more", param_hint="--online-batch")
    report = run_eval(
        corpus,
        params=params_of(s),
        spam_cutoff=s.spam_cutoff,
        ham_cutoff=s.ham_cutoff,
        bogofilter=not no_bogofilter,
        runs=tuple(r for r, on in (("split", split), ("online", online)) if on),
        online_batch=online_batch,
        limit=limit,
        plot=Path(plot) if plot else None,
        say=lambda line: click.echo(line, err=True),
    )
    click.echo(render(report))

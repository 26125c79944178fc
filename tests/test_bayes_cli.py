"""`filterctl train` and `filterctl eval` through click's CliRunner."""

from __future__ import annotations

import mailbox
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from filterd.bayes.model import Model
from filterd.cli.filterctl import cli
from filterd.config import parse_config
from filterd.driver import scan
from filterd.pipeline import Pipeline
from tests.bayes_helpers import ham_message, only_bayes, spam_message, trained_model


def write_dir(path: Path, messages: list[bytes]) -> Path:
    path.mkdir(parents=True)
    for i, raw in enumerate(messages):
        (path / f"{i:03d}.eml").write_bytes(raw)
    return path


def run(args: list[str], config: Path | None = None, input: bytes | None = None) -> tuple[int, str]:
    prefix = ["--config", str(config)] if config else []
    result = CliRunner().invoke(cli, [*prefix, *args], input=input, catch_exceptions=False)
    return result.exit_code, result.output


@pytest.fixture
def file_config(tmp_path: Path) -> tuple[Path, Path]:
    model = tmp_path / "models" / "bayes.npz"
    config = tmp_path / "filterd.toml"
    config.write_text(f'[checks.bayes]\nstorage = "file"\nmodel = "{model}"\ntrain_mode = "teft"\n')
    return config, model


def test_train_files_is_idempotent_and_moves(tmp_path, file_config) -> None:
    config, model_path = file_config
    spam_dir = write_dir(tmp_path / "spam", [spam_message(i) for i in range(20)])
    ham_dir = write_dir(tmp_path / "ham", [ham_message(i) for i in range(20)])
    code, out = run(["train", "spam", str(spam_dir)], config)
    assert code == 0 and "20 learned as spam" in out and "model: 20 spam, 0 ham" in out
    code, out = run(["train", "ham", str(ham_dir)], config)
    assert code == 0 and "model: 20 spam, 20 ham" in out
    before = Model.load(model_path)
    code, out = run(["train", "spam", str(spam_dir)], config)
    assert "0 learned as spam; 0 moved to spam; 20 already spam" in out
    again = Model.load(model_path)
    assert (again.counts.spam == before.counts.spam).all() and (again.counts.ham == before.counts.ham).all()
    one = str(spam_dir / "003.eml")
    code, out = run(["train", "ham", one], config)
    assert "1 moved to ham" in out and "model: 19 spam, 21 ham" in out
    code, out = run(["train", "ham", "--unlearn", one], config)
    assert "1 unlearned" in out and "model: 19 spam, 20 ham" in out
    code, out = run(["train", "spam", "--unlearn", one], config)
    assert "1 were not trained as spam" in out and "model: 19 spam, 20 ham" in out


def test_train_from_stdin_mbox_and_maildir(tmp_path, file_config) -> None:
    config, _ = file_config
    code, out = run(["train", "spam", "-"], config, input=spam_message(1))
    assert code == 0 and "1 learned as spam" in out
    box = mailbox.mbox(tmp_path / "spam.mbox")
    for i in range(2, 5):
        box.add(spam_message(i))
    box.flush()
    md = mailbox.Maildir(tmp_path / "Maildir")
    for i in range(3):
        md.add(ham_message(i))
    code, out = run(["train", "spam", "--mbox", str(tmp_path / "spam.mbox")], config)
    assert "3 learned as spam" in out
    code, out = run(["train", "ham", "--maildir", str(tmp_path / "Maildir")], config)
    assert "3 learned as ham" in out and "model: 4 spam, 3 ham" in out


def test_toe_trains_only_errors(tmp_path) -> None:
    model = tmp_path / "bayes.npz"
    trained_model(30).save(model)
    config = tmp_path / "filterd.toml"
    config.write_text(f'[checks.bayes]\nstorage = "file"\nmodel = "{model}"\ntrain_mode = "toe"\n')
    spam_dir = write_dir(tmp_path / "spam", [spam_message(100 + i) for i in range(5)])
    code, out = run(["train", "spam", str(spam_dir)], config)
    assert "5 skipped (already classified right" in out and "model: 30 spam" in out
    code, out = run(["train", "ham", str(spam_dir / "000.eml")], config)  # an error: trained
    assert code == 0 and "1 learned as ham" in out


def test_bad_arguments_say_what_is_wrong(tmp_path, file_config) -> None:
    config, _ = file_config
    result = CliRunner().invoke(cli, ["--config", str(config), "train", "spam"])
    assert result.exit_code == 2 and "nothing to train" in result.output
    result = CliRunner().invoke(cli, ["--config", str(config), "train", "maybe", "x"])
    assert result.exit_code == 2 and "'maybe' is not one of 'spam', 'ham'" in result.output
    result = CliRunner().invoke(cli, ["--config", str(config), "train", "spam", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "no such file or directory" in result.output
    result = CliRunner().invoke(cli, ["--config", str(config), "train", "spam", "--maildir", str(tmp_path)])
    assert result.exit_code == 2 and "not a Maildir" in result.output
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"x")
    result = CliRunner().invoke(
        cli, ["--config", str(config), "train", "spam", "--model", str(bad), "-"], input=b""
    )
    assert result.exit_code == 1 and "not a filterd model" in result.output


def test_signature_retrain_through_redis(redis_server, tmp_path) -> None:
    """A message classified by filterd is retrained from its X-Filterd-Signature alone."""
    seed = tmp_path / "bayes.npz"
    trained_model(30).save(seed)
    prefix = f"cli-{uuid.uuid4().hex[:8]}:"
    config = tmp_path / "filterd.toml"
    config.write_text(
        f'[redis]\nurl = "{redis_server.url}"\nkey_prefix = "{prefix}"\n'
        f'[checks.bayes]\nmodel = "{seed}"\ntrain_mode = "teft"\n'
    )
    pipeline = Pipeline.from_config(
        parse_config(
            {
                "redis": {"url": redis_server.url, "key_prefix": prefix},
                "checks": only_bayes({"model": str(seed)}),
            }
        )
    )
    raw = spam_message(300)
    tx, verdict = scan(pipeline, raw)
    pipeline.after_verdict(tx, verdict)  # delivered: the signature is stored, as the milter does
    assert pipeline.checks[-1].signatures.flush()
    [sig] = [h.value for h in verdict.add_headers if h.name == "X-Filterd-Signature"]
    code, out = run(["train", "ham", "--signature", sig], config)
    assert code == 0 and "1 learned as ham" in out and "model: 30 spam, 31 ham" in out
    code, out = run(["train", "ham", "--signature", sig], config)
    assert "1 already ham" in out and "model: 30 spam, 31 ham" in out
    # the original message trained later is the same message: moved, not counted twice
    code, out = run(["train", "spam", "-"], config, input=raw)
    assert "1 moved to spam" in out and "model: 31 spam, 30 ham" in out
    # the milter process follows the shared log
    holder = pipeline.checks[-1].holder
    holder.refresh(force=True)
    assert (holder.model.nspam, holder.model.nham) == (31, 30)
    code, out = run(["train", "spam", "--signature", "00000000000000000000"], config)
    assert code == 1 and "1 signatures not found" in out
    # storage = "file": the signature still comes from Redis, the training goes into the file
    local = tmp_path / "local.npz"
    code, out = run(["train", "spam", "--signature", sig, "--storage", "file", "--model", str(local)], config)
    assert code == 0 and "1 learned as spam" in out and Model.load(local).nspam == 1
    pipeline.close()


def test_train_without_redis_says_so(tmp_path) -> None:
    from tests.harness.net import free_port

    config = tmp_path / "filterd.toml"
    config.write_text(
        f'[redis]\nurl = "redis://127.0.0.1:{free_port()}/0"\ntimeout = 0.3\n[checks.bayes]\nmodel = "{tmp_path}/m.npz"\n'
    )
    result = CliRunner().invoke(cli, ["--config", str(config), "train", "spam", "-"], input=spam_message(1))
    assert (
        result.exit_code == 1
        and "redis at redis://127.0.0.1:" in result.output
        and 'storage = "file"' in result.output
    )


def test_eval_side_by_side(corpus, tmp_path) -> None:
    png = tmp_path / "roc.png"
    code, out = run(["eval", "--limit", "300", "--online-batch", "50", "--plot", str(png)])
    assert code == 0
    lines = out.splitlines()
    assert any(line.startswith("split    filterd") for line in lines)
    assert any(line.startswith("split    bogofilter") for line in lines)
    assert any(line.startswith("online   bogofilter") for line in lines)
    try:
        import matplotlib  # noqa: F401  (the "eval" extra)
    except ImportError:
        assert "no ROC plot: matplotlib is not installed" in out and not png.exists()
    else:
        assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"


def test_one_trainer_at_a_time_per_model_file(tmp_path, file_config) -> None:
    import fcntl
    import os

    config, model = file_config
    model.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(model.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        code, out = run(["train", "spam", "-"], config, input=spam_message(1))
        assert code == 1 and "being trained by another filterctl" in out
    finally:
        os.close(fd)
    code, out = run(["train", "spam", "-"], config, input=spam_message(1))
    assert code == 0 and "1 learned as spam" in out
    assert sorted(p.name for p in model.parent.iterdir()) == ["bayes.npz"]


def test_toe_trains_everything_while_the_model_is_untrained(tmp_path) -> None:
    config = tmp_path / "filterd.toml"
    config.write_text(f'[checks.bayes]\nstorage = "file"\nmodel = "{tmp_path}/m.npz"\ntrain_mode = "toe"\n')
    spam_dir = write_dir(tmp_path / "spam", [spam_message(i) for i in range(25)])
    code, out = run(["train", "spam", str(spam_dir)], config)
    assert code == 0 and "25 learned as spam" in out  # no ham yet: no verdict to trust

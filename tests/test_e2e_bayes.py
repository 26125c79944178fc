"""End to end: a message through Postfix and filterd gets the bayes verdict and a signature that
`filterctl train --signature` retrains from, with the model shared through a real redis-server."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from filterd.bayes.model import Model
from filterd.cli.filterctl import cli
from tests.harness.stack import Stack, make_message

pytestmark = pytest.mark.stack

SPAMMY = (
    "Dear friend,\r\nYou have been selected to receive a FREE credit card merchant account with no setup "
    "fees! Accept credit cards TODAY and increase your sales. Click here to apply now:\r\n"
    "http://www.merchant-offer.example.biz/apply\r\nTo be removed from our mailing list reply with REMOVE.\r\n"
)


def test_signature_header_and_bayes_symbol_then_retrain(stack: Stack, redis_server, tmp_path: Path) -> None:
    prefix = f"e2e-{uuid.uuid4().hex[:8]}:"
    shared = {
        "enabled": True,
        "storage": "redis",
        "signature": True,
    }  # the defaults are a file, no signatures
    bayes = {"redis": {"url": redis_server.url, "key_prefix": prefix}, "checks": {"bayes": shared}}
    with stack.configured(bayes):
        msg, marker = make_message("Accept credit cards today", SPAMMY)
        assert stack.send(msg) == {}
        got = stack.sink.find(marker)
    [sig] = got.header("X-Filterd-Signature")
    report = got.header("X-Spam-Report")[0]
    assert "BAYES_SPAM" in report and "spamicity" in report and "strongest:" in report
    client = redis.Redis.from_url(redis_server.url)
    assert client.ttl(f"{prefix}bayes:sig:{sig}") > 13 * 86400
    client.close()

    # the user says "not spam": retrained from the signature alone, in the shared model
    config = tmp_path / "filterd.toml"
    config.write_text(
        f'[redis]\nurl = "{redis_server.url}"\nkey_prefix = "{prefix}"\n[checks.bayes]\nstorage = "redis"\n'
    )
    shipped = Model.load(Path(__file__).resolve().parent.parent / "models" / "bayes.npz")
    result = CliRunner().invoke(cli, ["--config", str(config), "train", "ham", "--signature", sig])
    assert result.exit_code == 0, result.output
    assert "1 learned as ham" in result.output
    assert f"model: {shipped.nspam} spam, {shipped.nham + 1} ham" in result.output

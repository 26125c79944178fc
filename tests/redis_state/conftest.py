"""Helpers for the Redis-backed checks: a pipeline on the real redis-server, a settable clock."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from filterd.auth.results import DKIM, SPF, DkimResult, SpfResult
from filterd.check import Check, CheckSettings, Output, Stage
from filterd.config import Config, parse_config
from filterd.driver import SmtpContext, scan
from filterd.pipeline import Pipeline, context_for
from filterd.results import Verdict
from filterd.services import Services
from filterd.transaction import Transaction

MESSAGE = (
    b"From: Alice <alice@sender.test>\r\n"
    b"To: bob@ours.test\r\n"
    b"Subject: hello\r\n"
    b"Date: Wed, 25 Nov 2026 10:00:00 +0000\r\n"
    b"Message-ID: <%s@sender.test>\r\n"
    b"\r\n"
    b"Hello Bob.\r\n"
)

# Only the checks under test run, so no other check's findings move the score.
REDIS_CHECKS = ("greylist", "reputation", "reputation_auth", "ratelimit")


def message(mid: str | None = None) -> bytes:
    return MESSAGE.replace(b"%s", (mid or uuid.uuid4().hex).encode())


class Clock:
    """A settable clock handed to the checks instead of time.time."""

    def __init__(self, now: float = 1_795_601_100.0) -> None:  # 5 minutes after MESSAGE's Date
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def build(
    url: str,
    prefix: str,
    checks: dict[str, dict[str, Any]] | None = None,
    clock: Clock | None = None,
    **top: Any,
) -> Pipeline:
    """A pipeline with only the Redis checks enabled (plus whatever `checks` turns on)."""
    sections: dict[str, dict[str, Any]] = {name: {"enabled": False} for name in _all_check_names()}
    for name in REDIS_CHECKS:
        sections[name] = {"enabled": True, "redis_retry_after": 0.0}
    for name, values in (checks or {}).items():
        sections.setdefault(name, {}).update(values)
        sections[name].setdefault("enabled", True)
    data = {"redis": {"url": url, "key_prefix": prefix}, "checks": sections, **top}
    config = parse_config(data)
    pipeline = Pipeline.from_config(config, Services(config))
    services = pipeline.services
    stubs = [
        AuthStub(config, services, Stage.MAIL_FROM, "spf"),
        AuthStub(config, services, Stage.EOM, "dkim"),
    ]
    pipeline = Pipeline(config, stubs + pipeline.checks, services)
    if clock is not None:
        for check in pipeline.checks:
            if hasattr(check, "clock"):
                check.clock = clock  # type: ignore[attr-defined]
    return pipeline


def _all_check_names() -> list[str]:
    from filterd.config import registered_checks

    return [c.name for c in registered_checks()]


def check_of(pipeline: Pipeline, name: str) -> Check:
    return next(c for c in pipeline.checks if c.name == name)


class AuthStub(Check):
    """Stands in for the SPF (MAIL FROM) and DKIM (end of message) checks: leaves pass results on
    ``tx.facts`` as they do."""

    name = "auth_stub"
    symbols: dict[str, float] = {}

    def __init__(self, config: Config, services: Services, stage: Stage, method: str) -> None:
        super().__init__(context_for(config, "auth_stub", services, CheckSettings()))
        self.stage = stage
        self.method = method
        self.domains: tuple[str, ...] = ()

    def run(self, tx: Transaction) -> list[Output]:
        if self.method == "spf":
            for d in self.domains:
                tx.facts.set(SPF, SpfResult("pass", "mailfrom", d, f"x@{d}"))
        elif self.domains:
            results = [DkimResult("fail", "broken.test", "s", "", "rsa-sha256")]
            results += [DkimResult("pass", d, "s", "", "rsa-sha256") for d in self.domains]
            tx.facts.set(DKIM, tuple(results))
        return []


def deliver(
    pipeline: Pipeline,
    client: str = "192.0.2.10",
    sender: str = "alice@sender.test",
    rcpts: tuple[str, ...] = ("bob@ours.test",),
    helo: str = "mail.sender.test",
    raw: bytes | None = None,
    auth_user: str | None = None,
    learn: bool = True,
    spf: tuple[str, ...] = (),
    dkim: tuple[str, ...] = (),
) -> tuple[Transaction, Verdict]:
    """One message through every stage, then the after-verdict hook, as the milter does."""
    for check in pipeline.checks:
        if isinstance(check, AuthStub):
            check.domains = spf if check.method == "spf" else dkim
    context = SmtpContext(client_addr=client, helo=helo, mail_from=sender, rcpts=rcpts, auth_user=auth_user)
    tx, verdict = scan(pipeline, raw or message(), context)
    if learn:
        pipeline.after_verdict(tx, verdict)
    return tx, verdict


def symbols(verdict: Verdict) -> dict[str, float]:
    return {s.name: s.score for s in verdict.symbols}


@pytest.fixture
def prefix() -> str:
    """A key prefix of its own per test, so tests sharing the session's redis-server never meet."""
    return f"t{uuid.uuid4().hex[:8]}:"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def rclient(redis_server: Any) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


def keys_with_ttl(client: redis.Redis, prefix: str) -> dict[str, int]:
    return {k.decode(): int(client.ttl(k)) for k in client.scan_iter(match=f"{prefix}*")}


Build = Callable[..., Pipeline]

"""Fixtures shared by the whole suite.  Real services start once per session, on free ports."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.clamd import ClamdServer
from tests.harness.dns import LocalDns
from tests.harness.redis import RedisServer
from tests.harness.stack import Stack

ROOT = Path(__file__).resolve().parent.parent
CORPUS = Path(os.environ.get("FILTERD_CORPUS", ROOT.parent / "shared" / "corpus"))


@pytest.fixture(scope="session")
def corpus() -> Path:
    """The shared labelled corpus ($FILTERD_CORPUS, default ../shared/corpus)."""
    if not (CORPUS / "spamassassin-public").is_dir():
        pytest.skip(f"corpus not found at {CORPUS}: set FILTERD_CORPUS to the shared/corpus folder")
    return CORPUS


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def local_dns() -> Iterator[LocalDns]:
    """An authoritative DNS server on 127.0.0.1; tests add records with `local_dns.add(...)`."""
    server = LocalDns()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def stack(local_dns: LocalDns) -> Iterator[Stack]:
    """Postfix -> filterd -> sink, started once; tests use `stack.configured({...})` for other settings.

    filterd's DNS is the local server, so SPF/DKIM/DMARC lookups never depend on the host's resolver."""
    s = Stack({"dns": {"nameservers": ["127.0.0.1"], "port": local_dns.port, "timeout": 0.5}})
    s.start()
    yield s
    s.stop()


@pytest.fixture(scope="session")
def clamd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClamdServer]:
    """clamd on the shipped test signatures (tests/clamav/); tests must not stop or pause it."""
    server = ClamdServer(tmp_path_factory.mktemp("clamd"))
    server.start()
    yield server
    server.stop()

"""The clamd client (filterd/clamd.py) against a real clamd on the shipped test signatures."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from filterd.clamd import CHUNK, ClamdError, ClamdPool, ClamdTooLarge, check_address, virus_name
from tests.harness import avsamples
from tests.harness.clamd import ClamdServer


def pool(*addresses: str, timeout: float = 10.0) -> ClamdPool:
    return ClamdPool(addresses, timeout=timeout, connect_timeout=1.0, retry_after=30.0)


@pytest.fixture(params=["unix", "tcp"])
def address(request: pytest.FixtureRequest, clamd_server: ClamdServer) -> str:
    return clamd_server.unix_address if request.param == "unix" else clamd_server.tcp_address


@pytest.mark.parametrize(
    ("make", "virus"),
    [
        (avsamples.eicar_plain, "Eicar-Test-Signature"),
        (avsamples.eicar_base64, "Eicar-Test-Signature"),
        (avsamples.eicar_zip, "Eicar-Test-Signature"),
    ],
    ids=["plain", "base64", "zip"],
)
def test_eicar_found_in_every_encoding(address: str, make: object, virus: str) -> None:
    result = pool(address).scan(make())  # type: ignore[operator]
    assert result.infected
    assert result.viruses[0].startswith(virus)
    assert result.address == address


def test_corpus_malware_mails_are_all_found(address: str, corpus: Path) -> None:
    mails = sorted((corpus / "malware-testmails" / "spam").glob("*.eml"))
    assert len(mails) == 5
    found = {m.name: pool(address).scan(m.read_bytes()).viruses for m in mails}
    assert all(found.values()), found
    assert {v[0].split(".")[0] for v in found.values()} == {"ClamAV-Test-File", "Eicar-Test-Signature"}


def test_clean_message_is_clean(address: str) -> None:
    result = pool(address).scan(avsamples.clean())
    assert not result.infected and result.viruses == ()


@pytest.mark.parametrize("size", [CHUNK - 68, CHUNK, 2 * CHUNK, 2 * CHUNK + 1])
def test_stream_across_chunk_boundaries(clamd_server: ClamdServer, size: int) -> None:
    """The chunking must deliver every byte: EICAR at the very end of a stream that ends on, just
    before or just after a chunk boundary is still found."""
    filler = b"x" * (size - len(avsamples.EICAR))
    data = filler + avsamples.EICAR
    assert len(data) == size
    assert pool(clamd_server.unix_address).scan(data).infected


def test_failover_to_the_next_socket(clamd_server: ClamdServer, tmp_path: Path) -> None:
    p = pool(f"unix:{tmp_path}/no-such.sock", "inet:1@127.0.0.1", clamd_server.tcp_address)
    result = p.scan(avsamples.eicar_plain())
    assert result.infected and result.address == clamd_server.tcp_address
    # the dead ones are now tried last: the next scan goes straight to the live one
    assert p._order()[0] == clamd_server.tcp_address


def test_all_sockets_down_raises_with_every_reason(tmp_path: Path) -> None:
    p = pool(f"unix:{tmp_path}/a.sock", f"unix:{tmp_path}/b.sock")
    with pytest.raises(ClamdError) as info:
        p.scan(b"hello")
    assert "a.sock" in str(info.value) and "b.sock" in str(info.value)


def test_slow_clamd_times_out_and_the_next_answers(tmp_path: Path, clamd_server: ClamdServer) -> None:
    slow = ClamdServer(tmp_path / "slow")
    slow.start()
    try:
        slow.pause()
        started = time.monotonic()
        with pytest.raises(ClamdError, match="timed out"):
            pool(slow.unix_address, timeout=0.5).scan(avsamples.clean())
        assert time.monotonic() - started < 2.0  # one deadline, not pyclamd's five retries
        result = pool(slow.unix_address, clamd_server.unix_address, timeout=0.5).scan(avsamples.eicar_zip())
        assert result.infected and result.address == clamd_server.unix_address
    finally:
        slow.stop()


def test_over_stream_max_length(tmp_path: Path) -> None:
    small = ClamdServer(tmp_path / "small", {"StreamMaxLength": "1M"})
    small.start()
    try:
        with pytest.raises(ClamdTooLarge):
            pool(small.unix_address).scan(b"x" * (3 * 1024 * 1024))
        assert not pool(small.unix_address).scan(b"x" * 1000).infected
    finally:
        small.stop()


def test_version_and_status(clamd_server: ClamdServer, tmp_path: Path) -> None:
    p = pool(clamd_server.unix_address, f"unix:{tmp_path}/gone.sock")
    assert p.version().startswith("ClamAV ")
    status = p.status()
    assert status[0]["ok"] and status[0]["version"].startswith("ClamAV")
    assert not status[1]["ok"] and "gone.sock" in status[1]["error"]


def test_address_syntax() -> None:
    assert check_address("unix:/run/clamav/clamd.ctl") is None
    assert check_address("inet:3310@127.0.0.1") is None
    assert check_address("unix:relative.sock") is not None
    assert check_address("tcp://127.0.0.1:3310") is not None
    assert check_address("inet:99999@127.0.0.1") is not None


def test_virus_name_drops_extended_detection_info() -> None:
    assert virus_name("Eicar-Test-Signature(44d88612fea8a8f36de82e1278abb02f:68)") == "Eicar-Test-Signature"
    assert virus_name("Win.Test.EICAR_HDB-1") == "Win.Test.EICAR_HDB-1"

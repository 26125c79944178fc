"""The daemon's supervision pieces, one function each (the behaviour end to end is in
tests/test_e2e_supervision.py)."""

from __future__ import annotations

import os
import select
import socket
import stat
import threading
from pathlib import Path

import pytest

from filterd import daemon, worker
from filterd.settings import ConfigError
from tests.harness.net import free_port


def test_a_broken_file_is_refused_with_its_path_and_defaults_need_no_file(tmp_path: Path) -> None:
    path = tmp_path / "filterd.toml"
    path.write_text("[milter\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        daemon.build(str(path))
    config, pipeline = daemon.build(None)
    assert config == daemon.config_from_bytes(b"", None) and pipeline.config is config
    pipeline.close()


def test_stop_accepting_leaves_a_listening_fd_that_nothing_reaches(tmp_path: Path) -> None:
    path = tmp_path / "filterd.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen(5)
        fd, address = daemon._listening_socket(path)
        assert (fd, address) == (listener.fileno(), str(path))
        daemon._stop_accepting(fd)
        # the file is still there, but no one listens on it any more
        with (
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client,
            pytest.raises(ConnectionRefusedError),
        ):
            client.connect(str(path))
        # the same fd number still listens (libmilter's loop keeps waiting), on nothing reachable
        assert listener.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        assert listener.getsockname() != str(path)
        assert select.select([fd], [], [], 0.1)[0] == []


def _sockets_and_threads() -> tuple[set[int], int]:
    fds = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            if stat.S_ISSOCK(os.fstat(int(name)).st_mode):
                fds.add(int(name))
        except OSError:
            continue
    return fds, threading.active_count()


def test_building_the_pipeline_leaves_no_socket_and_no_thread_for_the_workers_to_share(
    tmp_path: Path,
) -> None:
    """The parent builds the pipeline and forks the workers with it: what it holds then is in
    every worker.  A connection (Redis, clamd, DNS) or a thread made at build would be shared or
    lost at the fork, so building must make none: the services connect on first use."""
    redis_port = free_port()  # nothing listens: a connection attempt would fail loudly anyway
    config = tmp_path / "filterd.toml"
    config.write_text(
        f'[redis]\nurl = "redis://127.0.0.1:{redis_port}/0"\n'
        '[dns]\nnameservers = ["127.0.0.1"]\nport = 9\n'
        "[checks.bayes]\nenabled = true\n"
        f'[checks.antivirus]\nenabled = true\nsockets = ["unix:{tmp_path}/clamd.sock"]\n'
        "[checks.greylist]\nenabled = true\n[checks.reputation]\nenabled = true\n"
        "[checks.ratelimit]\nenabled = true\n[checks.client_dns]\nenabled = true\n"
    )
    before = _sockets_and_threads()
    _, pipeline = daemon.build(str(config))
    try:
        assert {c.name for c in pipeline.checks} >= {"bayes", "antivirus", "greylist", "reputation"}
        assert _sockets_and_threads() == before
        assert "redis" not in pipeline.services.__dict__  # no client yet: each worker makes its own
    finally:
        pipeline.close()


def test_open_sessions_counts_the_connections_accepted_on_the_listening_address(tmp_path: Path) -> None:
    path = tmp_path / "filterd.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen(5)
        fd, address = daemon._listening_socket(path)
        assert worker.open_sessions(address) == 0  # the listening socket itself is not a session
        clients = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(2)]
        for c in clients:
            c.connect(str(path))
        accepted = [listener.accept()[0] for _ in clients]
        # the client ends are in this process too, but have no local address: only ours count
        assert worker.open_sessions(address) == 2
        daemon._stop_accepting(fd)  # a replaced worker stops accepting, and still counts them
        assert worker.open_sessions(address) == 2
        accepted[0].close()
        assert worker.open_sessions(address) == 1
        for s in [*clients, accepted[1]]:
            s.close()
        assert worker.open_sessions(address) == 0
        assert worker.open_sessions(None) == 0

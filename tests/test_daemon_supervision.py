"""The daemon's supervision pieces, one function each (the behaviour end to end is in
tests/test_e2e_supervision.py)."""

from __future__ import annotations

import select
import socket
from pathlib import Path

import pytest

from filterd import daemon
from filterd.settings import ConfigError


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

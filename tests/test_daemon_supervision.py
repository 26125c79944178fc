"""The daemon's supervision pieces, one function each (the behaviour end to end is in
tests/test_e2e_supervision.py)."""

from __future__ import annotations

import multiprocessing.sharedctypes
import os
import select
import socket
from pathlib import Path

import pytest

from filterd import daemon
from filterd.settings import ConfigError


def test_validated_text_is_shared_with_a_forked_reader_and_follows_each_publish() -> None:
    generation = multiprocessing.sharedctypes.RawValue("Q", 0)
    shared = daemon.ValidatedText(generation, capacity=64)
    shared.publish(b"[milter]\nworkers = 1\n")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # a worker: it waits for the parent's next publish and reports what it reads
        os.close(read)
        while int(generation.value) < 2:
            pass
        os.write(write, shared.read())
        os._exit(0)
    os.close(write)
    shared.publish(b"[milter]\nworkers = 3\n")
    assert os.read(read, 100) == b"[milter]\nworkers = 3\n"
    os.waitpid(pid, 0)
    os.close(read)
    assert generation.value == 2


def test_validated_text_refuses_more_than_it_holds_and_keeps_the_last_good() -> None:
    generation = multiprocessing.sharedctypes.RawValue("Q", 0)
    shared = daemon.ValidatedText(generation, capacity=8)
    shared.publish(b"good")
    with pytest.raises(ConfigError):
        shared.publish(b"far too long")
    assert (generation.value, shared.read()) == (1, b"good")


def test_a_broken_file_is_refused_with_its_path_and_defaults_need_no_file(tmp_path: Path) -> None:
    path = tmp_path / "filterd.toml"
    path.write_text("[milter\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        daemon.read_config(str(path))
    config, raw = daemon.read_config(None)
    assert raw == b"" and config == daemon.config_from_bytes(b"", None)


def test_stop_accepting_leaves_a_listening_fd_that_nothing_reaches(tmp_path: Path) -> None:
    path = tmp_path / "filterd.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen(5)
        fd = daemon._listening_fd(path)
        assert fd == listener.fileno()
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

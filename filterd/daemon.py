"""filterd, the daemon: one listening socket, several worker processes, signals handled in the parent.

Why a parent and workers: pymilter callbacks hold the GIL, so one process uses about one core.
The parent opens the milter socket and forks N workers that all accept on it (real-stack.md).

Why the parent handles the signals: inside a worker, libmilter's own signal thread takes SIGHUP,
SIGTERM and SIGINT and stops the milter on any of them -- SIGHUP included.  So workers ignore
SIGHUP, and a reload goes through the parent: it validates the new configuration and, only if it
is good, bumps a generation counter in shared memory; each worker rebuilds its pipeline at its
next MAIL FROM.  No connection is dropped and a bad file never replaces a good one.

SIGTERM: workers ignore it too, because once libmilter's main loop returns, pymilter can no
longer run callbacks for the connections still open -- a message in flight would hang.  Instead
the parent removes the unix socket (new connections now fail, and Postfix tempfails them per
milter_default_action) and raises a stop flag in shared memory; each worker waits until its
messages in flight are done (at most `shutdown_grace` seconds) and exits.  A worker whose parent
died does the same.

Why everything is imported before the first fork: a worker that imports numpy/scipy itself, from
a libmilter thread while others run, after a reload turned the Bayes check on, was seen to hang
for good inside the import or to crash.  So the parent imports every filterd module and each
heavy library a check may load (`preload_modules`), with the BLAS thread pools pinned to one
thread (a pool does not survive fork, and a milter worker is one core anyway); workers then
find it all in memory, shared copy-on-write.

Why a heartbeat: a hung worker keeps its share of the socket's connections, each waiting for
Postfix's milter timeout and then tempfailing.  Each worker writes, once a second, into its slot
in shared memory since when it has been making progress (filterd.milter.start_heartbeat); the
parent kills a worker whose slot lags more than [milter] heartbeat_timeout and starts another.
"""

from __future__ import annotations

import argparse
import contextlib
import grp
import importlib
import logging
import multiprocessing.sharedctypes
import os
import pkgutil
import signal
import sys
import time
from pathlib import Path

from filterd.config import DEFAULT_CONFIG_PATH, Config, load_config
from filterd.pipeline import Pipeline
from filterd.settings import ConfigError

log = logging.getLogger("filterd")

_SIGNALS = {signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGCHLD}

# Libraries filterd imports inside functions (or that a check loads only when enabled): imported
# by the parent before any fork as well.  Absent optional ones are skipped.
_LAZY_IMPORTS = (
    "numpy",
    "scipy.sparse",
    "scipy.special",
    "sklearn.utils",
    "re2",
    "dkim",
    "spf",
    "redis",
    "redis.cluster",
    "redis.exceptions",
    "redis.sentinel",
    "dns.exception",
    "dns.resolver",
    "tldextract",
    "selectolax.parser",
)
_BLAS_THREADS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def preload_modules() -> list[str]:
    """Import every filterd module a worker may use and the libraries above (see the docstring).

    Returns what could not be imported, for the log: an optional library that is not installed."""
    for var in _BLAS_THREADS:  # before numpy's first import; an admin's own setting wins
        os.environ.setdefault(var, "1")
    import filterd

    names = [
        info.name
        for info in pkgutil.walk_packages(filterd.__path__, "filterd.")
        if not info.name.startswith(("filterd.cli", "filterd.__main__"))
    ]
    missing = []
    for name in [*names, *_LAZY_IMPORTS]:
        try:
            importlib.import_module(name)
        except Exception as exc:  # ImportError, or a module that fails without its extra
            missing.append(f"{name} ({type(exc).__name__}: {exc})")
    return missing


def read_config(path: str | None) -> Config:
    """Load and fully validate (by building the pipeline once) the configuration."""
    config = load_config(path)
    Pipeline.from_config(config).close()
    return config


class Supervisor:
    def __init__(self, config_path: str | None, config: Config, workers: int) -> None:
        self.config_path = config_path
        self.config = config
        self.workers = workers or os.cpu_count() or 1
        self.generation = multiprocessing.sharedctypes.RawValue("Q", 0)
        self.stop_flag = multiprocessing.sharedctypes.RawValue("B", 0)
        # one slot per worker: since when it has been making progress (time.monotonic())
        self.heartbeats = multiprocessing.sharedctypes.RawArray("d", self.workers)
        self.socket_path: Path | None = None
        self.children: dict[int, float] = {}  # pid -> start time
        self.slots: dict[int, int] = {}  # pid -> its heartbeat slot
        self.hung: set[int] = set()  # killed for a missing heartbeat, not yet reaped
        self.stopping = False
        self.kill_deadline = 0.0

    def run(self) -> int:
        import milter

        from filterd.milter import install_callbacks

        settings = self.config.milter
        socket_path = self.socket_path = _unix_path(settings.socket)
        if socket_path is not None:
            socket_path.parent.mkdir(parents=True, exist_ok=True)
        install_callbacks(settings.timeout)
        milter.setconn(settings.socket)
        milter.opensocket(True)  # True: remove a stale socket file left by a previous run
        if socket_path is not None:
            os.chmod(socket_path, int(settings.socket_mode, 8))
            if settings.socket_group:
                try:
                    os.chown(socket_path, -1, grp.getgrnam(settings.socket_group).gr_gid)
                except (KeyError, PermissionError) as exc:
                    log.warning(
                        "socket %s left in its own group: cannot give it group %r (%s)",
                        socket_path,
                        settings.socket_group,
                        exc,
                    )
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        for slot in range(self.workers):
            self._spawn(slot)
        log.info(
            "listening on %s with %d workers (configuration: %s)",
            settings.socket,
            self.workers,
            self.config_path or "built-in defaults",
        )
        while self.children:
            info = signal.sigtimedwait(_SIGNALS, 0.5)
            if self.stopping and time.monotonic() > self.kill_deadline:
                for pid in self.children:  # a worker stuck past its grace: end it
                    _kill(pid, signal.SIGKILL)
            if not self.stopping:
                self._check_heartbeats()
            if info is None:
                self._reap()
            elif info.si_signo == signal.SIGHUP:
                self._reload()
            elif info.si_signo in (signal.SIGTERM, signal.SIGINT):
                self._stop()
            else:
                self._reap()
        log.info("stopped")
        return 0

    def _spawn(self, slot: int) -> None:
        self.heartbeats[slot] = time.monotonic()  # the worker's start-up counts as progress
        pid = os.fork()
        if pid == 0:
            try:
                code = self._worker(slot)
            except BaseException:
                log.exception("worker failed")
                code = 1
            os._exit(code)
        self.children[pid] = time.monotonic()
        self.slots[pid] = slot

    def _check_heartbeats(self) -> None:
        """Kill a worker that stopped making progress; `_reap` then starts another in its slot."""
        limit = self.config.milter.heartbeat_timeout
        now = time.monotonic()
        for pid, slot in self.slots.items():
            lag = now - self.heartbeats[slot]
            if lag > limit and pid not in self.hung:
                log.error(
                    "worker %d made no progress for %.1f s (heartbeat_timeout %g): killing it, starting another",
                    pid,
                    lag,
                    limit,
                )
                self.hung.add(pid)
                _kill(pid, signal.SIGKILL)

    def _worker(self, slot: int) -> int:
        import milter

        from filterd import milter as filterd_milter

        # libmilter stops on any of these; the parent decides instead (see the module docstring)
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
        heartbeats = self.heartbeats

        def beat(progress: float) -> None:
            heartbeats[slot] = progress

        filterd_milter.busy[0] = time.monotonic()  # building the first pipeline: progress until built
        filterd_milter.start_heartbeat(beat)
        generation = self.generation
        filterd_milter.holder = filterd_milter.PipelineHolder(
            build=lambda: Pipeline.from_config(load_config(self.config_path)),
            generation=lambda: int(generation.value),
        )
        del filterd_milter.busy[0]
        parent = os.getppid()
        stop_flag = self.stop_flag
        filterd_milter.start_drain_watcher(
            should_stop=lambda: bool(stop_flag.value) or os.getppid() != parent,
            grace=self.config.milter.shutdown_grace,
        )
        milter.main()
        return 0

    def _reload(self) -> None:
        try:
            self.config = read_config(self.config_path)
        except Exception as exc:  # ConfigError, or a check that cannot start
            log.error("reload refused, keeping the running configuration: %s", exc)
            return
        self.generation.value += 1
        log.info(
            "configuration %s validated; workers reload it (generation %d)",
            self.config_path or "built-in defaults",
            self.generation.value,
        )

    def _stop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        log.info("stopping: workers finish the messages in flight")
        if self.socket_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()  # no new connections; Postfix tempfails them meanwhile
        self.stop_flag.value = 1
        self.kill_deadline = time.monotonic() + self.config.milter.shutdown_grace + 5

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            started = self.children.pop(pid, None)
            slot = self.slots.pop(pid, 0)
            if started is None or self.stopping:
                continue
            if pid in self.hung:
                self.hung.discard(pid)
                log.info("hung worker %d ended; starting another", pid)
            else:
                log.error("worker %d exited unexpectedly (status %d); starting another", pid, status)
                if time.monotonic() - started < 1.0:
                    time.sleep(1.0)  # a worker that dies at once must not spin the parent
            self._spawn(slot)


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _unix_path(conn: str) -> Path | None:
    for prefix in ("unix:", "local:"):
        if conn.startswith(prefix):
            return Path(conn[len(prefix) :])
    return None


def _lean_log_records() -> None:
    """Log records without what our format never shows: one line per message is on the mail path.

    Finding the caller's file and line walks the stack, and the thread name makes Python wrap
    each libmilter thread in a dummy Thread object; together about half the cost of a record
    (12.8 -> 6.8 us measured here).  The daemon owns its process, so it may set these globals."""
    logging._srcfile = None  # no caller lookup (%(filename)s, %(lineno)d, %(funcName)s)
    logging.logThreads = False  # no %(thread)d, %(threadName)s
    logging.logMultiprocessing = False  # no %(processName)s


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="filterd", description="filterd: a content filter (milter) for Postfix"
    )
    parser.add_argument(
        "--config",
        metavar="PATH",
        help=f"configuration file (default: $FILTERD_CONFIG or {DEFAULT_CONFIG_PATH})",
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="worker processes (overrides [milter] workers)"
    )
    args = parser.parse_args(argv)
    path = args.config or os.environ.get("FILTERD_CONFIG")
    if path is None and DEFAULT_CONFIG_PATH.exists():
        path = str(DEFAULT_CONFIG_PATH)
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="filterd[%(process)d]: %(levelname)s %(message)s"
    )
    _lean_log_records()
    for missing in preload_modules():
        logging.getLogger("filterd").debug("not preloaded: %s", missing)
    try:
        config = read_config(path)
    except ConfigError as exc:
        print(f"filterd: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    logging.getLogger().setLevel(config.milter.log_level.upper())
    if args.workers is not None and args.workers < 1:
        parser.error("--workers must be 1 or more")
    workers = args.workers if args.workers is not None else config.milter.workers
    sys.exit(Supervisor(path, config, workers).run())


if __name__ == "__main__":
    main()

"""filterd, the daemon: one listening socket, several worker processes, signals handled in the parent.

Why a parent and workers: pymilter callbacks hold the GIL, so one process uses about one core.
The parent opens the milter socket and forks N workers that all accept on it (real-stack.md).

Why the pipeline is built once, in the parent, before the fork: a worker forked with the
pipeline serves at once -- a new worker after a crash, a hung one or a reload takes mail within
milliseconds of its fork (it used to build its own, about a second with the Bayes check) -- and
it reads nothing from disk.  The files a check reads when it is built (the configuration, a
Bayes model, the rule files, DKIM keys) may be broken at any time (an admin halfway through an
edit; a reload refused); a worker that read them itself would fail at start every second,
forever, and with every worker dead nothing accepts mail while the parent lives on (so systemd
does not restart it either).  What the parent built is what it validated, and every worker runs
exactly that.  Building opens no connection and starts no thread (the services connect on first
use, tests/test_daemon_supervision.py checks it), so nothing a worker inherits is shared with
another: each opens its own Redis, clamd and DNS sockets, and the locks it inherits were free at
the fork (the parent runs no other thread but, with [metrics] on, the HTTP server's, which
takes none of them: see filterd.metrics).  The pages of what the parent built -- the modules,
the 64 MB Bayes table, the compiled rules -- stay shared between the workers copy-on-write;
`gc.freeze()` before each fork keeps the cyclic GC from writing into (and so copying) them.

Why the socket is opened first (`main`): on a restart, Postfix's connections that come while the
new filterd imports its libraries and builds its pipeline (seconds on a loaded host) wait in the
socket's backlog and are served when the workers start, instead of getting milter_default_action's
451.  If the pipeline cannot be built after all, the socket is closed and filterd exits with 2.

Why the parent handles the signals: inside a worker, libmilter's own signal thread takes SIGHUP,
SIGTERM and SIGINT and stops the milter on any of them -- SIGHUP included.  So workers ignore
them, and a reload goes through the parent: it reads the file and builds the new pipeline; only
if that succeeds it forks a new set of workers with it, and then tells the replaced ones (a flag
in shared memory) to stop accepting -- it waits until they have, so every connection made after
the "validated" log line gets the new configuration -- to finish their messages in flight and
their open sessions (Postfix keeps one milter connection per SMTP session: a session open across
the reload goes on, with the pipeline it started with, and sees no 451), at most
`shutdown_grace` seconds, and to exit.  A bad file never replaces a good one: a refused reload
changes nothing.  (The other way, each worker rebuilding in place from validated bytes, would
read the model and rule files again in every worker, stall that worker's mail while it builds,
and give every worker a private copy of everything.)

SIGTERM: workers ignore it too, because once libmilter's main loop returns, pymilter can no
longer run callbacks for the connections still open -- a message in flight would hang.  Instead
the parent removes the unix socket (new connections now fail, and Postfix tempfails them per
milter_default_action) and raises a stop flag in shared memory; each worker waits until its
messages in flight are done (at most `shutdown_grace` seconds) and exits.

A worker whose parent died (SIGKILL, a crash) must not go on accepting: nothing replaces it any
more, and at its exit it would cut whatever it holds.  Its drain watcher polls os.getppid() every
0.1 s; once the parent is gone it removes the unix socket file (only if it is still ours: a new
filterd may have bound the same path) so Postfix fails fast per milter_default_action instead of
waiting, stops accepting (`_stop_accepting`: its copy of the listening socket is swapped for a
socket no one can reach, so libmilter's accept loop simply never wakes -- closing the fd would
make that loop fail and return, which hangs the open connections), finishes its messages in
flight (at most `shutdown_grace`) and exits.  Stopping workers on SIGTERM stop accepting the same
way, which matters for an inet: socket, which has no file to remove.

Why everything is imported before the first fork: a worker that imports numpy/scipy itself, from
a libmilter thread while others run, after a reload turned the Bayes check on, was seen to hang
for good inside the import or to crash.  So the parent imports every filterd module and each
heavy library a check may load (`preload_modules`), with the BLAS thread pools pinned to one
thread (a pool does not survive fork, and a milter worker is one core anyway); workers then
find it all in memory, shared copy-on-write.

Why a heartbeat: a hung worker keeps its share of the socket's connections, each waiting for
Postfix's milter timeout and then tempfailing.  Each worker writes, once a second, into its slot
in shared memory since when it has been making progress (filterd.worker.start_heartbeat); the
parent kills a worker whose slot lags more than [milter] heartbeat_timeout and starts another.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import grp
import importlib
import logging
import multiprocessing.sharedctypes
import os
import pkgutil
import signal
import socket
import stat
import sys
import time
from pathlib import Path
from typing import Any

from filterd import maillog, metrics
from filterd.config import DEFAULT_CONFIG_PATH, Config, config_from_bytes, read_config_bytes
from filterd.pipeline import Pipeline
from filterd.settings import ConfigError

log = logging.getLogger("filterd")

_SIGNALS = {signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGCHLD}

# Libraries filterd imports inside functions (or that a check loads only when enabled): imported
# by the parent before any fork as well.  Absent optional ones are skipped.
_LAZY_IMPORTS = (
    "numpy",
    "scipy.sparse",
    "mmh3",
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


def build(path: str | None) -> tuple[Config, Pipeline]:
    """Read, parse and fully validate the configuration file by building its pipeline.

    The pipeline built here is the one the workers serve with (they are forked with it)."""
    config = config_from_bytes(read_config_bytes(path), path)
    return config, Pipeline.from_config(config)


# Flags the parent raises in a worker's slot of shared memory.
RUNNING, STOP, DRAIN = 0, 1, 2  # STOP: filterd stops; DRAIN: a reload replaced this worker


class Supervisor:
    def __init__(self, config_path: str | None, config: Config, workers: int) -> None:
        self.config_path = config_path
        self.config = config  # the last validated configuration, never replaced by a bad one
        self.pipeline: Pipeline | None = (
            None  # built from it; what every worker forked from now on serves with
        )
        self.generation = 1
        self.workers = workers or os.cpu_count() or 1
        # Slots in shared memory, per worker: the current ones and those a reload replaced that
        # are still finishing (two reloads in a row: three sets at most; see _free_slots).
        slots = 3 * self.workers
        self.heartbeats = multiprocessing.sharedctypes.RawArray("d", slots)  # progress since (monotonic)
        self.flags = multiprocessing.sharedctypes.RawArray("B", slots)  # RUNNING / STOP / DRAIN
        self.accepting = multiprocessing.sharedctypes.RawArray("B", slots)  # 0 once a worker stopped
        self.socket_path: Path | None = None
        self.socket_file: tuple[int, int] | None = None  # (st_dev, st_ino) of our socket file
        self.listen_fd: int | None = None  # libmilter's listening socket, inherited by workers
        self.listen_address: str | tuple[Any, ...] | None = None  # its address, to count sessions
        self.children: dict[int, float] = {}  # pid -> start time
        self.slots: dict[int, int] = {}  # pid -> its slot
        self.generation_of: dict[int, int] = {}  # pid -> the configuration generation it serves
        self.draining: set[int] = set()  # replaced by a reload: finishing, not to be replaced
        self.hung: set[int] = set()  # killed for a missing heartbeat, not yet reaped
        self.stopping = False
        self.kill_deadline = 0.0

    def open_socket(self) -> None:
        """Open the milter socket (before the pipeline is built: see `main`)."""
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
            st = os.stat(socket_path)
            self.socket_file = (st.st_dev, st.st_ino)
        self.listen_fd, self.listen_address = _listening_socket(socket_path)

    def run(self, pipeline: Pipeline) -> int:
        """Fork the workers with `pipeline` and supervise them until stopped."""
        settings = self.config.milter
        self.pipeline = pipeline
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        self._start_workers()
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

    def _start_workers(self) -> None:
        """Fork a full set of workers with the current pipeline, each in a free slot."""
        # Objects the parent made so far (modules, the pipeline) are left alone by the cyclic GC
        # from now on, in the parent and in the workers: a collection would write into every one
        # of them, and each page written is a page a worker no longer shares with the parent.
        gc.freeze()
        for slot in self._free_slots(self.workers):
            self._spawn(slot)

    def _free_slots(self, wanted: int) -> list[int]:
        """`wanted` slots no live worker uses.  Replaced workers with nothing left to do exit
        within a moment; if that is not room enough, the one finishing longest is ended."""
        patience = time.monotonic() + 1.0
        while True:
            self._reap()
            used = set(self.slots.values())
            free = [slot for slot in range(len(self.flags)) if slot not in used]
            if len(free) >= wanted:
                return free[:wanted]
            if time.monotonic() < patience:
                time.sleep(0.02)
                continue
            oldest = min(self.draining, key=lambda pid: self.children[pid])
            log.warning("worker %d still finishing after two reloads: ending it", oldest)
            _kill(oldest, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(oldest, 0)
            self._forget(oldest)

    def _spawn(self, slot: int) -> None:
        self.heartbeats[slot] = time.monotonic()  # the worker's start-up counts as progress
        self.flags[slot] = RUNNING
        self.accepting[slot] = 1
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
        self.generation_of[pid] = self.generation

    def _forget(self, pid: int) -> tuple[float | None, int]:
        self.draining.discard(pid)
        self.hung.discard(pid)
        self.generation_of.pop(pid, None)
        return self.children.pop(pid, None), self.slots.pop(pid, 0)

    def _check_heartbeats(self) -> None:
        """Kill a worker that stopped making progress; `_reap` then starts another in its slot."""
        limit = self.config.milter.heartbeat_timeout
        now = time.monotonic()
        for pid, slot in self.slots.items():
            lag = now - self.heartbeats[slot]
            if lag > limit and pid not in self.hung:
                log.error(
                    "worker %d made no progress for %.1f s (heartbeat_timeout %g): killing it%s",
                    pid,
                    lag,
                    limit,
                    "" if pid in self.draining else ", starting another",
                )
                self.hung.add(pid)
                _kill(pid, signal.SIGKILL)

    def _worker(self, slot: int) -> int:
        from filterd import worker

        # libmilter stops on any of these; the parent decides instead (see the module docstring)
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
        # The objects the parent froze stay frozen here (gc.freeze: never scanned, never
        # copied); what this worker makes is collected as usual.
        heartbeats, flags, accepting = self.heartbeats, self.flags, self.accepting
        parent = os.getppid()
        address = self.listen_address

        def beat(progress: float) -> None:
            heartbeats[slot] = progress

        def stop_accepting() -> None:
            if os.getppid() != parent:
                log.error("parent %d died: this worker stops accepting, finishes its messages, exits", parent)
                self._remove_socket_file()  # Postfix then fails fast instead of waiting on us
            _stop_accepting(self.listen_fd)
            accepting[slot] = 0

        def sessions_open() -> int:
            """A worker replaced by a reload also finishes its open SMTP sessions (see above)."""
            draining = flags[slot] == DRAIN and os.getppid() == parent
            return worker.open_sessions(address) if draining else 0

        assert self.pipeline is not None, "run() sets it before the first fork"
        return worker.serve(
            self.pipeline,
            beat,
            should_stop=lambda: flags[slot] != RUNNING or os.getppid() != parent,
            on_stop=stop_accepting,
            grace=self.config.milter.shutdown_grace,
            sessions_open=sessions_open,
        )

    def _reload(self) -> None:
        started = time.monotonic()
        try:
            config, pipeline = build(self.config_path)
        except Exception as exc:  # ConfigError, or a check that cannot start
            log.error("reload refused, keeping the running configuration: %s", exc)
            return
        old = self.pipeline
        self.config, self.pipeline = config, pipeline
        maillog.configure(config.log, config.milter.log_level)  # the new workers log as it says
        self.generation += 1
        gc.unfreeze()  # the old pipeline's garbage may go once the parent lets go of it
        if old is not None:
            _close_quietly(old)
        del old
        gc.collect()
        self._start_workers()  # the new workers accept first: no moment without one
        # every worker of an older generation (also one started meanwhile in a dead one's place)
        replaced = [
            pid
            for pid, generation in self.generation_of.items()
            if generation < self.generation and pid not in self.draining
        ]
        for pid in replaced:
            self.flags[self.slots[pid]] = DRAIN
            self.draining.add(pid)
        self._await_stopped_accepting(replaced)
        log.info(
            "configuration %s validated in %.2f s (generation %d): %d new workers serve it; "
            "the %d replaced finish their messages and sessions first",
            self.config_path or "built-in defaults",
            time.monotonic() - started,
            self.generation,
            self.workers,
            len(replaced),
        )

    def _await_stopped_accepting(self, pids: list[int], timeout: float = 2.0) -> None:
        """Wait (briefly) until the replaced workers accept no more: from then on every new
        connection goes to a worker of the new configuration."""
        deadline, waiting = time.monotonic() + timeout, pids
        while time.monotonic() < deadline:
            waiting = [pid for pid in pids if self.accepting[self.slots[pid]] and _running(pid)]
            if not waiting:
                return
            time.sleep(0.01)
        log.warning(
            "workers %s still accept after %g s: some new connections get the old configuration",
            waiting,
            timeout,
        )

    def _stop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        log.info("stopping: workers finish the messages in flight")
        self._remove_socket_file()  # no new connections; Postfix tempfails them meanwhile
        if self.listen_fd is not None:  # no worker will be started again: nor inet connections
            _stop_accepting(self.listen_fd)
        for slot in self.slots.values():
            self.flags[slot] = STOP
        grace = self.config.milter.shutdown_grace
        self.kill_deadline = time.monotonic() + grace + 5
        if self.draining:  # the workers finishing after a reload were given their own grace
            self.kill_deadline += grace

    def close_socket(self) -> None:
        """Stop listening for good (filterd could not start after all)."""
        self._remove_socket_file()
        if self.listen_fd is not None:
            os.close(self.listen_fd)
            self.listen_fd = None

    def _remove_socket_file(self) -> None:
        """Remove our unix socket file -- only if it is still ours: a new filterd started after
        this one's parent died may have bound a socket of its own at the same path."""
        if self.socket_path is None:
            return
        with contextlib.suppress(FileNotFoundError):
            st = os.stat(self.socket_path)
            if (st.st_dev, st.st_ino) == self.socket_file:
                self.socket_path.unlink()

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                self.slots.clear()
                return
            if pid == 0:
                return
            draining, hung = pid in self.draining, pid in self.hung
            started, slot = self._forget(pid)
            metrics.worker_exited(pid, replaced=draining or self.stopping or started is None, hung=hung)
            if started is None or self.stopping:
                continue
            if draining:
                log.info("worker %d, replaced by the reload, finished%s", pid, " (killed)" if hung else "")
                continue
            if hung:
                log.info("hung worker %d ended; starting another", pid)
            else:
                log.error("worker %d exited unexpectedly (status %d); starting another", pid, status)
                if time.monotonic() - started < 1.0:
                    time.sleep(1.0)  # a worker that dies at once must not spin the parent
            self._spawn(slot)


def _close_quietly(pipeline: Pipeline) -> None:
    """Close a pipeline the parent no longer needs (it never ran a message: this is cheap)."""
    try:
        pipeline.close()
    except Exception:
        log.exception("closing the replaced pipeline failed")


def _running(pid: int) -> bool:
    """Not exited (a zombie not yet reaped counts as exited)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _listening_socket(socket_path: Path | None) -> tuple[int | None, Any]:
    """The fd and the address of the listening socket libmilter opened (pymilter does not tell
    it): the one socket of this process that listens, on `socket_path` for a unix socket."""
    found: list[tuple[int, Any]] = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            sock = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue
        with sock:
            if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                continue
            address = sock.getsockname()
            if socket_path is not None and address != str(socket_path):
                continue
            found.append((fd, address))
    if len(found) != 1:
        log.warning(
            "cannot tell libmilter's listening socket (%d candidates): workers will not stop accepting before they exit",
            len(found),
        )
        return None, None
    return found[0]


def _stop_accepting(listen_fd: int | None) -> None:
    """Stop accepting connections in this process, without disturbing libmilter's accept loop.

    The listening fd is replaced (dup2) by a listening unix socket bound to a fresh, unnamed
    abstract address that nothing connects to: libmilter goes on waiting on the same fd number
    and never wakes.  Closing the fd instead would make its loop fail and return, and then
    pymilter cannot finish the connections still open (see the module docstring)."""
    if listen_fd is None:
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as nowhere:
        nowhere.bind("")  # Linux autobind: an abstract address of its own
        nowhere.listen(1)
        os.dup2(nowhere.fileno(), listen_fd)


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
    maillog.configure_early()
    _lean_log_records()
    if args.workers is not None and args.workers < 1:
        parser.error("--workers must be 1 or more")
    try:
        config = config_from_bytes(read_config_bytes(path), path)
    except ConfigError as exc:
        print(f"filterd: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    maillog.configure(config.log, config.milter.log_level)  # before the first fork: workers inherit it
    workers = args.workers if args.workers is not None else config.milter.workers
    supervisor = Supervisor(path, config, workers)
    metrics.start(config.metrics, lambda: supervisor.config.quarantine)  # before the first fork
    # The socket first: while this process imports its libraries and builds the pipeline (seconds
    # on a loaded host), Postfix's connections wait in the socket's backlog and are served once
    # the workers start, instead of failing with milter_default_action's 451 (on a restart).
    supervisor.open_socket()
    try:
        for missing in preload_modules():
            log.debug("not preloaded: %s", missing)
        pipeline = Pipeline.from_config(config)
    except BaseException as exc:
        supervisor.close_socket()  # connections waiting in the backlog now fail: Postfix tempfails them
        if isinstance(exc, ConfigError):
            print(f"filterd: configuration error: {exc}", file=sys.stderr)
            sys.exit(2)
        raise
    sys.exit(supervisor.run(pipeline))


if __name__ == "__main__":
    main()

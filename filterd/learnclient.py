"""`filterd-learn spam|ham --user U`: queue one message (on stdin) for filterd to learn.

Dovecot's IMAPSieve scripts (contrib/dovecot/) run this once per message a user moves into or out
of Junk, while the IMAP MOVE waits for it.  So it must be quick and small: it reads the
`[redis]` section of filterd's configuration with `tomllib`, appends the message to a Redis
stream with one XADD, and exits.  Training happens elsewhere (`filterctl learn-worker`,
filterd/learner.py), which is why nothing here imports the classifier, numpy or even redis-py:
`import redis` alone costs ~75 ms and ~20 MB here (it pulls asyncio in), more than the whole
budget of a call (50 ms, 30 MB).  The few lines of RESP below are all one XADD needs.

Why a Redis stream and not a socket to the daemon: a stream with a consumer group keeps a report
until a worker acknowledges it after training, so a report made while the worker restarts (or
crashes half-way) is trained when it is back; a socket has nobody to talk to at that moment.

Redis Sentinel or Cluster configurations go through redis-py (slower: the full import), as
filterd itself does; a plain `redis://`, `rediss://` or `unix://` URL uses the small client.

Exit status: 0 queued (or a message too large to learn, skipped and said so), 64 bad arguments,
65 empty message, 75 Redis unreachable (the report is lost: Dovecot logs the failure, the move
itself is done), 78 unreadable configuration.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
import tomllib
from typing import Any, NamedTuple
from urllib.parse import unquote, urlsplit

# Keys under [redis] key_prefix; filterd/learner.py reads the same stream.
QUEUE_KEY = "learn:queue"
# A larger message is not queued: Bayes learns from text, and a message this big is mostly
# attachment; a Redis entry this size is already a lot for a queue.
MAX_MESSAGE_BYTES = 10 * 1024 * 1024
MAX_USER_CHARS = 320  # an address-sized IMAP user name; longer is cut (it is only recorded)
LABELS = ("spam", "ham")
DEFAULT_CONFIG_PATH = "/etc/filterd/filterd.toml"

EX_OK, EX_USAGE, EX_DATAERR, EX_TEMPFAIL, EX_CONFIG = 0, 64, 65, 75, 78


class RedisTarget(NamedTuple):
    """The part of [redis] the client needs; the defaults are filterd.config.RedisSettings' (a test
    keeps them equal: importing filterd.config here would import every check).  A NamedTuple, not
    a dataclass: `dataclasses` imports `inspect`, 5 ms of every call."""

    url: str = "redis://127.0.0.1:6379/0"
    password: str = ""
    timeout: float = 0.5
    key_prefix: str = "filterd:"
    cluster: bool = False
    sentinels: tuple[str, ...] = ()
    sentinel_service: str = "mymaster"


class LearnClientError(Exception):
    """The report could not be queued; `status` is the exit status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def read_target(path: str | None) -> RedisTarget:
    """[redis] of the configuration at `path` (default $FILTERD_CONFIG or /etc/filterd/filterd.toml;
    a missing default file means the built-in defaults, as for filterctl)."""
    explicit = path is not None or "FILTERD_CONFIG" in os.environ
    path = path or os.environ.get("FILTERD_CONFIG") or DEFAULT_CONFIG_PATH
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        if explicit:
            raise LearnClientError(f"{path}: no such configuration file", EX_CONFIG) from None
        return RedisTarget()
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise LearnClientError(f"{path}: {exc}", EX_CONFIG) from None
    section = doc.get("redis", {})
    if not isinstance(section, dict):
        raise LearnClientError(f"{path}: [redis] is not a table", EX_CONFIG)
    fields: dict[str, Any] = {}
    for name, default in RedisTarget._field_defaults.items():
        if name in section:
            value = section[name]
            value = tuple(value) if isinstance(value, list) else value
            if isinstance(default, float) and isinstance(value, int):
                value = float(value)
            if not isinstance(value, type(default)):
                raise LearnClientError(f"{path}: [redis] {name} = {value!r} has the wrong type", EX_CONFIG)
            fields[name] = value
    return RedisTarget(**fields)


# -- a minimal RESP2 client: connect, AUTH, SELECT, one command -----------------------------------


def encode(*args: bytes) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        out.append(b"$%d\r\n" % len(a))
        out.append(a)
        out.append(b"\r\n")
    return b"".join(out)


class _Reply:
    def __init__(self, sock: socket.socket) -> None:
        self.file = sock.makefile("rb")

    def read(self) -> Any:
        line = self.file.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError("Redis closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest
        if kind == b"-":
            raise RedisReplyError(rest.decode("utf-8", "replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.file.read(n + 2)
            if len(data) != n + 2:
                raise ConnectionError("Redis closed the connection")
            return data[:-2]
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.read() for _ in range(n)]
        raise ConnectionError(f"not a Redis reply: {line[:40]!r}")


class RedisReplyError(Exception):
    """Redis answered with an error."""


def _connect(target: RedisTarget) -> socket.socket:
    url = urlsplit(target.url)
    if url.scheme == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(target.timeout)
        sock.connect(unquote(url.path))
        return sock
    if url.scheme not in ("redis", "rediss"):
        raise LearnClientError(f"[redis] url: unknown scheme {url.scheme!r}", EX_CONFIG)
    sock = socket.create_connection((url.hostname or "127.0.0.1", url.port or 6379), target.timeout)
    if url.scheme == "rediss":
        import ssl  # only here: ~10 ms

        sock = ssl.create_default_context().wrap_socket(sock, server_hostname=url.hostname)
    return sock


def _setup_commands(target: RedisTarget) -> list[tuple[bytes, ...]]:
    """AUTH and SELECT as redis-py reads them from the URL and [redis] password."""
    url = urlsplit(target.url)
    query = dict(part.split("=", 1) for part in url.query.split("&") if "=" in part)
    commands: list[tuple[bytes, ...]] = []
    password = target.password or unquote(url.password or "") or unquote(query.get("password", ""))
    if password:
        user = unquote(url.username or "")
        commands.append((b"AUTH", user.encode(), password.encode()) if user else (b"AUTH", password.encode()))
    db = query.get("db") or (url.path.strip("/") if url.scheme != "unix" else "")
    if db and db != "0":
        commands.append((b"SELECT", db.encode()))
    return commands


def _send_small(target: RedisTarget, command: tuple[bytes, ...]) -> Any:
    """Run `command` after the connection's AUTH / SELECT, in one write and one round trip."""
    setup = _setup_commands(target)
    with _connect(target) as sock:
        sock.sendall(b"".join(encode(*c) for c in (*setup, command)))
        reply = _Reply(sock)
        for _ in setup:
            reply.read()
        return reply.read()


def _send_redis_py(target: RedisTarget, command: tuple[bytes, ...]) -> Any:
    """Sentinel and Cluster: redis-py finds the master (or the slot's node)."""
    import redis

    options: dict[str, Any] = {"socket_timeout": target.timeout, "socket_connect_timeout": target.timeout}
    if target.password:
        options["password"] = target.password
    client: Any
    if target.sentinels:
        from redis.sentinel import Sentinel

        hosts = [(h.rsplit(":", 1)[0], int(h.rsplit(":", 1)[1])) for h in target.sentinels]
        client = Sentinel(hosts, **options).master_for(target.sentinel_service, **options)
    elif target.cluster:
        from redis.cluster import RedisCluster

        client = RedisCluster.from_url(target.url, **options)
    else:
        client = redis.Redis.from_url(target.url, **options)
    try:
        return client.execute_command(*command)
    except redis.ResponseError as exc:
        raise RedisReplyError(str(exc)) from exc


def submit(target: RedisTarget, label: str, user: str, raw: bytes) -> str:
    """Queue `raw` to be learned as `label` for `user`; the stream entry's id."""
    if label not in LABELS:
        raise LearnClientError(f"label must be spam or ham, not {label!r}", EX_USAGE)
    command = (
        b"XADD",
        (target.key_prefix + QUEUE_KEY).encode(),
        b"*",
        b"label",
        label.encode(),
        b"user",
        user[:MAX_USER_CHARS].encode("utf-8", "surrogateescape"),
        b"time",
        b"%.3f" % time.time(),
        b"message",
        raw,
    )
    send = _send_redis_py if (target.sentinels or target.cluster) else _send_small
    try:
        entry = send(target, command)
    except RedisReplyError as exc:
        raise LearnClientError(f"redis at {target.url}: {exc}", EX_TEMPFAIL) from None
    except (OSError, ConnectionError, ValueError) as exc:
        raise LearnClientError(f"redis at {target.url}: {type(exc).__name__}: {exc}", EX_TEMPFAIL) from None
    except Exception as exc:  # redis-py's own errors (Sentinel, Cluster)
        raise LearnClientError(f"redis at {target.url}: {type(exc).__name__}: {exc}", EX_TEMPFAIL) from None
    return entry.decode() if isinstance(entry, bytes) else str(entry)


def read_message(stream: Any) -> bytes:
    """stdin, up to one byte past the limit (enough to know it is too large)."""
    return bytes(stream.read(MAX_MESSAGE_BYTES + 1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="filterd-learn",
        description="Queue the message on stdin for filterd to learn as spam or ham "
        "(trained by `filterctl learn-worker`).",
    )
    parser.add_argument("label", choices=LABELS)
    parser.add_argument("--user", default="", help="who reported it (the IMAP user), recorded with it")
    parser.add_argument(
        "--config", help=f"filterd's configuration (default: $FILTERD_CONFIG or {DEFAULT_CONFIG_PATH})"
    )
    parser.add_argument("--quiet", "-q", action="store_true", help="print nothing when queued")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EX_USAGE if exc.code else EX_OK
    raw = read_message(sys.stdin.buffer)
    if not raw.strip():
        print("filterd-learn: empty message on stdin", file=sys.stderr)
        return EX_DATAERR
    if len(raw) > MAX_MESSAGE_BYTES:
        # Exit 0: Dovecot would log a failure for what is a decision, and the user can do nothing.
        print(f"filterd-learn: message larger than {MAX_MESSAGE_BYTES} bytes: not learned", file=sys.stderr)
        return EX_OK
    try:
        entry = submit(read_target(args.config), args.label, args.user, raw)
    except LearnClientError as exc:
        print(f"filterd-learn: {exc}", file=sys.stderr)
        return exc.status
    if not args.quiet:
        print(f"filterd-learn: queued as {args.label} ({entry})")
    return EX_OK


def console() -> None:
    sys.exit(main())


if __name__ == "__main__":
    console()

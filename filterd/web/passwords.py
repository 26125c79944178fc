"""Who may log in to the web console: the password file and its hashes.

One user a line, as Apache's htpasswd and Dovecot's passwd-file::

    USER:HASH
    USER:HASH:example.org,example.net

The third field limits the user to mail for recipients in those domains (a domain admin); without
it the user sees everything.  Lines starting with ``#`` and blank lines are ignored.

HASH is scrypt from the standard library (RFC 7914), written ``$scrypt$ln=15,r=8,p=1$SALT$KEY``
with SALT and KEY in base64: memory-hard (32 MiB each), ~0.1 s here, so a stolen file is slow to
attack; the login rate limit (filterd.web.ratelimit) bounds online guessing.  The parameters
travel with each hash, so they can be raised later without breaking existing entries.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

USER_NAME = re.compile(r"^[A-Za-z0-9._@+-]{1,64}$")
DOMAIN = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+$")
_HASH = re.compile(r"^\$scrypt\$ln=(\d{1,2}),r=(\d{1,2}),p=(\d{1,2})\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)$")
LOG2_N, R, P = 15, 8, 1
_KEY_BYTES = 32


class PasswordFileError(Exception):
    """The password file cannot be read or has a malformed line."""


@dataclass(frozen=True)
class User:
    name: str
    hash: str
    domains: tuple[str, ...] = ()  # empty: every domain

    @property
    def fingerprint(self) -> str:
        """Stored in the session: a new password (or domain list) ends the sessions of the old one."""
        return hashlib.sha256(f"{self.hash}:{','.join(self.domains)}".encode()).hexdigest()[:24]

    def line(self) -> str:
        return ":".join([self.name, self.hash, *([",".join(self.domains)] if self.domains else [])])


def _scrypt(password: str, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
    # maxmem: OpenSSL refuses anything over 32 MiB by default, and n=2**15, r=8 needs exactly that
    return hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt,
        n=2**log2_n,
        r=r,
        p=p,
        maxmem=2 * 128 * r * 2**log2_n + 2**20,
        dklen=_KEY_BYTES,
    )


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    key = _scrypt(password, salt, LOG2_N, R, P)
    return (
        f"$scrypt$ln={LOG2_N},r={R},p={P}${base64.b64encode(salt).decode()}${base64.b64encode(key).decode()}"
    )


def verify_password(password: str, encoded: str) -> bool:
    """Whether `password` matches `encoded`; False for a malformed hash (never an exception)."""
    m = _HASH.fullmatch(encoded)
    if not m:
        return False
    log2_n, r, p = int(m.group(1)), int(m.group(2)), int(m.group(3))
    if not (10 <= log2_n <= 20 and 1 <= r <= 16 and 1 <= p <= 4):
        return False  # a hand-edited line must not make one login take minutes or gigabytes
    salt, key = base64.b64decode(m.group(4)), base64.b64decode(m.group(5))
    return hmac.compare_digest(_scrypt(password, salt, log2_n, r, p), key)


# Checked against for an unknown user name, so a login for a user that does not exist costs as
# much as one for a user that does: the response time does not tell which names exist.
DUMMY_HASH = hash_password(secrets.token_hex(16))


def parse_domains(text: str) -> tuple[str, ...]:
    domains = tuple(d.strip().lower() for d in text.split(",") if d.strip())
    for d in domains:
        if not DOMAIN.fullmatch(d):
            raise ValueError(f"{d!r} is not a domain name")
    return domains


def parse_users(text: str, source: str = "password file") -> dict[str, User]:
    users: dict[str, User] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split(":")
        if len(fields) not in (2, 3) or not USER_NAME.fullmatch(fields[0]) or not _HASH.fullmatch(fields[1]):
            raise PasswordFileError(
                f"{source} line {number}: expected USER:HASH[:DOMAIN,...] (write it with `filterctl web passwd`)"
            )
        try:
            domains = parse_domains(fields[2]) if len(fields) == 3 else ()
        except ValueError as exc:
            raise PasswordFileError(f"{source} line {number}: {exc}") from None
        users[fields[0]] = User(fields[0], fields[1], domains)
    return users


def read_users(path: Path | str) -> dict[str, User]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}  # nobody may log in yet: the login page says how to add a user
    except (OSError, UnicodeDecodeError) as exc:
        raise PasswordFileError(f"cannot read {path}: {exc}") from exc
    return parse_users(text, str(path))


def write_user(path: Path | str, user: User | None, remove: str | None = None) -> None:
    """Add or replace `user` (or remove the user named `remove`) in the file, atomically: a new
    file beside it, fsync'ed, renamed over it.  A new file is mode 0600; an existing one keeps
    its mode and owner (the web console's user must be able to read it)."""
    path = Path(path)
    users = read_users(path)
    if user is not None:
        users[user.name] = user
    if remove is not None and users.pop(remove, None) is None:
        raise PasswordFileError(f"no user {remove!r} in {path}")
    try:
        st: os.stat_result | None = path.stat()
    except FileNotFoundError:
        st = None
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    data = "".join(f"{u.line()}\n" for u in users.values()).encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            if st is not None:
                os.fchmod(f.fileno(), st.st_mode & 0o777)
                with contextlib.suppress(PermissionError):
                    os.fchown(f.fileno(), st.st_uid, st.st_gid)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise

"""What the console's pages share: the `Console` state, the logged-in user, page rendering."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flask import Response, current_app, g, render_template

from filterd.config import Config
from filterd.quarantine.store import QuarantineStore
from filterd.web.passwords import PasswordFileError, User, read_users
from filterd.web.ratelimit import LoginLimiter


@dataclass
class Console:
    """What the pages share: the configuration, the store, the login limiter, the users."""

    config: Config
    store: QuarantineStore
    limiter: LoginLimiter
    _users: tuple[Any, dict[str, User]] | None = field(default=None, repr=False)

    def users(self) -> dict[str, User]:
        """The password file, read again when it changed (a passwd takes effect at once)."""
        path = Path(self.config.web.password_file)
        try:
            st = path.stat()
            stamp: Any = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            stamp = None
        except OSError as exc:
            raise PasswordFileError(f"cannot read {path}: {exc}") from exc
        if self._users is None or self._users[0] != stamp:
            self._users = (stamp, read_users(path) if stamp is not None else {})
        return self._users[1]


def console() -> Console:
    return current_app.extensions["filterd"]


def current_user() -> User:
    return g.user


def page(template: str, status: int = 200, **context: Any) -> Response:
    """A page of the console, with the user (if any) for the navigation bar."""
    return Response(
        render_template(template, user=g.get("user"), **context), status=status, mimetype="text/html"
    )

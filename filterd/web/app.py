"""The web console's Flask application: login, sessions, CSRF, security headers.

Built by `create_app` from the configuration; `filterctl web` serves it with waitress.  The pages
themselves are in filterd.web.quarantine_views, .history and .scanning.

Security, in the order a request meets it:

- every POST carries the session's CSRF token (`csrf_token` in the form) or is refused with 400;
  the session cookie is also SameSite=Strict, so another site cannot even send it;
- every page but the login page (and the stylesheet) needs a session: a signed cookie
  (itsdangerous, the key in ``[web] session_secret_file``), HttpOnly, Secure when
  ``[web] secure_cookies``, that lasts ``session_lifetime`` from the login whatever happens; it
  names the user and a fingerprint of the user's password entry, so a changed password or domain
  list, or a removed user, ends the user's sessions at the next request;
- failed logins are counted per client address (filterd.web.ratelimit);
- every response carries a Content-Security-Policy that allows no script at all, no frame, no
  image but our own, no form target but ours: the console needs no JavaScript, so even markup
  that slipped through the escaping could not run.
"""

from __future__ import annotations

import datetime as dt
import hmac
import secrets
import time
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, Response, current_app, g, redirect, request, session, url_for
from werkzeug.middleware.proxy_fix import ProxyFix

from filterd.config import Config
from filterd.quarantine.store import QuarantineStore
from filterd.web.common import Console, console, page
from filterd.web.passwords import DUMMY_HASH, PasswordFileError, User, verify_password
from filterd.web.ratelimit import LoginLimiter
from filterd.web.rendering import shown, when

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    # pages show mail that may be private: no copy in a shared proxy or the browser's disk cache
    "Cache-Control": "no-store",
}
# Endpoints reachable without a session.
PUBLIC = frozenset({"login", "static"})


def create_app(config: Config, secret_key: bytes) -> Flask:
    w = config.web
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=secret_key,
        # __Host-: the browser takes it only over HTTPS, for this host and path /, never a parent domain
        SESSION_COOKIE_NAME="__Host-filterd" if w.secure_cookies else "filterd",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=w.secure_cookies,
        PERMANENT_SESSION_LIFETIME=dt.timedelta(seconds=w.session_lifetime),
        SESSION_REFRESH_EACH_REQUEST=False,  # the lifetime counts from the login, not the last click
        MAX_CONTENT_LENGTH=w.max_upload_bytes + 64 * 1024,  # the message plus the form's other fields
    )
    if w.behind_proxy:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1, x_host=1)  # type: ignore[method-assign]
    app.extensions["filterd"] = Console(
        config=config,
        store=QuarantineStore(config.quarantine),
        limiter=LoginLimiter(w.login_attempts, w.login_window),
    )
    app.jinja_env.globals["csrf_token"] = csrf_token
    app.jinja_env.filters["shown"] = shown
    app.jinja_env.filters["when"] = when
    app.before_request(_check_csrf)
    app.before_request(_require_login)
    app.after_request(_security_headers)
    app.add_url_rule("/login", "login", login, methods=["GET", "POST"])
    app.add_url_rule("/logout", "logout", logout, methods=["POST"])
    app.add_url_rule("/", "index", lambda: redirect(url_for("quarantine.listing")))

    from filterd.web import graphs, history, quarantine_views, scanning

    app.register_blueprint(quarantine_views.blueprint)
    app.register_blueprint(history.blueprint)
    app.register_blueprint(scanning.blueprint)
    app.register_blueprint(graphs.blueprint)
    app.register_error_handler(PasswordFileError, _password_file_error)
    app.register_error_handler(404, _not_found)
    app.register_error_handler(413, _too_large)
    return app


def csrf_token() -> str:
    token = session.get("csrf")
    if not isinstance(token, str):
        token = session["csrf"] = secrets.token_urlsafe(32)
    return token


def _check_csrf() -> Response | None:
    if request.method != "POST":
        return None
    expected = session.get("csrf")
    given = request.form.get("csrf_token", "")
    if not isinstance(expected, str) or not hmac.compare_digest(expected.encode(), given.encode()):
        return page(
            "error.html",
            400,
            title="Form expired",
            message="The form was refused: its security token is missing or out of date. Go back, "
            "reload the page and try again.",
        )
    return None


def _require_login() -> Response | None:
    if request.endpoint in PUBLIC:
        return None
    user = _session_user()
    if user is None:
        session.pop("user", None)
        target = request.full_path.rstrip("?") if request.method == "GET" else url_for("index")
        return redirect(url_for("login", next=target))  # type: ignore[return-value]
    g.user = user
    return None


def _session_user() -> User | None:
    name, fingerprint, login_at = session.get("user"), session.get("fingerprint"), session.get("login_at")
    if not isinstance(name, str) or not isinstance(login_at, int | float):
        return None
    if time.time() - login_at > console().config.web.session_lifetime:
        return None
    user = console().users().get(name)
    if user is None or not isinstance(fingerprint, str):
        return None
    return user if hmac.compare_digest(user.fingerprint, fingerprint) else None


def _security_headers(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def _password_file_error(exc: PasswordFileError) -> Response:
    current_app.logger.error("%s", exc)
    return page("error.html", 500, title="Password file unreadable", message=str(exc))


def _not_found(_exc: Exception) -> Response:
    return page("error.html", 404, title="Not found", message="There is no such page or message.")


def _too_large(_exc: Exception) -> Response:
    limit = console().config.web.max_upload_bytes
    return page("error.html", 413, title="Too large", message=f"The form is over the limit ({limit} bytes).")


def _safe_next(target: str | None) -> str:
    """Where to go after the login: a path on this site only -- never //evil.test, https://...,
    or /\\evil.test (browsers read a backslash as a slash there)."""
    if not target:
        return url_for("index")
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target[1:2] in ("/", "\\"):
        return url_for("index")
    if any(c == "\\" or ord(c) < 0x20 or ord(c) == 0x7F for c in target):
        return url_for("index")
    return target


def login() -> Any:
    c = console()
    error = None
    status = 200
    if request.method == "POST":
        address = request.remote_addr or "unknown"
        wait = c.limiter.retry_after(address)
        if wait > 0:
            response = page(
                "login.html",
                429,
                error=f"Too many failed logins from {address}. Try again in {int(wait) + 1} seconds.",
                next=request.form.get("next", ""),
            )
            response.headers["Retry-After"] = str(int(wait) + 1)
            return response
        name = request.form.get("username", "")
        password = request.form.get("password", "")
        user = c.users().get(name)
        c.limiter.failed(address)  # until proven otherwise (filterd.web.ratelimit)
        # an unknown name costs the same scrypt as a known one: the timing tells no names
        matches = verify_password(password, user.hash if user else DUMMY_HASH)
        if matches and user is not None:
            c.limiter.forgive(address)
            session.clear()
            session.permanent = True
            session.update(
                user=user.name,
                fingerprint=user.fingerprint,
                login_at=time.time(),
                csrf=secrets.token_urlsafe(32),  # a new token: one seen before the login is worthless
            )
            current_app.logger.info("web login: %s from %s", user.name, address)
            return redirect(_safe_next(request.form.get("next")), code=303)
        current_app.logger.warning("web login failed: %r from %s", name[:64], address)
        error, status = "Wrong user name or password.", 401
    return page(
        "login.html",
        status,
        error=error,
        next=request.form.get("next", "") if request.method == "POST" else request.args.get("next", ""),
        no_users=not c.users(),
        password_file=c.config.web.password_file,
    )


def logout() -> Any:
    session.clear()
    return redirect(url_for("login"), code=303)

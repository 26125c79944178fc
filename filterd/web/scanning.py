"""The scan page: a pasted or uploaded message through the pipeline, as `filterctl scan` does.

The same driver scan (`filterd.driver.scan`) on the same offline configuration
(`filterd.cli.scan_cmd.offline`: no Bayes signatures, never touching Redis for them).  The
pipeline is built at the first scan and kept; scans take turns on it (a lock), as the messages
of one milter worker do.
"""

from __future__ import annotations

import threading
from typing import Any

from flask import Blueprint, current_app, request

from filterd.cli.scan_cmd import offline
from filterd.config import Config
from filterd.driver import SmtpContext
from filterd.driver import scan as scan_message
from filterd.pipeline import Pipeline
from filterd.settings import ConfigError
from filterd.web.common import console, page
from filterd.web.rendering import shown

blueprint = Blueprint("scan", __name__, url_prefix="/scan")


class Scanner:
    def __init__(self, config: Config) -> None:
        self._config = offline(config)
        self._pipeline: Pipeline | None = None
        self._lock = threading.Lock()

    def scan(self, raw: bytes, context: SmtpContext) -> Any:
        with self._lock:
            if self._pipeline is None:
                self._pipeline = Pipeline.from_config(self._config)
            return scan_message(self._pipeline, raw, context)


def scanner() -> Scanner:
    extensions = current_app.extensions
    with _create_lock:
        if "filterd.scanner" not in extensions:
            extensions["filterd.scanner"] = Scanner(console().config)
    return extensions["filterd.scanner"]


_create_lock = threading.Lock()


def _field(name: str, limit: int = 320) -> str | None:
    return request.form.get(name, "").strip()[:limit] or None


@blueprint.route("", methods=["GET", "POST"])
def scan() -> Any:
    if request.method == "GET":
        return page("scan.html", result=None, form={})
    upload = request.files.get("upload")
    raw = upload.read() if upload is not None and upload.filename else b""
    if not raw:
        raw = request.form.get("message", "").encode("utf-8", "surrogateescape")
    limit = console().config.web.max_upload_bytes
    if not raw.strip():
        return page(
            "scan.html", 400, result=None, error="Paste a message or choose a file.", form=request.form
        )
    if len(raw) > limit:
        return page(
            "scan.html", 413, result=None, error=f"The message is over {limit} bytes.", form=request.form
        )
    rcpts = tuple(r for r in (_field("rcpt") or "").replace(",", " ").split() if r)
    context = SmtpContext(
        client_addr=_field("client_ip", 64),
        helo=_field("helo", 255),
        mail_from=_field("mail_from"),
        rcpts=rcpts,
    )
    try:
        tx, verdict = scanner().scan(raw, context)
    except ConfigError as exc:
        return page(
            "scan.html", 500, result=None, error=shown(f"the pipeline cannot be built: {exc}"), form={}
        )
    result = {
        "score": verdict.score,
        "required": verdict.required,
        "action": verdict.action.value,
        "symbols": [(s.name, s.score, shown(s.reason)) for s in verdict.symbols],
        "refused": [(shown(r), shown(d.reply)) for r, d in tx.refused],
        "size": len(raw),
    }
    return page("scan.html", result=result, form=request.form)

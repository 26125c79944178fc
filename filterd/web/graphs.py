"""The graphs page: `filterctl stats graph` in the browser, with the totals as a table.

The picture is drawn by the same code as `filterctl stats graph` (filterd.cli.stats_cmd.plot,
matplotlib) from the same counters (filterd.stats.read_buckets); the page gives the totals in
words too, so nothing is said by the picture's colours alone.  The counters are the whole site's,
so a domain admin (a user limited to some domains) is not shown them.
"""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, abort, request

from filterd.cli.stats_cmd import GRAPH_PERIODS, plot
from filterd.services import Services
from filterd.stats import COUNTERS, Bucket, read_buckets, totals
from filterd.web.common import console, current_user, page

blueprint = Blueprint("graphs", __name__, url_prefix="/graphs")

# matplotlib keeps caches (fonts, text layout) shared by every figure: one drawing at a time
_drawing = threading.Lock()


def _buckets(period: str) -> list[Bucket]:
    c = console()
    bucket_period, count = GRAPH_PERIODS[period]
    services = Services(c.config)
    try:
        return read_buckets(services.redis, c.config.redis.key_prefix, bucket_period, count)
    finally:
        services.close()


def _site_wide_only() -> Response | None:
    if current_user().domains:
        return page(
            "error.html",
            403,
            title="Not for domain admins",
            message="The graphs count the mail of every domain: ask an administrator.",
        )
    return None


@blueprint.get("")
def overview() -> Any:
    refused = _site_wide_only()
    if refused is not None:
        return refused
    period = request.args.get("period", "day")
    if period not in GRAPH_PERIODS:
        period = "day"
    error, total = None, None
    try:
        import matplotlib  # noqa: F401  (the picture needs it; the totals do not)

        drawable = True
    except ImportError:
        drawable = False
    try:
        total = totals(_buckets(period))
    except Exception as exc:  # any Redis failure: the page says so
        error = f"Redis at {console().config.redis.url} cannot be read: {type(exc).__name__}: {exc}"
    return page(
        "graphs.html",
        period=period,
        periods=list(GRAPH_PERIODS),
        bucket=GRAPH_PERIODS[period][0],
        totals=total,
        counters=COUNTERS,
        error=error,
        drawable=drawable,
    )


@blueprint.get("/<period>.png")
def picture(period: str) -> Any:
    if current_user().domains or period not in GRAPH_PERIODS:
        abort(404)
    try:
        buckets = _buckets(period)
    except Exception:
        abort(503)
    with _drawing, tempfile.TemporaryDirectory(prefix="filterd-graph-") as tmp:
        path = Path(tmp) / "graph.png"
        plot(buckets, GRAPH_PERIODS[period][0], path, f"filterd: the last {period}")
        data = path.read_bytes()
    return Response(data, mimetype="image/png")

"""``GET /console``: the operator console, a static web app served by the API process itself.

The app (``console_assets/``: HTML, CSS, ES modules, and uPlot vendored under
``vendor/``) is read into memory when the routes are set up and served from
this origin only. It talks to the public HTTP API and the SSE stream with the
credentials typed into its form (or given as ``#token=`` in the URL fragment),
kept in the tab's ``sessionStorage``; nothing of it needs a server session.

Every answer carries a Content-Security-Policy that lets the page load and
connect to this origin alone (no inline script, no frames around it), and an
``ETag`` (see :mod:`api.static`, which serves the API reference at ``/docs`` alike).
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from api.openapi import Operation, Param, Reply, register
from api.static import SAME_ORIGIN_POLICY, StaticSite

ASSETS = Path(__file__).with_name("console_assets")
_PATH = "/console"

CONTENT_SECURITY_POLICY = SAME_ORIGIN_POLICY
SITE = StaticSite(_PATH, ASSETS, CONTENT_SECURITY_POLICY)

register(
    Operation(
        "GET", _PATH, "The operator console (a web page)", "console", secured=False,
        description="A single-page app using this API and its SSE stream; sign in with a "
        "bearer token or an API key, or open `/console#token=<jwt>`.",
        replies=(
            Reply(200, "the console's page", content_type="text/html",
                  schema={"type": "string"}),
            Reply(304, "not modified: If-None-Match matches"),
        ),
    ),
    Operation(
        "GET", _PATH + "/{path}", "A file of the operator console", "console", secured=False,
        params=(Param("path", "path", {"type": "string"}, "e.g. `app.js`, `vendor/uPlot.esm.js`"),),
        replies=(
            Reply(200, "the file (JavaScript, CSS, …)", content_type="*/*",
                  schema={"type": "string"}),
            Reply(304, "not modified: If-None-Match matches"),
        ),
        errors=(404,),
    ),
)  # fmt: skip


def setup(app: web.Application) -> None:
    """Register ``/console`` and its files."""
    SITE.setup(app)

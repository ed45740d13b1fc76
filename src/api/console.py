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

from api.static import SAME_ORIGIN_POLICY, StaticSite

ASSETS = Path(__file__).with_name("console_assets")
CONTENT_SECURITY_POLICY = SAME_ORIGIN_POLICY
SITE = StaticSite(
    "/console",
    ASSETS,
    CONTENT_SECURITY_POLICY,
    title="The operator console",
    tag="console",
    description="A single-page app using this API and its SSE stream; sign in with a "
    "bearer token or an API key, or open `/console#token=<jwt>`.",
    example_files="e.g. `app.js`, `vendor/uPlot.esm.js`",
)
SITE.register_operations()


def setup(app: web.Application) -> None:
    """Register ``/console`` and its files."""
    SITE.setup(app)

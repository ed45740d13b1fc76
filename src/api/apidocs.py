"""``GET /docs``: the interactive API reference, from this process's ``/openapi.json``.

Swagger UI (``apidocs_assets/vendor/``, version and licence in ``VENDORED.md``) is
served by the API process itself, like the console (:mod:`api.static`): every file
from this origin, nothing from a CDN, and a Content-Security-Policy that allows this
origin only. It reads the document of the routes this process serves; "Try it
out" sends real requests to this same origin with the credentials given to its
"Authorize" dialog, which are kept in the page only.

The policy is the console's: this origin only, no inline script or style
(Swagger UI sets its styles through the DOM, which the policy allows).
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from api.static import SAME_ORIGIN_POLICY, StaticSite

ASSETS = Path(__file__).with_name("apidocs_assets")
CONTENT_SECURITY_POLICY = SAME_ORIGIN_POLICY
SITE = StaticSite(
    "/docs",
    ASSETS,
    CONTENT_SECURITY_POLICY,
    title="The interactive API reference",
    tag="docs",
    description="Swagger UI over `/openapi.json`, served from this origin.",
    example_files="e.g. `init.js`, `vendor/swagger-ui-bundle.js`",
)
SITE.register_operations()


def setup(app: web.Application) -> None:
    """Register ``/docs`` and its files."""
    SITE.setup(app)

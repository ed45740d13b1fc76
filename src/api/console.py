"""``GET /console``: the operator console, a static web app served by the API process itself.

The app (``console_assets/``: HTML, CSS, ES modules, and uPlot vendored under
``vendor/``) is read into memory when the routes are set up and served from
this origin only. It talks to the public HTTP API and the SSE stream with the
credentials typed into its form (or given as ``#token=`` in the URL fragment),
kept in the tab's ``sessionStorage``; nothing of it needs a server session.

Every answer carries a Content-Security-Policy that lets the page load and
connect to this origin alone (no inline script, no frames around it), and an
``ETag``: the browser revalidates (``Cache-Control: no-cache``) and gets a 304
while the file is unchanged, so a new release shows at the next load.
"""

from __future__ import annotations

import hashlib
import mimetypes
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from eventfold.errors import NotFound
from eventfold.openapi import Operation, Param, Reply, register

ASSETS = Path(__file__).with_name("console_assets")
_PATH = "/console"

#: Only this origin, for everything; no inline script or style, no plugins, no framing.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}
_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".md": "text/markdown",
}


@dataclass(frozen=True, slots=True)
class Asset:
    """One file of the console, as served."""

    body: bytes
    content_type: str
    etag: str


def load_assets(root: Path = ASSETS) -> dict[str, Asset]:
    """Every file under ``root`` by its path relative to it (``vendor/uPlot.esm.js``)."""
    out: dict[str, Asset] = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        body = path.read_bytes()
        kind = _TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0]
        out[path.relative_to(root).as_posix()] = Asset(
            body=body,
            content_type=kind or "application/octet-stream",
            etag='"' + hashlib.sha256(body).hexdigest()[:20] + '"',
        )
    return out


_ASSETS = web.AppKey("console_assets", dict[str, Asset])

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
    app[_ASSETS] = load_assets()
    app.router.add_get(_PATH, console_page)
    app.router.add_get(_PATH + "/{path:.+}", console_file)


def _serve(request: web.Request, name: str) -> web.Response:
    asset = request.app[_ASSETS].get(name)
    if asset is None:
        raise NotFound(f"the console has no file {name[:128]}")
    headers = {**_HEADERS, "ETag": asset.etag}
    match = request.headers.get("If-None-Match", "")
    if asset.etag in (tag.strip() for tag in match.split(",")):
        return web.Response(status=304, headers=headers)
    return web.Response(body=asset.body, content_type=asset.content_type, headers=headers)


async def console_page(request: web.Request) -> web.Response:
    """The console's HTML page (``/console``)."""
    return _serve(request, "index.html")


async def console_file(request: web.Request) -> web.Response:
    """``/console/{path}``: one of the console's files, or 404."""
    return _serve(request, request.match_info["path"])

"""Static pages the API process serves itself: the console and the API reference.

A folder of files is read into memory when the routes are set up and served from
this origin only, each answer with the folder's Content-Security-Policy and an
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

#: Only this origin, for everything; no inline script or style, no plugins, no framing.
SAME_ORIGIN_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".md": "text/markdown",
    ".txt": "text/plain",
    ".LICENSE": "text/plain",
    ".NOTICE": "text/plain",
}


@dataclass(frozen=True, slots=True)
class Asset:
    """One file, as served."""

    body: bytes
    content_type: str
    etag: str


def load_assets(root: Path) -> dict[str, Asset]:
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


@dataclass(frozen=True, slots=True)
class StaticSite:
    """A folder of files served under one path, with one Content-Security-Policy."""

    #: The URL path of the page (``/console``); files are under ``<path>/``.
    path: str
    root: Path
    content_security_policy: str
    #: What the OpenAPI document says: the page's name, its tag, a description, and
    #: an example of its files' paths.
    title: str
    tag: str
    description: str
    example_files: str

    def register_operations(self) -> None:
        """Describe the page and its files in the OpenAPI document (public, no credentials)."""
        register(
            Operation(
                "GET", self.path, f"{self.title} (a web page)", self.tag, secured=False,
                description=self.description,
                replies=(
                    Reply(200, "the page", content_type="text/html", schema={"type": "string"}),
                    Reply(304, "not modified: If-None-Match matches"),
                ),
            ),
            Operation(
                "GET", self.path + "/{path}", f"A file of {self.title[:1].lower()}{self.title[1:]}",
                self.tag, secured=False,
                params=(Param("path", "path", {"type": "string"}, self.example_files),),
                replies=(
                    Reply(200, "the file (JavaScript, CSS, …)", content_type="*/*",
                          schema={"type": "string"}),
                    Reply(304, "not modified: If-None-Match matches"),
                ),
                errors=(404,),
            ),
        )  # fmt: skip

    def headers(self) -> dict[str, str]:
        """The headers of every answer: this origin only, never framed, revalidated."""
        return {
            "Content-Security-Policy": self.content_security_policy,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "X-Frame-Options": "DENY",
            "Cache-Control": "no-cache",
        }

    def setup(self, app: web.Application) -> None:
        """Register the page (its ``index.html``) and its files, read into memory now."""
        assets = load_assets(self.root)
        headers = self.headers()

        def serve(request: web.Request, name: str) -> web.Response:
            asset = assets.get(name)
            if asset is None:
                raise NotFound(f"{self.path} has no file {name[:128]}")
            answer = {**headers, "ETag": asset.etag}
            match = request.headers.get("If-None-Match", "")
            if asset.etag in (tag.strip() for tag in match.split(",")):
                return web.Response(status=304, headers=answer)
            return web.Response(body=asset.body, content_type=asset.content_type, headers=answer)

        async def page(request: web.Request) -> web.Response:
            return serve(request, "index.html")

        async def file(request: web.Request) -> web.Response:
            return serve(request, request.match_info["path"])

        app.router.add_get(self.path, page)
        app.router.add_get(self.path + "/{path:.+}", file)

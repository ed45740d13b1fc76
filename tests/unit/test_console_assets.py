"""The console's files: every reference between them resolves, nothing points elsewhere."""

from __future__ import annotations

import posixpath
import re

from api.console import ASSETS
from api.static import load_assets

_HTML_REFS = re.compile(r'(?:src|href)="([^"#]+)"')
_JS_IMPORTS = re.compile(r'^import [^;]*? from "([^"]+)";', re.MULTILINE)


def test_every_file_the_page_and_its_modules_name_is_served() -> None:
    assets = load_assets(ASSETS)
    assert {"index.html", "js/app.js", "vendor/uPlot.esm.js", "vendor/VENDORED.md"} <= set(assets)
    html = assets["index.html"].body.decode()
    for ref in _HTML_REFS.findall(html):
        if ref == "/docs":  # the API reference, served by the same process (api.apidocs)
            continue
        assert ref.startswith("/console/"), ref
        assert ref.removeprefix("/console/") in assets, ref
    for name, asset in assets.items():
        if not name.endswith(".js") or name.startswith("vendor/"):
            continue
        for target in _JS_IMPORTS.findall(asset.body.decode()):
            resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
            assert resolved in assets, f"{name} imports {target}"


def test_no_other_origin_is_named_in_the_console_code() -> None:
    for name, asset in load_assets(ASSETS).items():
        if name.startswith("vendor/") or not name.endswith((".js", ".html", ".css")):
            continue
        text = asset.body.decode()
        assert "http://" not in text, name
        assert "https://" not in text, name
        assert "innerHTML" not in text, name  # text nodes only: nothing the API says is markup


def test_assets_have_types_and_content_etags() -> None:
    assets = load_assets(ASSETS)
    assert assets["index.html"].content_type == "text/html"
    assert assets["js/app.js"].content_type == "text/javascript"
    assert assets["console.css"].content_type == "text/css"
    assert len({a.etag for a in assets.values()}) == len(assets)

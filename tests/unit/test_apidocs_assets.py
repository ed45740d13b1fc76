"""The API reference's files (/docs): vendored as VENDORED.md says, nothing from elsewhere."""

from __future__ import annotations

import hashlib
import re

from api.apidocs import ASSETS, CONTENT_SECURITY_POLICY
from api.console import CONTENT_SECURITY_POLICY as CONSOLE_POLICY
from api.static import load_assets

_HTML_REFS = re.compile(r'(?:src|href)="([^"#]+)"')


def test_the_vendored_files_are_the_ones_vendored_md_names() -> None:
    notes = (ASSETS / "vendor" / "VENDORED.md").read_text()
    for name in ("swagger-ui-bundle.js", "swagger-ui.css"):
        digest = hashlib.sha256((ASSETS / "vendor" / name).read_bytes()).hexdigest()
        assert f"of `{name}`:\n`{digest}`" in notes or f"`{digest}`" in notes, name
    version = re.search(r"swagger-ui-dist \| (\d+\.\d+\.\d+)", notes)
    assert version, "VENDORED.md names the version"
    for licence in ("swagger-ui.LICENSE", "swagger-ui.NOTICE", "swagger-ui-bundle.js.LICENSE.txt"):
        assert (ASSETS / "vendor" / licence).stat().st_size > 0, licence
    assert "Apache License" in (ASSETS / "vendor" / "swagger-ui.LICENSE").read_text()


def test_the_page_names_only_its_own_files_and_this_servers_document() -> None:
    assets = load_assets(ASSETS)
    html = assets["index.html"].body.decode()
    refs = _HTML_REFS.findall(html)
    assert "/docs/vendor/swagger-ui-bundle.js" in refs
    assert "/docs/init.js" in refs
    for ref in refs:
        if ref.startswith("/docs/"):
            assert ref.removeprefix("/docs/") in assets, ref
        else:
            assert ref in ("/console", "/openapi.json"), ref
    for name in ("index.html", "init.js", "apidocs.css"):
        text = assets[name].body.decode()
        assert "http://" not in text, name
        assert "https://" not in text, name
    init = assets["init.js"].body.decode()
    assert 'url: "/openapi.json"' in init
    # Swagger UI's one call to another host: the validator badge.
    assert "validatorUrl: null" in init


def test_the_policy_is_the_consoles() -> None:
    assert CONTENT_SECURITY_POLICY == CONSOLE_POLICY
    assert "default-src 'self'" in CONTENT_SECURITY_POLICY
    assert "unsafe-inline" not in CONTENT_SECURITY_POLICY


def test_the_console_links_to_the_api_reference() -> None:
    from api.console import ASSETS as CONSOLE

    assert 'href="/docs"' in (CONSOLE / "index.html").read_text()

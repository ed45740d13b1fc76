"""The API reference at ``/docs``: served like the console, rendered in a real browser.

Swagger UI must show every operation of this process's ``/openapi.json`` without a
console error, a request to another origin, or a warning about the document; the
browser fixtures and checks are the console's (``test_console.py``).
"""

from __future__ import annotations

from playwright.async_api import expect

from api.apidocs import CONTENT_SECURITY_POLICY
from tests.integration.conftest import Api
from tests.integration.test_console import (  # noqa: F401 - the fixtures
    WAIT_MS,
    Console,
    browser,
    console,
)


async def test_the_reference_is_served_from_this_origin_and_revalidated(api: Api) -> None:
    page = await api.client.get("/docs")
    assert page.status == 200
    assert page.content_type == "text/html"
    assert page.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert page.headers["X-Frame-Options"] == "DENY"
    html = await page.text()
    assert '<script src="/docs/vendor/swagger-ui-bundle.js" defer></script>' in html
    assert "http://" not in html
    assert "https://" not in html

    bundle = await api.client.get("/docs/vendor/swagger-ui-bundle.js")
    assert bundle.status == 200
    assert bundle.content_type == "text/javascript"
    again = await api.client.get(
        "/docs/vendor/swagger-ui-bundle.js", headers={"If-None-Match": bundle.headers["ETag"]}
    )
    assert again.status == 304
    licence = await api.client.get("/docs/vendor/swagger-ui.LICENSE")
    assert licence.status == 200
    assert "Apache License" in await licence.text()
    for missing in ("/docs/nope.js", "/docs/../pyproject.toml"):
        resp = await api.client.get(missing)
        assert resp.status == 404, missing
        assert resp.content_type == "application/problem+json"


async def test_every_operation_of_the_document_renders_without_a_warning(
    console: Console,  # noqa: F811 - the imported fixture
    api: Api,
) -> None:
    document = await (await api.client.get("/openapi.json")).json()
    operations = sum(len(methods) for methods in document["paths"].values())
    assert operations > 20
    page, log = await console.page()
    await page.goto(f"{console.base}/docs")
    await expect(page.locator(".opblock")).to_have_count(operations, timeout=WAIT_MS)
    await expect(page.locator(".info .title")).to_contain_text(document["info"]["title"])
    # Swagger UI puts what it cannot read of the document (a dialect, a bad $ref) here.
    await expect(page.locator(".errors-wrapper")).to_have_count(0)
    # An operation opens with its parameters and answers, and "Try it out" is there.
    tenants = page.locator(".opblock-post", has_text="/v1/tenants").first
    await tenants.locator(".opblock-summary").click()
    await expect(tenants.locator(".responses-wrapper")).to_be_visible()
    await expect(tenants.get_by_role("button", name="Try it out")).to_be_visible()
    assert any(url.endswith("/openapi.json") for url in log.requests)


async def test_the_console_links_to_the_reference(
    console: Console,  # noqa: F811 - the imported fixture
) -> None:
    page, _ = await console.page()
    await page.goto(f"{console.base}/console")
    await page.get_by_role("link", name="API reference").click()
    await expect(page).to_have_url(f"{console.base}/docs")
    await expect(page.locator(".opblock").first).to_be_visible(timeout=WAIT_MS)

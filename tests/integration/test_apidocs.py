"""The API reference at ``/docs``: served like the console, rendered in a real browser.

Swagger UI must show every operation of this process's ``/openapi.json`` (method, path
and summary, as the page renders them) without a console error, a request to another
origin, or a warning about the document; "Try it out" must ask this origin, and the
console and the reference must link to each other. The browser fixtures and checks
are the console's (``test_console.py``).
"""

from __future__ import annotations

from playwright.async_api import expect

from api.apidocs import CONTENT_SECURITY_POLICY
from tests.integration.conftest import Api
from tests.integration.test_console import (  # noqa: F401 - the fixtures
    WAIT_MS,
    BrowserLog,
    Console,
    browser,
    console,
)


def elsewhere(log: BrowserLog) -> list[str]:
    """The requests the page made to any origin but the server's (the test wants none)."""
    return [url for url in log.requests if not url.startswith(log.origin + "/")]


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
    wanted = {
        (method.upper(), path, op["summary"])
        for path, methods in document["paths"].items()
        for method, op in methods.items()
    }
    assert len(wanted) > 20
    assert ("POST", "/v1/tenants", "Create a tenant (platform-admin)") in wanted
    page, log = await console.page()
    await page.goto(f"{console.base}/docs")
    await expect(page.locator(".opblock")).to_have_count(len(wanted), timeout=WAIT_MS)
    await expect(page.locator(".info .title")).to_contain_text(document["info"]["title"])
    # Every operation of the document, as the page shows it: method, path and summary.
    rendered = await page.locator(".opblock").evaluate_all(
        """blocks => blocks.map(b => [
            b.querySelector('.opblock-summary-method').textContent.trim(),
            b.querySelector('[data-path]').getAttribute('data-path'),
            b.querySelector('.opblock-summary-description').textContent.trim(),
        ])"""
    )
    assert {tuple(row) for row in rendered} == wanted
    # Swagger UI puts what it cannot read of the document (a dialect, a bad $ref) here.
    await expect(page.locator(".errors-wrapper")).to_have_count(0)
    # An operation opens with its parameters and answers, and "Try it out" is there.
    tenants = page.locator(".opblock-post", has_text="/v1/tenants").first
    await tenants.locator(".opblock-summary").click()
    await expect(tenants.locator(".responses-wrapper")).to_be_visible()
    await expect(tenants.get_by_role("button", name="Try it out")).to_be_visible()
    # The page, its files and the document, all from this origin and nothing else.
    paths = {url.removeprefix(console.base) for url in log.requests}
    assert {
        "/docs",
        "/docs/vendor/swagger-ui-bundle.js",
        "/docs/vendor/swagger-ui.css",
        "/docs/init.js",
        "/openapi.json",
    } <= paths
    assert elsewhere(log) == []


async def test_try_it_out_asks_this_origin(
    console: Console,  # noqa: F811 - the imported fixture
) -> None:
    page, log = await console.page()
    await page.goto(f"{console.base}/docs")
    live = page.locator(".opblock-get", has=page.locator('[data-path="/health/live"]'))
    await live.locator(".opblock-summary").click()
    await live.get_by_role("button", name="Try it out").click()
    await live.get_by_role("button", name="Execute").click()
    answer = live.locator(".live-responses-table .response")
    await expect(answer.locator(".response-col_status")).to_have_text("200", timeout=WAIT_MS)
    # The request URL the page shows, and the one the browser sent, are this origin's.
    await expect(live.locator(".request-url")).to_contain_text(f"{console.base}/health/live")
    assert f"{console.base}/health/live" in log.requests
    assert elsewhere(log) == []


async def test_the_console_links_to_the_reference(
    console: Console,  # noqa: F811 - the imported fixture
) -> None:
    page, log = await console.page()
    await page.goto(f"{console.base}/console")
    await page.get_by_role("link", name="API reference").click()
    await expect(page).to_have_url(f"{console.base}/docs")
    await expect(page.locator('.opblock [data-path="/v1/tenants"]').first).to_be_visible(
        timeout=WAIT_MS
    )
    # And back: the reference's header links to the console.
    await page.get_by_role("link", name="Console", exact=True).click()
    await expect(page).to_have_url(f"{console.base}/console")
    assert elsewhere(log) == []

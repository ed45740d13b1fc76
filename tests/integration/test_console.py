"""The operator console in a real browser: Debian's chromium driven by Playwright.

The session's app (API, ingest and processors, in-process) serves ``/console`` on a
local port; each test signs in, works through a view and fails on any console
error, page error, failed request, answer of 400 or more the test did not expect,
or request to another origin. With ``EVENTFOLD_SCREENSHOTS=1`` the tests write the
README's screenshots to ``docs/screenshots/``.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from playwright.async_api import (
    Browser,
    ConsoleMessage,
    Page,
    Request,
    Response,
    async_playwright,
    expect,
)

from api.console import CONTENT_SECURITY_POLICY
from tests.integration.conftest import Api, TenantApi
from tests.integration.test_analytics import Lane, lane  # noqa: F401 - the fixture
from tests.integration.test_apikeys import create_key
from tests.integration.test_dead_letters import install_bug
from tests.integration.test_webhooks import Receiver

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
R = "/collections/orders/records"
MERGE = {"Content-Type": "application/merge-patch+json"}
#: Playwright's assertions wait this long (ms) for the page to get there.
WAIT_MS = 15_000


@dataclass
class BrowserLog:
    """What went wrong in the page; the test ends by asserting it is empty."""

    origin: str
    secret: str = ""
    problems: list[str] = field(default_factory=list)
    #: (status, path fragment) answers the test provokes on purpose.
    expected: list[tuple[int, str]] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def expect(self, status: int, fragment: str) -> None:
        self.expected.append((status, fragment))

    def _expected(self, status: int, url: str) -> bool:
        return any(status == s and fragment in url for s, fragment in self.expected)

    def attach(self, page: Page) -> None:
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.problems.append(f"page error: {exc}"))
        page.on("request", self._request)
        page.on("requestfailed", self._failed)
        page.on("response", self._response)

    def _console(self, msg: ConsoleMessage) -> None:
        if msg.type not in ("error", "warning"):
            return
        url = msg.location.get("url", "") if msg.location else ""
        # Chromium logs every answer >= 400 as "Failed to load resource": fine when expected.
        if "Failed to load resource" in msg.text and any(
            f"status of {s}" in msg.text and fragment in url for s, fragment in self.expected
        ):
            return
        self.problems.append(f"console {msg.type}: {msg.text} ({url})")

    def _request(self, request: Request) -> None:
        self.requests.append(request.url)
        if not request.url.startswith(self.origin + "/"):
            self.problems.append(f"request to another origin: {request.url}")
        if self.secret and self.secret in request.url:
            self.problems.append(f"credentials in a URL: {request.url[:80]}")

    def _failed(self, request: Request) -> None:
        # The console aborts its own SSE stream when it switches tenant or signs out.
        if "/stream" in request.url and request.failure == "net::ERR_ABORTED":
            return
        self.problems.append(f"request failed: {request.url} {request.failure}")

    def _response(self, response: Response) -> None:
        if response.status >= 400 and not self._expected(response.status, response.url):
            self.problems.append(f"HTTP {response.status}: {response.url}")

    def check(self) -> None:
        assert self.problems == [], "\n".join(self.problems)


@dataclass
class Console:
    """Opens pages of the console served by the session's app."""

    api: Api
    browser: Browser
    base: str
    opened: list[tuple[Any, BrowserLog]] = field(default_factory=list)

    async def page(
        self, *, width: int = 1280, height: int = 800, scheme: str = "light"
    ) -> tuple[Page, BrowserLog]:
        context = await self.browser.new_context(
            viewport={"width": width, "height": height},
            color_scheme=scheme,  # type: ignore[arg-type]
            timezone_id="UTC",
            locale="en-GB",
        )
        page = await context.new_page()
        log = BrowserLog(self.base)
        log.attach(page)
        self.opened.append((context, log))
        return page, log

    async def signed_in(self, token: str, route: str = "", **kw: Any) -> tuple[Page, BrowserLog]:
        """A page signed in with ``#token=`` (then at ``#route``, when given)."""
        page, log = await self.page(**kw)
        log.secret = token
        await page.goto(f"{self.base}/console#token={token}")
        await expect(page.locator("#view-title")).to_be_visible(timeout=WAIT_MS)
        if route:
            await page.evaluate("route => { window.location.hash = route; }", route)
        return page, log

    async def close(self) -> None:
        for context, log in self.opened:
            try:
                log.check()
            finally:
                await context.close()


async def shot(page: Page, name: str) -> None:
    """Write ``docs/screenshots/<name>.png`` when ``EVENTFOLD_SCREENSHOTS=1``."""
    if os.environ.get("EVENTFOLD_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=False)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def browser() -> AsyncIterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"{CHROMIUM} is missing: `apt-get install chromium` (`make test` does it)",
            pytrace=False,
        )
    async with async_playwright() as pw:
        launched = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


@pytest_asyncio.fixture(loop_scope="session")
async def console(api: Api, browser: Browser) -> AsyncIterator[Console]:
    base = str(api.client.make_url("")).rstrip("/")
    c = Console(api, browser, base)
    try:
        yield c
    finally:
        await c.close()


def admin_token(tenant: TenantApi) -> str:
    return tenant.api.token(tenant.id, "admin")


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 30) -> None:
    """Wait until ``check()`` is true (fails after ``within`` seconds)."""
    async with asyncio.timeout(within):
        while not await check():
            await asyncio.sleep(0.2)


# --- serving -------------------------------------------------------------------------


async def test_console_is_served_with_a_same_origin_policy_and_revalidated(api: Api) -> None:
    page = await api.client.get("/console")
    assert page.status == 200
    assert page.content_type == "text/html"
    assert page.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert "default-src 'self'" in CONTENT_SECURITY_POLICY
    assert "connect-src 'self'" in CONTENT_SECURITY_POLICY
    assert "frame-ancestors 'none'" in CONTENT_SECURITY_POLICY
    assert "unsafe-inline" not in CONTENT_SECURITY_POLICY
    assert page.headers["Cache-Control"] == "no-cache"
    html = await page.text()
    assert '<script type="module" src="/console/js/app.js">' in html
    assert "http://" not in html  # nothing from elsewhere
    assert "https://" not in html

    script = await api.client.get("/console/js/app.js")
    assert script.status == 200
    assert script.content_type == "text/javascript"
    etag = script.headers["ETag"]
    again = await api.client.get("/console/js/app.js", headers={"If-None-Match": etag})
    assert again.status == 304
    assert again.headers["ETag"] == etag
    chart = await api.client.get("/console/vendor/uPlot.esm.js")
    assert chart.status == 200
    assert "v1.6.32" in await chart.text()

    for missing in ("/console/nope.js", "/console/../pyproject.toml", "/console/%2e%2e/app.py"):
        resp = await api.client.get(missing)
        assert resp.status == 404, missing
        assert resp.content_type == "application/problem+json"


# --- sign-in and the live overview ---------------------------------------------------


async def test_fragment_sign_in_opens_the_tenant_and_a_write_appears_live(
    console: Console, tenant: TenantApi
) -> None:
    first = await tenant.write("PUT", f"{R}/o1", json={"total": 10})
    await tenant.read_json(f"{R}/o1", first["consistency_token"])
    token = admin_token(tenant)

    page, log = await console.signed_in(token)
    # The token left the address bar at once and lives in this tab's storage only.
    assert "token" not in page.url
    assert page.url.endswith("/console#/t/" + tenant.id + "/overview")
    assert await page.evaluate("sessionStorage.getItem('eventfold.console.credential')") == token
    await expect(page.locator("#view-title")).to_have_text("Overview")
    await expect(page.locator("#context")).to_contain_text(tenant.id)
    await expect(page.locator(f'tr[data-event-id="{first["event_id"]}"]')).to_be_visible()
    await expect(page.locator("#live-state")).to_contain_text("live", timeout=WAIT_MS)
    for text in ("null", "undefined", "[object"):
        await expect(page.locator("body")).not_to_contain_text(text)
    await shot(page, "overview")

    history_reads = [u for u in log.requests if "/events?" in u]
    second = await tenant.write("PATCH", f"{R}/o1", json={"total": 12}, headers=MERGE)
    row = page.locator(f'tr[data-event-id="{second["event_id"]}"]')
    await expect(row).to_be_visible(timeout=WAIT_MS)
    await expect(row).to_contain_text("record.patched")
    await expect(row).to_contain_text("orders/o1")
    await expect(row.locator('[data-col="actor"]')).to_have_text("user:eventfold-cli")
    # Newest first, and it came over the stream: no reload, no second history read.
    first_row = page.locator("#events tbody tr").first
    await expect(first_row).to_have_attribute("data-event-id", second["event_id"])
    assert [u for u in log.requests if "/events?" in u] == history_reads

    await page.get_by_role("button", name="Sign out").click()
    await expect(page.locator("#credential")).to_be_visible()
    assert await page.evaluate("sessionStorage.length") == 0


async def test_form_sign_in_shows_the_problem_then_accepts_an_api_key(
    console: Console, api: Api, tenant: TenantApi
) -> None:
    created = await create_key(tenant, "console", ("reader",))
    resp = await api.client.get(
        "/v1/me",
        headers={"X-API-Key": created["key"], "X-Consistency-Token": created["consistency_token"]},
    )
    assert resp.status == 200, await resp.text()

    page, log = await console.page()
    log.expect(401, "/v1/me")
    await page.goto(f"{console.base}/console")
    await expect(page.locator("#credential")).to_be_focused()
    await page.fill("#credential", "not-a-token")
    await page.get_by_role("button", name="Sign in").click()
    alert = page.get_by_role("alert")
    await expect(alert).to_contain_text("Unauthorized")
    await expect(alert).to_contain_text("invalid token")

    # Keyboard only: type the key, Tab to the button, Enter.
    log.secret = created["key"]
    await page.fill("#credential", "")
    await page.focus("#credential")
    await page.keyboard.type(created["key"])
    await page.keyboard.press("Tab")
    await expect(page.get_by_role("button", name="Sign in")).to_be_focused()
    await page.keyboard.press("Enter")
    await expect(page.locator("#view-title")).to_have_text("Overview")
    await expect(page.locator("#view-title")).to_be_focused()
    await expect(page.locator("#who")).to_contain_text("reader")
    await expect(page.locator("#context")).to_contain_text(tenant.id)


# --- records -------------------------------------------------------------------------


async def test_records_page_through_filter_and_show_a_records_history(
    console: Console, tenant: TenantApi
) -> None:
    last: dict[str, Any] = {}
    for n in range(12):
        status = "paid" if n % 2 == 0 else "open"
        last = await tenant.write("PUT", f"{R}/o{n:02}", json={"n": n, "status": status})
    patched = await tenant.write("PATCH", f"{R}/o03", json={"status": "paid"}, headers=MERGE)
    await tenant.read_json(f"{R}/o03", patched["consistency_token"])
    await tenant.read_json(f"{R}/o11", last["consistency_token"])

    page, _ = await console.signed_in(admin_token(tenant))
    await page.get_by_role("link", name="Records", exact=True).click()
    await page.get_by_role("link", name="orders", exact=True).click()
    await expect(page.locator("#view-title")).to_have_text("Records: orders")
    await page.select_option("#page-size", "10")
    await page.get_by_role("button", name="Apply").click()
    rows = page.locator(".paged tbody tr")
    await expect(rows).to_have_count(10)
    await expect(rows.first).to_contain_text("o00")
    await page.get_by_role("button", name="Next page").click()
    await expect(rows).to_have_count(2)
    await expect(rows.first).to_contain_text("o10")
    await expect(page.get_by_role("button", name="Next page")).to_be_disabled()
    await page.get_by_role("button", name="Previous page").click()
    await expect(rows).to_have_count(10)
    await shot(page, "records")

    await page.get_by_role("button", name="Add filter").click()
    await page.get_by_label("Field").fill("status")
    await page.get_by_label("Equals").fill("paid")
    await page.get_by_role("button", name="Apply").click()
    await expect(rows).to_have_count(7)  # six even ones, and o03 since its patch

    await page.get_by_role("link", name="o03", exact=True).click()
    await expect(page.locator("#view-title")).to_have_text("Record orders/o03")
    history = page.locator(".paged tbody tr")
    await expect(history).to_have_count(2)
    await expect(history.first).to_contain_text("record.patched")
    await expect(history.first).to_contain_text("user:eventfold-cli")
    await expect(history.nth(1)).to_contain_text("record.upserted")
    await expect(page.locator("pre.json")).to_contain_text('"paid"')


# --- dead letters --------------------------------------------------------------------


async def test_a_dead_letter_is_redriven_from_the_console(
    console: Console, tenant: TenantApi, pool: asyncpg.Pool
) -> None:
    await install_bug(pool, tenant.id)
    await tenant.write("PUT", f"{R}/p1", json={"n": 1})
    poison = await tenant.write("PATCH", f"{R}/p1", json={"poison": True}, headers=MERGE)
    other = await tenant.write("PUT", f"{R}/p2", json={"n": 2})
    await tenant.read_json(f"{R}/p2", other["consistency_token"])

    page, _ = await console.signed_in(admin_token(tenant), f"/t/{tenant.id}/dead-letters")
    await expect(page.locator("#view-title")).to_have_text("Dead letters")
    row = page.locator(".paged tbody tr").filter(has_text="orders/p1")
    await expect(row).to_contain_text("boom: cannot store p1")
    await expect(row).to_contain_text(poison["event_id"])

    async with pool.acquire() as conn:  # the fix
        await conn.execute(f'DROP TRIGGER boom ON "t_{tenant.id}".records')
    await page.get_by_role("button", name="Redrive orders/p1").click()
    await expect(page.get_by_role("status").filter(has_text="Applied")).to_contain_text(
        "Applied 1, rejected 0, left as dead letters 0."
    )
    await expect(page.locator(".paged tbody")).to_contain_text("No dead letters.")
    doc = await tenant.read_json(f"{R}/p1")
    assert (doc["version"], doc["data"]) == (2, {"n": 1, "poison": True})


# --- webhooks ------------------------------------------------------------------------


async def test_webhook_delivery_log_and_redrive(
    console: Console, tenant: TenantApi, pool: asyncpg.Pool
) -> None:
    receiver = Receiver()
    receiver.decide = lambda _id, _n: 500
    await receiver.start()
    try:
        hook = await tenant.write(
            "POST", "/webhooks", roles=("admin",), json={"url": receiver.url, "types": ["record.*"]}
        )
        seen = await tenant.call(
            "GET", "/webhooks", roles=("admin",),
            headers={"X-Consistency-Token": hook["consistency_token"]},
        )  # fmt: skip
        assert seen.status == 200, await seen.text()
        await tenant.write("PUT", f"{R}/w1", json={"n": 1})

        async def dead() -> bool:
            async with pool.acquire() as conn:
                return bool(await conn.fetchval(
                    "SELECT true FROM eventfold.webhook_deliveries"
                    " WHERE webhook_id = $1 AND state = 'dead'", hook["id"],
                ))  # fmt: skip

        await eventually(dead)

        page, _ = await console.signed_in(admin_token(tenant), f"/t/{tenant.id}/webhooks")
        await page.get_by_role("link", name=hook["id"]).click()
        await expect(page.locator("#view-title")).to_have_text(f"Webhook {hook['id']}")
        attempts = page.locator(".paged tbody tr")
        await expect(attempts.first).to_contain_text("HTTP 500")

        receiver.decide = lambda _id, _n: 200
        await page.get_by_role("button", name="Redrive exhausted deliveries").click()
        await expect(page.get_by_role("status").filter(has_text="scheduled")).to_contain_text(
            "1 delivery scheduled again."
        )
        await receiver.wait_for(lambda: bool(receiver.delivered()))

        async def shown() -> bool:
            await page.get_by_role("button", name="Refresh").click()
            return "HTTP 200" in (await attempts.first.inner_text())

        await eventually(shown)
        await shot(page, "webhook-deliveries")
    finally:
        await receiver.stop()


# --- platform admins, workflows ------------------------------------------------------


async def test_platform_admin_picks_a_tenant_and_sees_lag_health_and_no_workflows(
    console: Console, api: Api
) -> None:
    # Ids sort before every other test's ("t…") and newest first among this test's own
    # (tenants are never deleted), so this one is on the list's first page.
    tenant_id = f"a0{10**10 - int(time.time())}_{uuid.uuid4().hex[:6]}"
    await api.create_tenant(tenant_id)
    page, _ = await console.signed_in(api.token("*", "platform-admin"))
    await expect(page.locator("#view-title")).to_have_text("Tenants")
    await page.get_by_role("link", name=tenant_id).click()
    await expect(page.locator("#view-title")).to_have_text("Overview")
    await expect(page.locator("#context")).to_contain_text(tenant_id)
    await expect(page.locator("#events")).to_contain_text("tenant.created")

    await page.get_by_role("link", name="Workflows").click()
    await expect(page.locator("#view-title")).to_have_text("Workflows")
    await expect(page.get_by_role("table", name="Workflows")).to_contain_text("No workflows.")

    await page.get_by_role("link", name="Processors & health").click()
    projector = page.locator('tr[data-processor="projector"]')
    await expect(projector).to_contain_text("postgres")
    await expect(page.locator('tr[data-processor="cache"]')).to_contain_text("kafka")
    readiness = page.locator("caption").filter(has_text="Readiness")
    await expect(readiness).to_have_text(re.compile(r"Readiness of this process: (ok|degraded)"))
    await shot(page, "processors")


async def test_a_suspended_tenant_shows_its_reason_and_the_admins_act(
    console: Console, api: Api, tenant: TenantApi
) -> None:
    resp = await api.request(
        "POST", f"/v1/tenants/{tenant.id}/suspend", json={"reason": "invoice unpaid"}
    )
    assert resp.status == 202, await resp.text()
    await tenant.read_json("", (await resp.json())["consistency_token"])
    page, _ = await console.signed_in(admin_token(tenant))
    await expect(page.locator("#view-title")).to_have_text("Overview")
    await expect(page.locator("dl.props")).to_contain_text("suspended invoice unpaid")
    row = page.locator("#events tr").filter(has_text="tenant.suspended")
    await expect(row.locator('[data-col="actor"]')).to_have_text("user:eventfold-cli")


# --- integrations --------------------------------------------------------------------


async def test_integrations_show_their_state_and_a_sync_is_requested(
    console: Console, tenant: TenantApi
) -> None:
    body = {"kind": "http-poll", "url": "http://127.0.0.1:9/items", "collection": "contacts",
            "interval_seconds": 3600}  # fmt: skip
    created = await tenant.write("POST", "/integrations", roles=("admin",), json=body)
    seen = await tenant.call(
        "GET", f"/integrations/{created['id']}", roles=("admin",),
        headers={"X-Consistency-Token": created["consistency_token"]},
    )  # fmt: skip
    assert seen.status == 200, await seen.text()

    page, _ = await console.signed_in(admin_token(tenant), f"/t/{tenant.id}/integrations")
    row = page.locator(".paged tbody tr").filter(has_text=created["id"])
    await expect(row).to_contain_text("http-poll")
    await expect(row).to_contain_text("contacts")
    await expect(row.locator(".badge")).to_have_text("ok")
    await row.get_by_role("button", name=f"Sync {created['id']} now").click()
    await expect(page.get_by_role("status").filter(has_text="requested")).to_have_text(
        f"Sync of {created['id']} requested."
    )
    for text in ("null", "undefined"):
        await expect(page.locator("main")).not_to_contain_text(text)


# --- analytics -----------------------------------------------------------------------


async def test_analytics_chart_in_both_windows(
    console: Console,
    api: Api,
    lane: Lane,  # noqa: F811 - the imported fixture
) -> None:
    tenant = (await api.create_tenant())["id"]
    now = time.time()
    for n in range(40):
        kind = ("record.upserted", "record.patched", "order.paid")[n % 3]
        await lane.publish(tenant, kind, f"orders/o{n}", now - (n % 5) * 60)
    lane.spawn()

    async def counted() -> bool:
        resp = await api.request(
            "GET", f"/v1/tenants/{tenant}/analytics/events?window=1m", tenant=tenant,
            roles=("reader",),
        )  # fmt: skip
        return sum(i["count"] for i in (await resp.json())["items"]) == 40

    await eventually(counted, within=120)
    page, log = await console.signed_in(api.token(tenant, "reader"), f"/t/{tenant}/analytics")
    await expect(page.locator("#view-title")).to_have_text("Analytics")
    await expect(page.locator("#chart canvas")).to_have_count(1)
    totals = page.locator("table").filter(has_text="by type")
    await expect(totals).to_contain_text("record.upserted")
    await expect(totals).to_contain_text("order.paid")
    await shot(page, "analytics")
    await expect(totals.locator("tr").filter(has_text="record.upserted")).to_contain_text("14")
    hourly = len([u for u in log.requests if "window=1h" in u])
    await page.select_option("#window", "1h")
    await expect(page.locator("#chart canvas")).to_have_count(1)
    await expect(totals.locator("tr").filter(has_text="record.upserted")).to_contain_text("14")
    assert len([u for u in log.requests if "window=1h" in u]) > hourly


# --- layout, themes, labels ----------------------------------------------------------


async def test_phone_width_dark_theme_and_every_control_labelled(
    console: Console, tenant: TenantApi
) -> None:
    written = await tenant.write("PUT", f"{R}/m1", json={"status": "paid", "total": 3})
    await tenant.read_json(f"{R}/m1", written["consistency_token"])
    token = admin_token(tenant)

    phone, _ = await console.signed_in(token, width=390, height=844)
    await expect(phone.locator(f'tr[data-event-id="{written["event_id"]}"]')).to_be_visible()
    # Nothing wider than the screen: tables scroll inside their own box.
    assert await phone.evaluate("document.documentElement.scrollWidth") <= 390
    nav = await phone.locator("#nav").bounding_box()
    assert nav is not None
    assert nav["width"] <= 390
    await shot(phone, "overview-phone")

    dark, _ = await console.signed_in(token, scheme="dark")
    background = await dark.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(15, 18, 22)"
    await dark.evaluate(
        "route => { window.location.hash = route; }", f"/t/{tenant.id}/records/orders"
    )
    await expect(dark.locator(".paged tbody tr")).to_have_count(1)
    await dark.get_by_role("button", name="Add filter").click()
    await shot(dark, "records-dark")

    # Every form control of the views has a label (or an aria-label).
    for route in ("webhooks", "analytics", "integrations", "dead-letters", "records/orders"):
        await dark.evaluate("r => { window.location.hash = r; }", f"/t/{tenant.id}/{route}")
        await expect(dark.locator("#view-title")).to_be_focused()
        unlabelled = await dark.evaluate(
            """() => [...document.querySelectorAll('main input, main select, main textarea')]
                .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label'))
                .map(el => el.outerHTML)"""
        )
        assert unlabelled == [], route


# --- workflows ------------------------------------------------------------------------


async def test_workflow_run_approved_then_cancelled_from_the_console(
    console: Console, tenant: TenantApi
) -> None:
    from tests.integration.workflow_helpers import define, finished, step, wait_run

    await define(
        tenant,
        {"id": "paid-order", "name": "Paid order follow-up",
         "trigger": {"types": ["record.upserted"], "collection": "orders",
                     "when": {"status": {"eq": "paid"}}},
         "steps": [{"id": "crm", "kind": "record", "op": "patch", "collection": "orders",
                    "record": "${/record/id}", "data": {"seen": True}},
                   {"id": "ok", "kind": "approval"},
                   {"id": "hold", "kind": "approval"},
                   {"id": "ship", "kind": "delay", "seconds": 0}]},
    )  # fmt: skip
    await tenant.write("PUT", f"{R}/o1", json={"status": "paid", "total": 150})
    [run] = await wait_run(tenant, "paid-order", lambda r: step(r, "ok")["status"] == "waiting")
    page, _ = await console.signed_in(
        tenant.api.token(tenant.id, "writer"), f"/t/{tenant.id}/workflows"
    )
    await page.get_by_role("link", name="paid-order").click()
    await page.get_by_role("link", name=run["id"]).click()
    await expect(page.locator("#view-title")).to_have_text(f"Run {run['id']}")
    waiting = page.locator('tr[data-step="ok"]')
    await expect(waiting).to_contain_text("waiting", timeout=WAIT_MS)
    await expect(page.locator('tr[data-step="crm"]')).to_contain_text("succeeded")
    await shot(page, "workflow-run")
    await page.get_by_label("Comment on ok").fill("looks right")
    await page.get_by_role("button", name="Approve step ok").click()
    await expect(page.get_by_role("status").filter(has_text="approved")).to_have_text(
        "Step ok approved."
    )
    await expect(waiting).to_contain_text("succeeded", timeout=WAIT_MS)
    await expect(page.locator('tr[data-step="hold"]')).to_contain_text("waiting", timeout=WAIT_MS)
    await expect(page.get_by_role("button", name="Approve step ok")).to_have_count(0)
    await page.get_by_role("button", name="Cancel run").click()
    await expect(page.locator('tr[data-step="hold"]')).to_contain_text("cancelled", timeout=WAIT_MS)
    await expect(page.locator('tr[data-step="ship"]')).to_contain_text("skipped")
    await expect(page.get_by_role("button", name="Cancel run")).to_have_count(0)
    [done] = await wait_run(tenant, "paid-order", finished)
    assert done["status"] == "cancelled"
    assert step(done, "ok")["output"] == {"approved": True, "comment": "looks right"}
    history = await tenant.read_json(f"/events?subject=runs/{run['id']}&limit=1000")
    commands = [e for e in history["items"] if e["type"] in
                ("workflow.step.approved", "workflow.run.cancel_requested")]  # fmt: skip
    assert [(e["type"], e["data"].get("comment")) for e in commands] == [
        ("workflow.step.approved", "looks right"),
        ("workflow.run.cancel_requested", None),
    ]

"""CORS (``EVENTFOLD_CORS_ORIGINS``) and gzip of large answers."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio
from aiohttp.test_utils import TestClient

from eventfold.settings import Settings
from tests.integration.conftest import READ_API, Api, serving

ORIGIN = "https://app.example"


@pytest_asyncio.fixture(loop_scope="session")
async def cors_client(stack: Settings) -> AsyncIterator[TestClient[Any, Any]]:
    """The read API alone, with CORS on for one origin."""
    settings = dataclasses.replace(stack, cors_origins=(ORIGIN,))
    async with serving(settings, READ_API) as client:
        yield client


async def test_preflight_of_an_allowed_origin(cors_client: TestClient[Any, Any]) -> None:
    resp = await cors_client.options(
        "/v1/tenants/acme/collections/c/records",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization, x-consistency-token",
        },
    )
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "PATCH" in resp.headers["Access-Control-Allow-Methods"]
    assert resp.headers["Access-Control-Allow-Headers"] == "authorization, x-consistency-token"
    assert "Origin" in resp.headers.getall("Vary")


async def test_answers_to_an_allowed_origin_expose_headers(
    cors_client: TestClient[Any, Any],
) -> None:
    for path, status in (("/health/live", 200), ("/v1/tenants/acme", 401)):
        resp = await cors_client.get(path, headers={"Origin": ORIGIN})
        assert resp.status == status
        assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
        exposed = {h.strip() for h in resp.headers["Access-Control-Expose-Headers"].split(",")}
        assert {"ETag", "X-Request-ID", "RateLimit-Remaining", "Retry-After"} <= exposed


async def test_other_origins_get_no_cors_headers(cors_client: TestClient[Any, Any]) -> None:
    resp = await cors_client.get("/health/live", headers={"Origin": "https://evil.example"})
    assert resp.status == 200
    assert "Access-Control-Allow-Origin" not in resp.headers
    pre = await cors_client.options(
        "/health/live",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
    )
    assert "Access-Control-Allow-Origin" not in pre.headers
    assert pre.status >= 400


async def test_cors_is_off_by_default(api: Api) -> None:
    resp = await api.client.get("/health/live", headers={"Origin": ORIGIN})
    assert "Access-Control-Allow-Origin" not in resp.headers


async def test_large_answers_are_gzipped_when_accepted(api: Api) -> None:
    gz = await api.client.get("/openapi.json", headers={"Accept-Encoding": "gzip"})
    assert gz.status == 200
    assert gz.headers["Content-Encoding"] == "gzip"
    assert "Accept-Encoding" in gz.headers.getall("Vary")
    doc = await gz.json()  # the client decompresses
    assert doc["openapi"] == "3.1.0"
    plain = await api.client.get("/openapi.json", headers={"Accept-Encoding": "identity"})
    assert "Content-Encoding" not in plain.headers
    assert await plain.json() == doc
    small = await api.client.get("/health/live", headers={"Accept-Encoding": "gzip"})
    assert "Content-Encoding" not in small.headers

"""Health, metrics and the problem answers for unknown routes."""

from __future__ import annotations

import asyncio
import dataclasses

from eventfold.appkeys import HEALTH
from eventfold.settings import Settings
from tests.integration.conftest import (
    READ_API,
    SESSION_PROCESSORS,
    Api,
    TenantApi,
    captured,
    serving,
)


async def test_health(api: Api) -> None:
    live = await api.client.get("/health/live")
    assert (live.status, (await live.json())["status"]) == (200, "ok")
    ready = await api.client.get("/health/ready")
    doc = await ready.json()
    assert (ready.status, doc["status"]) == (200, "ok"), doc
    # Every processor the app runs reports its own check.
    assert set(doc["checks"]) == {
        "postgres",
        "redis",
        "kafka",
        "cache_breaker",
        *SESSION_PROCESSORS,
    }


async def test_metrics_are_prometheus_text(api: Api, tenant: TenantApi) -> None:
    await tenant.write("PUT", "/collections/m/records/1", json={})
    resp = await api.client.get("/metrics")
    text = await resp.text()
    assert resp.status == 200
    assert resp.content_type.startswith("text/plain")
    assert "eventfold_http_request_duration_seconds_bucket" in text
    assert 'route="/v1/tenants/{tenant}/collections/{collection}/records/{id}"' in text
    assert "eventfold_events_published_total" in text
    # No tenant labels, but on the bounded top-N tenant rates (tests/integration/test_metrics.py).
    named = [line for line in text.splitlines() if tenant.id in line]
    assert all(line.startswith("eventfold_top_tenant_") for line in named), named


async def test_unknown_route_and_method(api: Api) -> None:
    resp = await api.client.get("/nope")
    assert resp.status == 404
    doc = await resp.json(content_type="application/problem+json")
    assert set(doc) >= {"type", "title", "status", "detail"}
    resp = await api.client.delete("/v1/tenants")
    assert resp.status == 405
    assert "Allow" in resp.headers


async def test_request_id_is_echoed_or_made(api: Api) -> None:
    resp = await api.client.get("/health/live", headers={"X-Request-ID": "abc-123"})
    assert resp.headers["X-Request-ID"] == "abc-123"
    resp = await api.client.get("/health/live", headers={"X-Request-ID": "bad id\u00e9"})
    assert resp.headers["X-Request-ID"] != "bad id"
    assert len(resp.headers["X-Request-ID"]) == 32


async def test_readiness_is_served_from_a_cached_probe(stack: Settings) -> None:
    settings = dataclasses.replace(stack, health_cache_seconds=3600.0)
    async with serving(settings, READ_API) as client:
        health = client.app[HEALTH]
        calls = 0

        async def counted() -> None:
            nonlocal calls
            calls += 1

        health.add("counted", counted, critical=False)
        answers = await asyncio.gather(*(client.get("/health/ready") for _ in range(20)))
        answers += [await client.get("/health/ready") for _ in range(10)]
        for resp in answers:
            doc = await resp.json()
            assert resp.status == 200
            assert doc["checks"]["counted"] == {"status": "ok"}
            assert doc["checks"]["postgres"] == {"status": "ok"}
        # Thirty answers, one probe of each dependency (and one SELECT 1).
        assert calls == 1


RECORD_ROUTE = "/v1/tenants/{tenant}/collections/{collection}/records/{id}"


async def test_each_answered_request_has_one_access_log_line(tenant: TenantApi) -> None:
    """On by default: method, route template (no ids), status, duration, tenant, request id."""
    rid = f"acc-{tenant.id}"
    with captured("eventfold.access") as access:
        await tenant.write(
            "PUT", "/collections/orders/records/o1", json={}, headers={"X-Request-ID": rid + "-1"}
        )
        missing = await tenant.call(
            "GET", "/collections/orders/records/nope", headers={"X-Request-ID": rid + "-2"}
        )
        assert missing.status == 404
        unmatched = await tenant.api.client.get("/nope", headers={"X-Request-ID": rid + "-3"})
        assert unmatched.status == 404
    mine = sorted(
        (line for line in access.lines if line.get("correlation_id", "").startswith(rid)),
        key=lambda line: line["correlation_id"],
    )
    for line in mine:
        assert line["duration_ms"] > 0, line
        assert (line["level"], line["logger"], line["msg"]) == (
            "info",
            "eventfold.access",
            "request",
        )
    assert [
        (line["correlation_id"], line["method"], line["route"], line["status"], line["tenant"])
        for line in mine
    ] == [
        (rid + "-1", "PUT", RECORD_ROUTE, 202, tenant.id),
        (rid + "-2", "GET", RECORD_ROUTE, 404, tenant.id),
        (rid + "-3", "GET", "unmatched", 404, None),
    ]
    assert not any("o1" in str(line) or "nope" in str(line) for line in mine)  # no paths


async def test_the_access_log_is_off_with_its_setting(stack: Settings) -> None:
    async with serving(dataclasses.replace(stack, access_log=False), READ_API) as client:
        with captured("eventfold.access") as access:
            resp = await client.get("/health/live")
            assert resp.status == 200
    assert access.lines == []

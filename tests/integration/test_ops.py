"""Health, metrics and the problem answers for unknown routes."""

from __future__ import annotations

from tests.integration.conftest import SESSION_PROCESSORS, Api, TenantApi


async def test_health(api: Api) -> None:
    live = await api.client.get("/health/live")
    assert (live.status, (await live.json())["status"]) == (200, "ok")
    ready = await api.client.get("/health/ready")
    doc = await ready.json()
    assert ready.status == 200
    assert doc["status"] == "ok"
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
    assert tenant.id not in text  # no tenant labels


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

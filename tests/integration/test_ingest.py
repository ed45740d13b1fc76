"""The ingest gateway: events published to Kafka as validated, stamped envelopes."""

from __future__ import annotations

from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from eventfold.appkeys import REDIS
from eventfold.dedup import dedup_key, pending_event
from eventfold.settings import Settings
from eventfold.web import MAX_JSON_DEPTH
from tests.integration.conftest import Api, TenantApi


def event(event_id: str, subject: str = "items/i1", **kw: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "specversion": "1.0",
        "id": event_id,
        "source": "test/ingest",
        "type": "record.upserted",
        "subject": subject,
        "data": {"n": 1},
    }
    doc.update(kw)
    return doc


async def read_at(settings: Settings, partition: int, offset: int) -> tuple[bytes, dict[str, Any]]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tp = TopicPartition(settings.events_topic, partition)
        consumer.assign([tp])
        consumer.seek(tp, offset)
        msg = await consumer.getone()
        assert msg.key is not None
        assert msg.value is not None
        return msg.key, orjson.loads(msg.value)
    finally:
        await consumer.stop()


async def test_single_event_lands_in_kafka_stamped_and_keyed(api: Api, tenant: TenantApi) -> None:
    doc = await tenant.write("POST", "/events", json=event("ev-1"))
    [res] = doc["events"]
    assert res["id"] == "ev-1"
    assert res["duplicate"] is False
    key, envelope = await read_at(api.settings, res["partition"], res["offset"])
    assert key == f"{tenant.id}/items/i1".encode()
    assert envelope["tenant"] == tenant.id
    assert envelope["time"].endswith("Z")
    assert envelope["data"] == {"n": 1}
    applied = await tenant.read_json("/events/ev-1", doc["consistency_token"])
    assert applied["status"] == "applied"


async def test_a_retried_single_event_is_a_duplicate_at_its_first_position(
    api: Api, tenant: TenantApi
) -> None:
    first = await tenant.write("POST", "/events", json=event("ev-r", "items/r"))
    again = await tenant.write("POST", "/events", json=event("ev-r", "items/r"))
    [a], [b] = first["events"], again["events"]
    assert (a["duplicate"], b["duplicate"]) == (False, True)
    assert (b["partition"], b["offset"]) == (a["partition"], a["offset"])
    # The dedup memory holds the position and the envelope exactly as it is in the log.
    redis = api.client.server.app[REDIS]
    raw = await redis.get(dedup_key(tenant.id, "ev-r"))
    assert raw is not None
    doc = orjson.loads(raw)
    _, logged = await read_at(api.settings, a["partition"], a["offset"])
    assert doc == {"p": a["partition"], "o": a["offset"], "e": logged}
    assert await pending_event(redis, tenant.id, "ev-r") == logged


async def test_nul_characters_are_refused_and_other_escapes_are_not(tenant: TenantApi) -> None:
    resp = await tenant.call(
        "POST", "/events", data=orjson.dumps(event("nul-1", data={"s": "a\x00b"}))
    )
    assert resp.status == 422
    problem = await resp.json(content_type="application/problem+json")
    assert problem["errors"] == [{"path": "/data/s", "message": "contains U+0000"}]
    ok = await tenant.write("POST", "/events", json=event("esc-1", data={"s": 'C:\\x "q" \u00e9'}))
    assert ok["events"][0]["duplicate"] is False


async def test_client_time_is_kept(api: Api, tenant: TenantApi) -> None:
    doc = await tenant.write("POST", "/events", json=event("ev-t", time="2020-01-02T03:04:05Z"))
    [res] = doc["events"]
    _, envelope = await read_at(api.settings, res["partition"], res["offset"])
    assert envelope["time"] == "2020-01-02T03:04:05Z"


async def test_batch_is_published_and_duplicates_flagged(tenant: TenantApi) -> None:
    batch = [event("b-1", "items/a"), event("b-2", "items/b"), event("b-1", "items/a")]
    doc = await tenant.write("POST", "/events", json=batch)
    assert [(e["id"], e["duplicate"]) for e in doc["events"]] == [
        ("b-1", False),
        ("b-2", False),
        ("b-1", True),
    ]
    assert doc["events"][2]["offset"] == doc["events"][0]["offset"]
    again = await tenant.write("POST", "/events", json=[event("b-2", "items/b")])
    assert again["events"][0]["duplicate"] is True
    assert again["events"][0]["offset"] == doc["events"][1]["offset"]
    rec = await tenant.read_json("/collections/items/records/b", again["consistency_token"])
    assert rec["version"] == 1


async def test_a_large_batch_reports_each_events_own_position(api: Api, tenant: TenantApi) -> None:
    # Past BATCHED_SEND_MIN the events go out as one record batch per partition.
    batch = [event(f"lb-{i}", f"items/x{i % 7}", data={"n": i}) for i in range(40)]
    doc = await tenant.write("POST", "/events", json=[*batch, event("lb-3", "items/x3")])
    results = doc["events"]
    assert [r["id"] for r in results] == [*(f"lb-{i}" for i in range(40)), "lb-3"]
    assert results[40]["duplicate"] is True
    assert (results[40]["partition"], results[40]["offset"]) == (
        results[3]["partition"],
        results[3]["offset"],
    )
    assert len({(r["partition"], r["offset"]) for r in results[:40]}) == 40
    for i in (0, 3, 17, 39):
        key, envelope = await read_at(api.settings, results[i]["partition"], results[i]["offset"])
        assert key == f"{tenant.id}/items/x{i % 7}".encode()
        assert (envelope["id"], envelope["data"]) == (f"lb-{i}", {"n": i})
    rec = await tenant.read_json("/collections/items/records/x6", doc["consistency_token"])
    assert rec["version"] == 5  # lb-6, 13, 20, 27 and 34, applied in order
    assert rec["data"] == {"n": 34}


async def test_invalid_batch_publishes_nothing(tenant: TenantApi) -> None:
    batch = [
        event("ok-1", "items/a"),
        event("bad-1", "no-slash"),
        event("bad-2", "items/c", type="no.such.type"),
        event("bad-3", "items/d", data="not an object"),
        {"specversion": "0.3"},
    ]
    resp = await tenant.call("POST", "/events", json=batch)
    assert resp.status == 422
    problem = await resp.json(content_type="application/problem+json")
    paths = {e["path"] for e in problem["errors"]}
    assert {"/1/subject", "/2/type", "/3/data", "/4/specversion", "/4/id"} <= paths
    assert not any(p.startswith("/0") for p in paths)
    missing = await tenant.read("/events/ok-1")
    assert missing.status == 404


async def test_envelope_tenant_must_match_the_path(tenant: TenantApi) -> None:
    resp = await tenant.call("POST", "/events", json=event("x-1", tenant="someoneelse"))
    assert resp.status == 422
    problem = await resp.json(content_type="application/problem+json")
    assert problem["errors"] == [{"path": "/tenant", "message": "differs from the path's tenant"}]


async def test_limits(tenant: TenantApi) -> None:
    too_many = [event(f"m-{i}", f"items/{i}") for i in range(1001)]
    resp = await tenant.call("POST", "/events", json=too_many)
    assert resp.status == 413
    big = event("big", data={"blob": "x" * (1024 * 1024 + 10)})
    resp = await tenant.call("POST", "/events", json=big)
    assert resp.status == 413
    assert resp.content_type == "application/problem+json"
    resp = await tenant.call("POST", "/events", json=[])
    assert resp.status == 422
    resp = await tenant.call("POST", "/events", data=b"")
    assert resp.status == 400
    resp = await tenant.call("POST", "/events", data=b"[1,")
    assert resp.status == 400


async def test_tenant_creation_rules(api: Api, tenant: TenantApi) -> None:
    resp = await api.request("POST", "/v1/tenants", json={"id": tenant.id, "name": "again"})
    assert resp.status == 409
    resp = await api.request("POST", "/v1/tenants", json={"id": "X!", "name": "bad"})
    assert resp.status == 422
    problem = await resp.json(content_type="application/problem+json")
    assert problem["errors"][0]["path"] == "/id"
    resp = await api.request(
        "POST", "/v1/tenants", tenant=tenant.id, roles=("admin",), json={"id": "abcd", "name": "x"}
    )
    assert resp.status == 403


async def test_tenant_with_limits(api: Api) -> None:
    doc = await api.create_tenant(limits={"requests_per_second": 5, "burst": 10})
    resp = await api.request("GET", f"/v1/tenants/{doc['id']}")
    body = await resp.json()
    assert body["limits"] == {"requests_per_second": 5.0, "burst": 10}
    assert body["status"] == "active"
    assert set(body) == {"id", "name", "status", "limits", "created_at", "personal_collections"}
    assert body["personal_collections"] == []


async def test_events_nested_past_the_depth_limit_are_refused_and_not_published(
    tenant: TenantApi,
) -> None:
    def data(depth: int) -> Any:
        value: Any = {}
        for _ in range(depth - 1):
            value = {"a": value}
        return value

    # The envelope is level 1, its data level 2: data of MAX_JSON_DEPTH levels is one too
    # many, and its first object past the limit MAX_JSON_DEPTH - 1 members "a" down.
    for depth in (MAX_JSON_DEPTH, 299):
        # (orjson, the server's parser, cannot write 300 levels: the stdlib json can.)
        resp = await tenant.call("POST", "/events", json=event("deep-1", data=data(depth)))
        assert resp.status == 400, (depth, await resp.text())
        problem = await resp.json(content_type="application/problem+json")
        assert problem["errors"] == [
            {
                "path": "/data" + "/a" * (MAX_JSON_DEPTH - 1),
                "message": f"nested deeper than {MAX_JSON_DEPTH} levels",
            }
        ]
        batch = [event("deep-0", "items/d0"), event("deep-2", data=data(depth))]
        resp = await tenant.call("POST", "/events", json=batch)
        assert resp.status == 400, await resp.text()
        problem = await resp.json(content_type="application/problem+json")
        assert problem["errors"][0]["path"] == "/1/data" + "/a" * (MAX_JSON_DEPTH - 2)
    for event_id in ("deep-0", "deep-1", "deep-2"):
        assert (await tenant.read(f"/events/{event_id}")).status == 404
    ok = await tenant.write("POST", "/events", json=event("deep-3", data=data(MAX_JSON_DEPTH - 1)))
    applied = await tenant.read_json("/events/deep-3", ok["consistency_token"])
    assert applied["status"] == "applied"
    assert applied["data"] == data(MAX_JSON_DEPTH - 1)

"""Record commands through the gateway, folded by the projector, read back over HTTP."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from eventfold.web import MAX_JSON_DEPTH
from tests.integration.conftest import TenantApi

R = "/collections/orders/records"


async def test_put_patch_delete_and_versions(tenant: TenantApi) -> None:
    w1 = await tenant.write("PUT", f"{R}/o1", json={"total": 10, "status": "new"})
    assert w1["id"] == "o1"
    doc = await tenant.read_json(f"{R}/o1", w1["consistency_token"])
    assert doc["version"] == 1
    assert doc["data"] == {"total": 10, "status": "new"}
    assert doc["collection"] == "orders"

    w2 = await tenant.write(
        "PATCH",
        f"{R}/o1",
        json={"status": "paid", "total": None, "lines": {"a": 1}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    doc = await tenant.read_json(f"{R}/o1", w2["consistency_token"])
    assert doc["version"] == 2
    assert doc["data"] == {"status": "paid", "lines": {"a": 1}}
    assert doc["created_at"] < doc["updated_at"]

    w3 = await tenant.write("DELETE", f"{R}/o1")
    gone = await tenant.read(f"{R}/o1", w3["consistency_token"])
    assert gone.status == 404
    assert gone.content_type == "application/problem+json"

    # Re-created: the version keeps counting past the tombstone.
    w4 = await tenant.write("PUT", f"{R}/o1", json={"total": 1})
    doc = await tenant.read_json(f"{R}/o1", w4["consistency_token"])
    assert doc["version"] == 4
    assert doc["data"] == {"total": 1}


async def test_etag_and_if_none_match(tenant: TenantApi) -> None:
    w = await tenant.write("PUT", f"{R}/e1", json={"a": 1})
    resp = await tenant.read(f"{R}/e1", w["consistency_token"])
    assert resp.headers["ETag"] == '"1"'
    cached = await tenant.call("GET", f"{R}/e1", headers={"If-None-Match": '"1"'})
    assert cached.status == 304
    assert cached.headers["ETag"] == '"1"'
    stale = await tenant.call("GET", f"{R}/e1", headers={"If-None-Match": '"7"'})
    assert stale.status == 200


async def test_post_creates_with_generated_id_and_refuses_existing(tenant: TenantApi) -> None:
    w = await tenant.write("POST", R, json={"data": {"n": 1}})
    record_id = w["id"]
    doc = await tenant.read_json(f"{R}/{record_id}", w["consistency_token"])
    assert doc["data"] == {"n": 1}

    again = await tenant.write("POST", R, json={"id": record_id, "data": {"n": 2}})
    event = await tenant.read_json(f"/events/{again['event_id']}", again["consistency_token"])
    assert event["status"] == "rejected"
    assert "version" in event["reason"]
    doc = await tenant.read_json(f"{R}/{record_id}")
    assert doc["data"] == {"n": 1}


async def test_if_match_mismatch_is_rejected_not_applied(tenant: TenantApi) -> None:
    await tenant.write("PUT", f"{R}/c1", json={"v": 1})
    w = await tenant.write("PUT", f"{R}/c1", json={"v": 2}, headers={"If-Match": '"5"'})
    event = await tenant.read_json(f"/events/{w['event_id']}", w["consistency_token"])
    assert event["status"] == "rejected"
    assert event["reason"] == "expected version 5, record is at version 1"
    assert event["expectedversion"] == 5
    ok = await tenant.write("PUT", f"{R}/c1", json={"v": 3}, headers={"If-Match": '"1"'})
    doc = await tenant.read_json(f"{R}/c1", ok["consistency_token"])
    assert (doc["version"], doc["data"]) == (2, {"v": 3})


async def test_if_match_that_can_never_match_is_412_at_the_edge(tenant: TenantApi) -> None:
    await tenant.write("PUT", f"{R}/g1", json={"v": 1})
    w = await tenant.write("PUT", f"{R}/g1", json={"v": 2})
    await tenant.read_json(f"{R}/g1", w["consistency_token"])
    stale = await tenant.call("PUT", f"{R}/g1", json={"v": 3}, headers={"If-Match": '"1"'})
    assert stale.status == 412
    assert stale.headers["ETag"] == '"2"'
    problem = await stale.json(content_type="application/problem+json")
    assert "cannot match" in problem["detail"]
    # Ahead of the projection, or "absent" (0): the projector decides, nothing refused early.
    ahead = await tenant.call("PATCH", f"{R}/g1", json={"v": 4}, headers={"If-Match": '"3"'})
    assert ahead.status == 202
    absent = await tenant.call("POST", R, json={"id": "g1", "data": {}})
    assert absent.status == 202
    history = await tenant.read_json(
        f"/events/{(await absent.json())['event_id']}", (await absent.json())["consistency_token"]
    )
    assert history["status"] == "rejected"


async def test_idempotency_key_makes_a_retry_one_effect(tenant: TenantApi) -> None:
    headers = {"Idempotency-Key": "order-42-create"}
    first = await tenant.write("POST", R, json={"data": {"n": 1}}, headers=headers)
    second = await tenant.write("POST", R, json={"data": {"n": 1}}, headers=headers)
    assert second["event_id"] == first["event_id"]
    assert second["id"] == first["id"]
    doc = await tenant.read_json(f"{R}/{first['id']}", second["consistency_token"])
    assert doc["version"] == 1
    history = await tenant.read_json("/events?type=record.upserted")
    assert [e["id"] for e in history["items"]] == [first["event_id"]]


async def test_concurrent_patches_to_one_record_all_apply(tenant: TenantApi) -> None:
    await tenant.write("PUT", f"{R}/hot", json={})
    results = await asyncio.gather(
        *(
            tenant.write(
                "PATCH",
                f"{R}/hot",
                json={f"f{i}": i},
                headers={"Content-Type": "application/merge-patch+json"},
            )
            for i in range(100)
        )
    )
    from eventfold.consistency import decode, encode

    merged: dict[int, int] = {}
    for r in results:
        for p, o in decode(r["consistency_token"]).items():
            merged[p] = max(o, merged.get(p, -1))
    doc = await tenant.read_json(f"{R}/hot", encode(merged))
    assert doc["version"] == 101
    assert doc["data"] == {f"f{i}": i for i in range(100)}


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "pointer"),
    [
        ("PUT", "/collections/Orders/records/x", {}, 422, "/collection"),
        ("PUT", "/collections/orders/records/bad%20id", {}, 422, "/id"),
        ("PUT", f"{R}/x", [1, 2], 422, "/"),
        ("POST", R, {"data": "text"}, 422, "/data"),
        ("POST", R, {"data": {}, "extra": 1}, 422, "/extra"),
        ("POST", R, {"id": "no spaces", "data": {}}, 422, "/id"),
    ],
)
async def test_bad_commands_are_problems(
    tenant: TenantApi, method: str, path: str, body: object, status: int, pointer: str
) -> None:
    resp = await tenant.call(method, path, json=body)
    assert resp.status == status
    doc = await resp.json(content_type="application/problem+json")
    assert doc["status"] == status
    assert pointer in [e["path"] for e in doc["errors"]]


async def test_malformed_if_match_and_body(tenant: TenantApi) -> None:
    resp = await tenant.call("PUT", f"{R}/x", json={}, headers={"If-Match": "W/abc"})
    assert resp.status == 400
    resp = await tenant.call("PUT", f"{R}/x", data=b"{not json")
    assert resp.status == 400
    assert "malformed JSON" in (await resp.json(content_type=None))["detail"]


async def test_hostile_collection_names_are_plain_data(tenant: TenantApi) -> None:
    for name in ("pg_catalog", "information_schema", "records"):
        w = await tenant.write("PUT", f"/collections/{name}/records/r1", json={"n": name})
        doc = await tenant.read_json(f"/collections/{name}/records/r1", w["consistency_token"])
        assert doc["data"] == {"n": name}


def nested(depth: int) -> bytes:
    """A JSON document of ``depth`` objects, each the only member ``a`` of the one before."""
    return b'{"a":' * (depth - 1) + b"{}" + b"}" * (depth - 1)


async def test_a_document_nested_past_the_depth_limit_is_refused_with_its_path(
    tenant: TenantApi,
) -> None:
    # 300 levels parsed, then failed to serialise again: a 500 after the parse.
    for depth in (MAX_JSON_DEPTH + 1, 300):
        for method in ("PUT", "PATCH"):
            resp = await tenant.call(method, f"{R}/deep", data=nested(depth))
            assert resp.status == 400, (method, depth, await resp.text())
            problem = await resp.json(content_type="application/problem+json")
            # The first object past the limit: MAX_JSON_DEPTH members "a" down.
            assert problem["errors"] == [
                {
                    "path": "/a" * MAX_JSON_DEPTH,
                    "message": f"nested deeper than {MAX_JSON_DEPTH} levels",
                }
            ], problem
        resp = await tenant.call("POST", R, data=b'{"data":' + nested(depth) + b"}")
        assert resp.status == 400, await resp.text()
        problem = await resp.json(content_type="application/problem+json")
        assert problem["errors"][0]["path"] == "/data" + "/a" * (MAX_JSON_DEPTH - 1)
    # Nothing was published: the record never existed.
    resp = await tenant.read(f"{R}/deep")
    assert resp.status == 404
    # At the limit, the document is stored and read back whole.
    w = await tenant.write("PUT", f"{R}/deep", data=nested(MAX_JSON_DEPTH))
    doc = await tenant.read_json(f"{R}/deep", w["consistency_token"])
    assert orjson.dumps(doc["data"]) == nested(MAX_JSON_DEPTH)

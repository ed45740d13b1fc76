"""Record lists: keyset pagination, orders, filters and cursor safety."""

from __future__ import annotations

from typing import Any

import pytest

from eventfold.consistency import encode
from tests.integration.conftest import TenantApi

R = "/collections/people/records"


async def seed(tenant: TenantApi, n: int) -> str:
    """``n`` people in one batch of events; returns a token covering them."""
    events = [
        {
            "specversion": "1.0",
            "id": f"seed-{i}",
            "source": "test",
            "type": "record.upserted",
            "subject": f"people/p{i:03d}",
            "time": f"2024-01-01T00:{i // 60:02d}:{i % 60:02d}Z",
            "data": {"age": i % 7, "name": f"n{i}", "vip": i % 10 == 0},
        }
        for i in range(n)
    ]
    doc = await tenant.write("POST", "/events", json=events)
    positions: dict[int, int] = {}
    for e in doc["events"]:
        positions[e["partition"]] = max(e["offset"], positions.get(e["partition"], -1))
    return encode(positions)


async def all_pages(tenant: TenantApi, query: str) -> tuple[list[dict[str, Any]], int]:
    items: list[dict[str, Any]] = []
    pages = 0
    after = None
    while True:
        q = query + (f"&after={after}" if after else "")
        doc = await tenant.read_json(f"{R}?{q}")
        items += doc["items"]
        pages += 1
        after = doc["next"]
        if after is None:
            return items, pages


async def test_pages_cover_every_record_once_in_each_order(tenant: TenantApi) -> None:
    token = await seed(tenant, 120)
    first = await tenant.read_json(f"{R}?limit=1", token)
    assert len(first["items"]) == 1
    expected = [f"p{i:03d}" for i in range(120)]
    for order, want in (
        ("id", expected),
        ("-id", expected[::-1]),
        ("updated_at", expected),
        ("-updated_at", expected[::-1]),
    ):
        items, pages = await all_pages(tenant, f"limit=50&order={order}")
        assert [i["id"] for i in items] == want, order
        assert pages == 3
    default = await tenant.read_json(R)
    assert len(default["items"]) == 50


async def test_filters_match_strings_numbers_and_booleans(tenant: TenantApi) -> None:
    await tenant.read_json(R, await seed(tenant, 40))
    by_age, _ = await all_pages(tenant, "limit=1000&filter[age]=3")
    assert {i["id"] for i in by_age} == {f"p{i:03d}" for i in range(40) if i % 7 == 3}
    by_name = await tenant.read_json(f"{R}?filter[name]=n5")
    assert [i["id"] for i in by_name["items"]] == ["p005"]
    vips, _ = await all_pages(tenant, "limit=2&filter[vip]=true&filter[age]=6")
    assert [i["id"] for i in vips] == ["p020"]
    none = await tenant.read_json(f"{R}?filter[name]=' OR 1=1 --")
    assert none["items"] == []


async def test_deleted_records_leave_lists(tenant: TenantApi) -> None:
    await tenant.write("PUT", f"{R}/a", json={})
    w = await tenant.write("DELETE", f"{R}/a")
    doc = await tenant.read_json(R, w["consistency_token"])
    assert doc == {"items": [], "next": None}


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=1001",
        "limit=ten",
        "order=name",
        "after=forged",
        "after=" + "A" * 60,
        "filter[bad-field]=1",
    ],
)
async def test_bad_list_parameters_are_422(tenant: TenantApi, query: str) -> None:
    resp = await tenant.read(f"{R}?{query}")
    assert resp.status == 422, query
    doc = await resp.json(content_type="application/problem+json")
    assert doc["errors"]


async def test_cursor_is_bound_to_its_listing(tenant: TenantApi) -> None:
    await tenant.read_json(R, await seed(tenant, 5))
    page = await tenant.read_json(f"{R}?limit=2&order=id")
    cursor = page["next"]
    assert cursor
    for other in ("order=-id", "order=id&filter[age]=1"):
        resp = await tenant.read(f"{R}?limit=2&{other}&after={cursor}")
        assert resp.status == 422, other
    elsewhere = await tenant.read(f"/collections/other/records?limit=2&after={cursor}")
    assert elsewhere.status == 422
    flipped = cursor[:-2] + ("A" if cursor[-2] != "A" else "B") + cursor[-1]
    resp = await tenant.read(f"{R}?limit=2&order=id&after={flipped}")
    assert resp.status == 422

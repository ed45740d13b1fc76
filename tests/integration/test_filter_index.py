"""``filter[FIELD]=VALUE`` on a large collection is answered by the GIN index on ``data``."""

from __future__ import annotations

from typing import Any

import orjson

from eventfold.appkeys import POOL
from eventfold.ids import tenant_schema
from eventfold.readmodel import list_query
from tests.integration.conftest import TenantApi

ROWS = 20_000


async def _plan(tenant: TenantApi, filters: list[tuple[str, str]]) -> str:
    sql, params = list_query(tenant.id, "big", "id", filters, None, 50)
    async with tenant.api.client.server.app[POOL].acquire() as conn:
        plan: Any = await conn.fetchval("EXPLAIN (FORMAT JSON) " + sql, *params)
    return plan if isinstance(plan, str) else orjson.dumps(plan).decode()


async def test_filters_use_the_data_index_on_a_large_collection(tenant: TenantApi) -> None:
    schema = tenant_schema(tenant.id)
    async with tenant.api.client.server.app[POOL].acquire() as conn:
        # Written straight into the projection: this is about the planner, not the fold.
        await conn.execute(
            f"""INSERT INTO {schema}.records
                  (collection, id, version, data, created_at, updated_at, last_event_id)
                SELECT 'big', 'r' || i, 1,
                       jsonb_build_object('seq', i, 'status',
                                          CASE WHEN i % 1000 = 0 THEN 'rare' ELSE 'common' END,
                                          'even', i % 2 = 0),
                       now(), now(), 'e' || i
                FROM generate_series(1, {ROWS}) AS i"""
        )
        # As autovacuum would: statistics, and the GIN pending list merged into the index
        # (rows inserted after CREATE INDEX wait there, and the planner prices that in).
        await conn.execute(f"VACUUM ANALYZE {schema}.records")
    for filters in ([("status", "rare")], [("seq", "12345")]):
        plan = await _plan(tenant, filters)
        assert "records_data" in plan, (filters, plan)
    # The same query through the API answers what the index found, exactly.
    rare = await tenant.read_json("/collections/big/records?filter[status]=rare&limit=1000")
    assert len(rare["items"]) == ROWS // 1000
    one = await tenant.read_json("/collections/big/records?filter[seq]=12345")
    assert [r["id"] for r in one["items"]] == ["r12345"]
    # Text form semantics are kept: "12345.0" is not the text of 12345.
    none = await tenant.read_json("/collections/big/records?filter[seq]=12345.0")
    assert none["items"] == []

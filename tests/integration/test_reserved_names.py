"""``__`` is reserved for internal names: no tenant id holds it, no internal schema is a tenant's.

`eventfold verify --tenant acme` used to fold into ``t_acme__verify`` (dropping it
first): the live schema of a tenant ``acme__verify``. New ids with ``__`` are
refused, and rebuild and verify scratch schemas live under ``ef__``, which no
tenant schema (``t_<id>``) can be.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from eventfold.settings import Settings
from tests.integration.conftest import Api, TenantApi

EVENTFOLD = str(Path(sys.executable).with_name("eventfold"))


async def eventfold(settings: Settings, *args: str) -> tuple[int, Any, str]:
    """Run ``eventfold ARGS --json`` on this session's topics; (status, stdout doc, stderr)."""
    env = {
        **os.environ,
        "EVENTFOLD_EVENTS_TOPIC": settings.events_topic,
        "EVENTFOLD_DLQ_TOPIC": settings.dlq_topic,
        "EVENTFOLD_CONSUMER_GROUP_PREFIX": settings.consumer_group_prefix,
        "EVENTFOLD_LOG_LEVEL": "WARNING",
    }
    proc = await asyncio.create_subprocess_exec(
        EVENTFOLD, *args, "--json", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 180)
    assert proc.returncode is not None
    return proc.returncode, orjson.loads(out) if out.strip() else None, err.decode()


async def test_new_tenant_ids_with_two_underscores_are_refused(api: Api) -> None:
    for tenant_id in ("acme__verify", "a__b", "abc__"):
        resp = await api.request("POST", "/v1/tenants", json={"id": tenant_id, "name": "x"})
        assert resp.status == 422, (tenant_id, await resp.text())
        problem = await resp.json(content_type="application/problem+json")
        assert [e["path"] for e in problem["errors"]] == ["/id"], problem
    # Single underscores stay fine.
    created = await api.create_tenant(f"a_b_{os.urandom(4).hex()}")
    assert "__" not in created["id"]
    # A path naming such a tenant is a 422 too, before any lookup.
    resp = await api.request("GET", "/v1/tenants/acme__verify")
    assert resp.status == 422, await resp.text()


async def test_verify_and_replay_leave_schemas_named_like_their_old_scratch_alone(
    api: Api, tenant: TenantApi
) -> None:
    doc = await tenant.write("PUT", "/collections/items/records/r1", json={"n": 1})
    await tenant.read_json("/collections/items/records/r1", doc["consistency_token"])
    # The live schemas of tenants created before the rule (acme__verify, ...).
    bystanders = [f"t_{tenant.id}__{suffix}" for suffix in ("verify", "rebuild", "old")]
    conn = await asyncpg.connect(api.settings.database_url)
    try:
        for name in bystanders:
            await conn.execute(f'CREATE SCHEMA "{name}"; CREATE TABLE "{name}".keep (n int)')
        status, report, err = await eventfold(api.settings, "verify", "--tenant", tenant.id)
        assert status == 0, (report, err)
        status, report, err = await eventfold(api.settings, "replay", "--tenant", tenant.id)
        assert status == 0, (report, err)
        assert report["tenants"][0]["swapped"] is True
        present = await conn.fetch(
            "SELECT nspname FROM pg_namespace WHERE nspname = ANY($1::text[])", bystanders
        )
        assert sorted(r["nspname"] for r in present) == sorted(bystanders)
        # No scratch schema is left behind either.
        left = await conn.fetchval(
            "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'ef\\_\\_%' AND nspname LIKE $1",
            f"%\\_\\_{tenant.id}",
        )
        assert left == 0
    finally:
        for name in bystanders:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        await conn.close()

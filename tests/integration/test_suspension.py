"""A suspended tenant's webhooks, syncs and workflow runs pause, and go on once it is resumed.

Each processor claims its work from a platform table, shared by every test
session on the stack: the rows here are written and claimed inside one
transaction that is rolled back, so no other session's processor sees them and
each claim's answer is this code's alone.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg

from consumers.notifier import delivery
from consumers.sync import runner
from consumers.workflows import store
from tests.integration.conftest import Api, TenantApi

#: Long ago: first in every claim's order, whatever else is due on the shared stack.
LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)


async def _claims(conn: asyncpg.Connection, tenant: str) -> dict[str, bool]:
    """Whether each processor's claim takes this tenant's row now."""
    hooks = await conn.fetch(delivery._CLAIM, [], [], 100, 100, 100_000, 30.0)
    syncs = await conn.fetch(runner._CLAIM, "test-owner", 30.0, 100_000, f"topic-{tenant}")
    runs = await conn.fetch(store._CLAIM_RUNS, f"topic-{tenant}", [], 10, 100_000, 30.0)
    inbox = await conn.fetch(store._CLAIM_INBOX, f"topic-{tenant}", 10, 100_000)
    return {
        "webhook": any(r["tenant"] == tenant for r in hooks),
        "sync": any(r["tenant"] == tenant for r in syncs),
        "run": any(r["tenant"] == tenant for r in runs),
        "inbox": any(r["tenant"] == tenant for r in inbox),
    }


async def _work(conn: asyncpg.Connection, tenant: str) -> None:
    """One due item of each kind for ``tenant`` (uncommitted)."""
    topic = f"topic-{tenant}"
    await conn.execute(
        "INSERT INTO eventfold.webhooks (id, tenant, url, types, secret_sealed, start_seq,"
        " created_at) VALUES ($1, $2, 'http://127.0.0.1:9/x', '{record.*}', 'x', 0, now())",
        f"wh-{tenant}",
        tenant,
    )
    await conn.execute(
        "INSERT INTO eventfold.webhook_deliveries (webhook_id, tenant, event_id, subject, seq,"
        " body, next_attempt_at, head) VALUES ($1, $2, 'e1', 's', 1, '\\x7b7d', $3, true)",
        f"wh-{tenant}",
        tenant,
        LONG_AGO,
    )
    await conn.execute(
        "INSERT INTO eventfold.integrations (id, tenant, kind, config, webhook_secret_sealed,"
        " created_at, event_id, topic, next_run_at)"
        " VALUES ($1, $2, 'http-poll', '{}', 'x', now(), 'e', $3, $4)",
        f"in-{tenant}",
        tenant,
        topic,
        LONG_AGO,
    )
    await conn.execute(
        "INSERT INTO eventfold.workflow_runs (id, tenant, topic, workflow, depth, status, state,"
        " wake_at) VALUES ($1, $2, $3, 'w', 0, 'running', '{}', $4)",
        f"run-{tenant}",
        tenant,
        topic,
        LONG_AGO,
    )
    await conn.execute(
        "INSERT INTO eventfold.workflow_inbox (key, tenant, topic, kind, event)"
        " VALUES ($1, $2, $3, 'trigger', '{}')",
        f"key-{tenant}",
        tenant,
        topic,
    )


async def _status(api: Api, tenant: TenantApi, action: str, **kw: Any) -> None:
    resp = await api.request("POST", f"/v1/tenants/{tenant.id}/{action}", **kw)
    assert resp.status == 202, await resp.text()
    shown = await tenant.read_json("", (await resp.json())["consistency_token"])
    assert shown["status"] == ("suspended" if action == "suspend" else "active")


async def _claimed(pool: asyncpg.Pool, tenant: str) -> dict[str, bool]:
    """Due work of each kind for ``tenant``, and which claims take it (all rolled back)."""
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        try:
            await _work(conn, tenant)
            return await _claims(conn, tenant)
        finally:
            await tx.rollback()


KINDS = ("webhook", "sync", "run", "inbox")


async def test_a_suspended_tenants_work_waits_until_it_is_resumed(
    api: Api, tenant: TenantApi, pool: asyncpg.Pool
) -> None:
    await _status(api, tenant, "suspend", json={"reason": "maintenance"})
    assert await _claimed(pool, tenant.id) == dict.fromkeys(KINDS, False)
    await _status(api, tenant, "resume")
    assert await _claimed(pool, tenant.id) == dict.fromkeys(KINDS, True)

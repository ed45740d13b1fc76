"""Poison events: dead letters, with every later event of their record behind them, redriven."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest_asyncio
from aiokafka import AIOKafkaProducer

from eventfold.clients import open_pool
from eventfold.settings import Settings
from tests.integration.conftest import Api, TenantApi, topic_records

R = "/collections/orders/records"
EVENTFOLD = str(Path(sys.executable).with_name("eventfold"))
MERGE = {"Content-Type": "application/merge-patch+json"}


@pytest_asyncio.fixture(loop_scope="session")
async def pool(api: Api) -> AsyncIterator[asyncpg.Pool]:
    p = await open_pool(api.settings)
    try:
        yield p
    finally:
        await p.close()


def dlq(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EVENTFOLD_CONSUMER_GROUP_PREFIX": settings.consumer_group_prefix}
    return subprocess.run(
        [EVENTFOLD, "dlq", *args], capture_output=True, text=True, timeout=60, env=env
    )


async def install_bug(pool: asyncpg.Pool, tenant: str) -> None:
    """A projection 'bug': the records table refuses documents with a poison field."""
    async with pool.acquire() as conn:
        await conn.execute(f"""
            CREATE FUNCTION "t_{tenant}".boom() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              IF NEW.data ? 'poison' THEN RAISE EXCEPTION 'boom: cannot store %', NEW.id; END IF;
              RETURN NEW;
            END $$;
            CREATE TRIGGER boom BEFORE INSERT OR UPDATE ON "t_{tenant}".records
              FOR EACH ROW EXECUTE FUNCTION "t_{tenant}".boom();
        """)


async def dead_letters(settings: Settings, tenant: str) -> list[tuple[bytes, dict[str, bytes]]]:
    return [
        (m.value, dict(m.headers))
        for m in await topic_records(settings, settings.dlq_topic)
        if m.key and m.key.startswith(f"{tenant}/".encode()) and m.value is not None
    ]


async def test_a_poison_event_holds_its_record_and_a_redrive_applies_in_order(
    api: Api, tenant: TenantApi, pool: asyncpg.Pool
) -> None:
    await install_bug(pool, tenant.id)
    await tenant.write("PUT", f"{R}/p1", json={"n": 1})
    poison = await tenant.write("PATCH", f"{R}/p1", json={"poison": True}, headers=MERGE)
    behind = await tenant.write("PATCH", f"{R}/p1", json={"after": 1}, headers=MERGE)
    other = await tenant.write("PUT", f"{R}/p2", json={"n": 2})

    # Dead letters do not block their partition: p2, and p1's checkpoint, move on.
    assert (await tenant.read_json(f"{R}/p2", other["consistency_token"]))["version"] == 1
    p1 = await tenant.read_json(f"{R}/p1", behind["consistency_token"])
    assert (p1["version"], p1["data"]) == (1, {"n": 1})
    pending = await tenant.read_json(f"/events/{poison['event_id']}")
    assert pending["status"] == "pending"

    listed = dlq(api.settings, "list", "--tenant", tenant.id, "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [r["event_id"] for r in rows] == [poison["event_id"], behind["event_id"]]
    assert "boom: cannot store p1" in rows[0]["error"]
    assert rows[0]["behind"] is None
    assert rows[1]["behind"] == poison["event_id"]
    assert {r["key"] for r in rows} == {"orders/p1"}

    shown = dlq(api.settings, "show", poison["event_id"], "--json")
    assert json.loads(shown.stdout)["envelope"]["data"] == {"poison": True}

    letters = await dead_letters(api.settings, tenant.id)
    assert [orjson.loads(v)["id"] for v, _ in letters] == [poison["event_id"], behind["event_id"]]
    assert b"boom" in letters[0][1]["eventfold-error"]
    assert letters[1][1]["eventfold-parked-behind"] == poison["event_id"].encode()

    # A later event of the same record waits behind them too.
    later = await tenant.write("PATCH", f"{R}/p1", json={"later": 1}, headers=MERGE)
    await tenant.read_json(f"{R}/p2", later["consistency_token"])
    assert len(json.loads(dlq(api.settings, "list", "--tenant", tenant.id, "--json").stdout)) == 3

    # Redrive before the fix changes nothing and says so.
    early = dlq(api.settings, "redrive", "--tenant", tenant.id, "--json")
    assert early.returncode == 1
    assert json.loads(early.stdout)["still_parked"] == 3

    async with pool.acquire() as conn:
        await conn.execute(f'DROP TRIGGER boom ON "t_{tenant.id}".records')
    dry = dlq(api.settings, "redrive", "--tenant", tenant.id, "--dry-run", "--json")
    assert json.loads(dry.stdout)["applied"] == 3
    assert (await tenant.read_json(f"{R}/p1"))["version"] == 1

    fixed = dlq(api.settings, "redrive", "--tenant", tenant.id, "--json")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    report = json.loads(fixed.stdout)
    assert (report["applied"], report["still_parked"]) == (3, 0)
    p1 = await tenant.read_json(f"{R}/p1")
    assert p1["version"] == 4
    assert p1["data"] == {"n": 1, "poison": True, "after": 1, "later": 1}
    applied = await tenant.read_json(f"/events/{poison['event_id']}")
    assert applied["status"] == "applied"
    assert json.loads(dlq(api.settings, "list", "--tenant", tenant.id, "--json").stdout) == []

    # The record has no dead letters left: the next write applies normally.
    nxt = await tenant.write("PATCH", f"{R}/p1", json={"n": 5}, headers=MERGE)
    assert (await tenant.read_json(f"{R}/p1", nxt["consistency_token"]))["version"] == 5


async def test_undecodable_data_from_a_direct_producer_is_a_dead_letter(
    api: Api, tenant: TenantApi
) -> None:
    """An integration writing straight to Kafka: PostgreSQL cannot store a NUL character."""
    envelope: dict[str, Any] = {
        "specversion": "1.0",
        "id": "nul-1",
        "source": "direct",
        "type": "record.upserted",
        "subject": "orders/n1",
        "tenant": tenant.id,
        "time": datetime.now(UTC).isoformat(),
        "data": {"s": "a\u0000b"},
    }
    producer = AIOKafkaProducer(bootstrap_servers=api.settings.kafka_bootstrap)
    await producer.start()
    try:
        meta = await producer.send_and_wait(
            api.settings.events_topic, orjson.dumps(envelope), key=f"{tenant.id}/orders/n1".encode()
        )
    finally:
        await producer.stop()
    w = await tenant.write("PUT", f"{R}/ok", json={"fine": True})
    from eventfold.consistency import encode

    await tenant.read_json(f"{R}/ok", w["consistency_token"])
    await tenant.read_json(f"{R}/ok", encode({meta.partition: meta.offset}))
    missing = await tenant.read(f"{R}/n1")
    assert missing.status == 404
    rows = json.loads(dlq(api.settings, "list", "--tenant", tenant.id, "--json").stdout)
    assert [r["event_id"] for r in rows] == ["nul-1"]
    assert "UntranslatableCharacter" in rows[0]["error"] or "Unicode" in rows[0]["error"]


async def test_gateway_refuses_nul_characters_at_the_edge(tenant: TenantApi) -> None:
    resp = await tenant.call("PUT", f"{R}/x", data=b'{"s": "a\\u0000b"}')
    assert resp.status == 422
    problem = await resp.json(content_type="application/problem+json")
    assert problem["errors"][0]["path"] == "/s"

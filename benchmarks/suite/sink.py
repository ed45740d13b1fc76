"""The sink the peers share: what a team writes on day one.

One event per PostgreSQL transaction: read the record's row, fold the event
with the same pure fold Eventfold uses, write the row back. The naive aiokafka
consumer and the faust agent both call :func:`apply_event`, so their rows can
be compared with Eventfold's and the difference in speed is the framework's.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

from eventfold.fold import RECORD_TYPES, Record, apply

_EPOCH = datetime.fromtimestamp(0, UTC)


def ddl(schema: str) -> str:
    """The peer's table (one for all tenants) and its idempotency table."""
    return f"""
    DROP SCHEMA IF EXISTS {schema} CASCADE;
    CREATE SCHEMA {schema};
    CREATE TABLE {schema}.records (
        tenant text NOT NULL, collection text NOT NULL, id text NOT NULL,
        version bigint NOT NULL, data jsonb, deleted boolean NOT NULL DEFAULT false,
        PRIMARY KEY (tenant, collection, id));
    CREATE TABLE {schema}.seen (event_id text PRIMARY KEY);
    """


async def apply_event(conn: asyncpg.Connection, schema: str, ev: dict[str, Any]) -> None:
    """Apply one record event in its own transaction (skipped when seen before)."""
    if ev.get("type") not in RECORD_TYPES or not ev.get("tenant"):
        return
    collection, _, rid = ev["subject"].partition("/")
    async with conn.transaction():
        fresh = await conn.fetchval(
            f"INSERT INTO {schema}.seen VALUES ($1) ON CONFLICT DO NOTHING RETURNING true", ev["id"]
        )
        if not fresh:
            return
        row = await conn.fetchrow(
            f"SELECT version, data::text AS data, deleted FROM {schema}.records"
            " WHERE tenant = $1 AND collection = $2 AND id = $3 FOR UPDATE",
            ev["tenant"], collection, rid,
        )  # fmt: skip
        current = None
        if row is not None:
            data = None if row["deleted"] else orjson.loads(row["data"])
            current = Record(row["version"], data, _EPOCH, _EPOCH)
        new, outcome = apply(current, ev["type"], ev.get("data"), at=_EPOCH,
                             expected_version=ev.get("expectedversion"))  # fmt: skip
        if outcome.status != "applied" or new is None:
            return
        await conn.execute(
            f"INSERT INTO {schema}.records (tenant, collection, id, version, data, deleted)"
            " VALUES ($1, $2, $3, $4, $5::jsonb, $6) ON CONFLICT (tenant, collection, id)"
            " DO UPDATE SET version = excluded.version, data = excluded.data,"
            " deleted = excluded.deleted",
            ev["tenant"], collection, rid, new.version,
            orjson.dumps(new.data).decode() if new.data is not None else None, not new.live,
        )  # fmt: skip

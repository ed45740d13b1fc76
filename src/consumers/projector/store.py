"""SQL of the projection: one schema per tenant, read and written a batch at a time.

Every statement names the tenant's schema through :func:`eventfold.ids.tenant_schema`,
which only ever returns a quoted name built from a validated tenant id.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from consumers.projector.fold import Record
from eventfold.ids import tenant_schema
from eventfold.tenancy import tenant_role_ddl

#: The projection's shape; bump it when the tables below change (replay rebuilds).
PROJECTION_VERSION = 1


def tenant_ddl(tenant: str) -> str:
    """DDL creating one tenant's schema, tables, role and grants (idempotent).

    The role (:func:`eventfold.tenancy.tenant_role_ddl`) may read this schema
    and nothing else. Run it under :func:`eventfold.tenancy.tenant_lock` when
    another process may create the same tenant at once.
    """
    s = tenant_schema(tenant)
    return f"""
    CREATE SCHEMA IF NOT EXISTS {s};
    CREATE TABLE IF NOT EXISTS {s}.records (
        collection     text NOT NULL,
        id             text NOT NULL,
        version        bigint NOT NULL,
        data           jsonb,
        created_at     timestamptz NOT NULL,
        updated_at     timestamptz NOT NULL,
        deleted        boolean NOT NULL DEFAULT false,
        last_event_id  text NOT NULL,
        PRIMARY KEY (collection, id)
    );
    CREATE INDEX IF NOT EXISTS records_by_updated
        ON {s}.records (collection, updated_at, id) WHERE NOT deleted;
    CREATE INDEX IF NOT EXISTS records_data
        ON {s}.records USING gin (data jsonb_path_ops) WHERE NOT deleted;
    CREATE TABLE IF NOT EXISTS {s}.events (
        seq         bigserial PRIMARY KEY,
        id          text NOT NULL UNIQUE,
        type        text NOT NULL,
        subject     text,
        time        timestamptz NOT NULL,
        status      text NOT NULL,
        reason      text,
        partition   integer NOT NULL,
        "offset"    bigint NOT NULL,
        envelope    jsonb NOT NULL
    );
    CREATE INDEX IF NOT EXISTS events_by_type ON {s}.events (type, seq);
    CREATE INDEX IF NOT EXISTS events_by_subject ON {s}.events (subject, seq);
    -- The shape this schema was built with (a rebuild sets it when it swaps in).
    INSERT INTO eventfold.projection_versions (tenant, version)
        VALUES ('{tenant}', {PROJECTION_VERSION}) ON CONFLICT (tenant) DO NOTHING;
    """ + tenant_role_ddl(tenant)


async def outdated_tenants(conn: asyncpg.Connection) -> dict[str, int]:
    """Tenants whose schema was built by another :data:`PROJECTION_VERSION`, with that version.

    Schemas from before versions were recorded count as version 1.
    """
    rows = await conn.fetch(
        """SELECT t.id, coalesce(v.version, 1) AS version
           FROM eventfold.tenants t LEFT JOIN eventfold.projection_versions v ON v.tenant = t.id
           WHERE coalesce(v.version, 1) <> $1 ORDER BY t.id""",
        PROJECTION_VERSION,
    )
    return {r["id"]: r["version"] for r in rows}


@dataclass(frozen=True, slots=True)
class HistoryRow:
    """One event as it enters a tenant's event history."""

    id: str
    type: str
    subject: str | None
    time: datetime
    status: str
    reason: str | None
    partition: int
    offset: int
    #: The envelope as JSON text.
    envelope: str


async def existing_tenants(conn: asyncpg.Connection, tenants: Iterable[str]) -> set[str]:
    """Which of ``tenants`` have been created."""
    rows = await conn.fetch(
        "SELECT id FROM eventfold.tenants WHERE id = ANY($1::text[])", list(tenants)
    )
    return {r["id"] for r in rows}


async def create_tenant(
    conn: asyncpg.Connection,
    *,
    tenant: str,
    name: str,
    limits: dict[str, Any],
    created_at: datetime,
    event_id: str,
) -> None:
    """Create the tenant's schema and register it (inside the batch transaction)."""
    await conn.execute(tenant_ddl(tenant))
    await conn.execute(
        "INSERT INTO eventfold.tenants (id, name, status, limits, created_at, event_id)"
        " VALUES ($1, $2, 'active', $3, $4, $5)"
        # A rebuild folds tenant.created again into a shadow schema: the platform row stays.
        " ON CONFLICT (id) DO NOTHING",
        tenant,
        name,
        limits,
        created_at,
        event_id,
    )


async def known_event_ids(conn: asyncpg.Connection, tenant: str, ids: Sequence[str]) -> set[str]:
    """Which of ``ids`` are in the tenant's history already (duplicates to skip)."""
    rows = await conn.fetch(
        f"SELECT id FROM {tenant_schema(tenant)}.events WHERE id = ANY($1::text[])", list(ids)
    )
    return {r["id"] for r in rows}


async def load_records(
    conn: asyncpg.Connection, tenant: str, keys: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], Record]:
    """Current state of the given ``(collection, id)`` keys, tombstones included."""
    if not keys:
        return {}
    rows = await conn.fetch(
        f"""SELECT r.collection, r.id, r.version, r.data, r.created_at, r.updated_at, r.deleted
            FROM {tenant_schema(tenant)}.records r
            JOIN unnest($1::text[], $2::text[]) AS k(collection, id)
              ON r.collection = k.collection AND r.id = k.id""",
        [k[0] for k in keys],
        [k[1] for k in keys],
    )
    return {
        (r["collection"], r["id"]): Record(
            version=r["version"],
            data=None if r["deleted"] else r["data"],
            created_at=r["created_at"],
            updated_at=r["updated_at"],
        )
        for r in rows
    }


async def save_records(
    conn: asyncpg.Connection,
    tenant: str,
    changed: dict[tuple[str, str], tuple[Record, str]],
) -> None:
    """Write the changed records (state and last event id) in one statement."""
    if not changed:
        return
    cols: list[list[Any]] = [[], [], [], [], [], [], [], []]
    for (collection, record_id), (rec, event_id) in changed.items():
        for col, value in zip(
            cols,
            (
                collection,
                record_id,
                rec.version,
                None if rec.data is None else orjson.dumps(rec.data).decode(),
                rec.created_at,
                rec.updated_at,
                not rec.live,
                event_id,
            ),
            strict=True,
        ):
            col.append(value)
    await conn.execute(
        f"""INSERT INTO {tenant_schema(tenant)}.records AS r
              (collection, id, version, data, created_at, updated_at, deleted, last_event_id)
            SELECT c, i, v, d::jsonb, ca, ua, del, e
            FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[],
                        $5::timestamptz[], $6::timestamptz[], $7::boolean[], $8::text[])
                 AS u(c, i, v, d, ca, ua, del, e)
            ON CONFLICT (collection, id) DO UPDATE SET
              version = EXCLUDED.version, data = EXCLUDED.data,
              created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at,
              deleted = EXCLUDED.deleted, last_event_id = EXCLUDED.last_event_id""",
        *cols,
    )


async def append_history(conn: asyncpg.Connection, tenant: str, rows: Sequence[HistoryRow]) -> None:
    """Append events to the tenant's history, in the order given."""
    if not rows:
        return
    await conn.execute(
        f"""INSERT INTO {tenant_schema(tenant)}.events
              (id, type, subject, time, status, reason, partition, "offset", envelope)
            SELECT i, t, s, tm, st, rs, p, o, env::jsonb
            FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[],
                        $6::text[], $7::integer[], $8::bigint[], $9::text[])
                 WITH ORDINALITY AS u(i, t, s, tm, st, rs, p, o, env, n)
            ORDER BY n""",
        [r.id for r in rows],
        [r.type for r in rows],
        [r.subject for r in rows],
        [r.time for r in rows],
        [r.status for r in rows],
        [r.reason for r in rows],
        [r.partition for r in rows],
        [r.offset for r in rows],
        [r.envelope for r in rows],
    )


async def lock_checkpoints(
    conn: asyncpg.Connection, consumer: str, topic: str, partitions: Sequence[int]
) -> dict[int, int]:
    """Lock and read the checkpoints of ``partitions`` for this batch's transaction.

    The row lock fences a processor that lost its partitions in a rebalance but
    is still committing a batch: whichever commits second sees the first's
    checkpoint and skips what is already applied.
    """
    await conn.execute(
        """INSERT INTO eventfold.checkpoints (consumer, topic, partition, next_offset)
           SELECT $1, $2, p, 0 FROM unnest($3::integer[]) AS p
           ON CONFLICT DO NOTHING""",
        consumer,
        topic,
        list(partitions),
    )
    rows = await conn.fetch(
        """SELECT partition, next_offset FROM eventfold.checkpoints
           WHERE consumer = $1 AND topic = $2 AND partition = ANY($3::integer[])
           ORDER BY partition FOR UPDATE""",
        consumer,
        topic,
        list(partitions),
    )
    return {r["partition"]: r["next_offset"] for r in rows}


async def save_checkpoints(
    conn: asyncpg.Connection, consumer: str, topic: str, positions: dict[int, int]
) -> None:
    """Store ``{partition: next_offset}`` (within the batch's transaction)."""
    await conn.execute(
        """UPDATE eventfold.checkpoints c SET next_offset = u.o, updated_at = now()
           FROM unnest($3::integer[], $4::bigint[]) AS u(p, o)
           WHERE c.consumer = $1 AND c.topic = $2 AND c.partition = u.p""",
        consumer,
        topic,
        list(positions),
        list(positions.values()),
    )

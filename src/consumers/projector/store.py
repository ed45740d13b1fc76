"""SQL of the projection: one schema per tenant, read and written a batch at a time.

Every statement names the tenant's schema through :func:`eventfold.ids.tenant_schema`,
which only ever returns a quoted name built from a validated tenant id.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from consumers.projector.fold import Record
from eventfold.db import CHECKPOINT_CHANNEL
from eventfold.ids import tenant_schema
from eventfold.tenancy import tenant_role_ddl
from eventfold.workflows.tables import tenant_ddl as workflow_tables

#: The projection's shape; bump it when the tables below change (replay rebuilds).
PROJECTION_VERSION = 1
#: A checkpoint notification longer than this names no deferred tenants ("*"):
#: PostgreSQL refuses a NOTIFY payload of 8,000 bytes or more.
NOTIFY_PAYLOAD_LIMIT = 7_000


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
        -- json, not jsonb: stored as the log's text after a validity check, read
        -- whole and never queried inside. jsonb's parse into its binary form was a
        -- third of the cost of appending to the history. Schemas built before keep
        -- jsonb (the insert's json casts to it on assignment); reads see a dict either way.
        envelope    json NOT NULL
    );
    CREATE INDEX IF NOT EXISTS events_by_type ON {s}.events (type, seq);
    CREATE INDEX IF NOT EXISTS events_by_subject ON {s}.events (subject, seq);
    -- The shape this schema was built with (a rebuild sets it when it swaps in).
    {workflow_tables(s)}
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


async def tenant_status(conn: asyncpg.Connection, tenants: Sequence[str]) -> dict[str, bool]:
    """Which of ``tenants`` have a schema, and whether each is registered.

    Maps every tenant whose schema exists to whether it is registered (its
    ``tenant.created`` applied); tenants missing from the answer have no schema.
    One round trip for the whole batch.
    """
    rows = await conn.fetch(
        """SELECT u.t AS tenant, (r.id IS NOT NULL) AS registered
           FROM unnest($1::text[]) AS u(t)
           JOIN pg_namespace n ON n.nspname = 't_' || u.t
           LEFT JOIN eventfold.tenants r ON r.id = u.t""",
        list(tenants),
    )
    return {r["tenant"]: r["registered"] for r in rows}


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


@dataclass(slots=True)
class TenantState:
    """What a batch needs to know of one tenant before folding its events."""

    #: Ids of the batch's events already in the tenant's history (duplicates to skip).
    seen: set[str]
    #: Current state of the batch's records, tombstones included.
    records: dict[tuple[str, str], Record]


async def load_state(
    conn: asyncpg.Connection,
    tenant: str,
    event_ids: Sequence[str],
    keys: Sequence[tuple[str, str]],
) -> TenantState:
    """The known event ids and the current records of one tenant, in one statement.

    A batch touches every tenant in it: one round trip a tenant instead of two
    is a third of the projector's statements.
    """
    rows = await conn.fetch(
        f"""SELECT NULL::text AS collection, e.id, NULL::bigint AS version, NULL::jsonb AS data,
                   NULL::timestamptz AS created_at, NULL::timestamptz AS updated_at,
                   NULL::boolean AS deleted
            FROM {tenant_schema(tenant)}.events e WHERE e.id = ANY($1::text[])
            UNION ALL
            SELECT r.collection, r.id, r.version, r.data, r.created_at, r.updated_at, r.deleted
            FROM {tenant_schema(tenant)}.records r
            JOIN unnest($2::text[], $3::text[]) AS k(collection, id)
              ON r.collection = k.collection AND r.id = k.id""",
        list(event_ids),
        [k[0] for k in keys],
        [k[1] for k in keys],
    )
    state = TenantState(seen=set(), records={})
    for r in rows:
        if r["collection"] is None:  # records.collection is NOT NULL: an event id row
            state.seen.add(r["id"])
            continue
        state.records[(r["collection"], r["id"])] = Record(
            version=r["version"],
            data=None if r["deleted"] else r["data"],
            created_at=r["created_at"],
            updated_at=r["updated_at"],
        )
    return state


async def save(
    conn: asyncpg.Connection,
    tenant: str,
    changed: dict[tuple[str, str], tuple[Record, str]],
    history: Sequence[HistoryRow],
) -> dict[str, int]:
    """Write the changed records and append ``history`` (in order) in one statement.

    Returns each appended event's ``seq`` (its place in the tenant's history,
    the SSE id) by event id. The records are upserted by a data-modifying CTE,
    which PostgreSQL runs exactly once whether or not the outer insert reads it.
    """
    if not history:
        return {}
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
    s = tenant_schema(tenant)
    rows = await conn.fetch(
        f"""WITH saved AS (
              INSERT INTO {s}.records AS r
                (collection, id, version, data, created_at, updated_at, deleted, last_event_id)
              SELECT c, i, v, d::jsonb, ca, ua, del, e
              FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[],
                          $5::timestamptz[], $6::timestamptz[], $7::boolean[], $8::text[])
                   AS u(c, i, v, d, ca, ua, del, e)
              ON CONFLICT (collection, id) DO UPDATE SET
                version = EXCLUDED.version, data = EXCLUDED.data,
                created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at,
                deleted = EXCLUDED.deleted, last_event_id = EXCLUDED.last_event_id
            )
            INSERT INTO {s}.events
              (id, type, subject, time, status, reason, partition, "offset", envelope)
            SELECT i, t, s, tm, st, rs, p, o, env::json
            FROM unnest($9::text[], $10::text[], $11::text[], $12::timestamptz[], $13::text[],
                        $14::text[], $15::integer[], $16::bigint[], $17::text[])
                 WITH ORDINALITY AS u(i, t, s, tm, st, rs, p, o, env, n)
            ORDER BY n
            RETURNING seq, id""",
        *cols,
        [r.id for r in history],
        [r.type for r in history],
        [r.subject for r in history],
        [r.time for r in history],
        [r.status for r in history],
        [r.reason for r in history],
        [r.partition for r in history],
        [r.offset for r in history],
        [r.envelope for r in history],
    )
    return {r["id"]: r["seq"] for r in rows}


async def lock_checkpoints(
    conn: asyncpg.Connection, consumer: str, topic: str, partitions: Sequence[int]
) -> dict[int, int]:
    """Lock and read the checkpoints of ``partitions`` for this batch's transaction.

    The row lock fences a processor that lost its partitions in a rebalance but
    is still committing a batch: whichever commits second sees the first's
    checkpoint and skips what is already applied.
    """
    # One statement: the no-op DO UPDATE locks an existing row like FOR UPDATE
    # would, and RETURNING gives its stored offset (0 for a row just created).
    # Rows are taken in partition order, so two batches never lock crosswise.
    rows = await conn.fetch(
        """INSERT INTO eventfold.checkpoints AS c (consumer, topic, partition, next_offset)
           SELECT $1, $2, p, 0 FROM unnest($3::integer[]) AS p ORDER BY p
           ON CONFLICT (consumer, topic, partition)
             DO UPDATE SET next_offset = c.next_offset
           RETURNING partition, next_offset""",
        consumer,
        topic,
        sorted(partitions),
    )
    return {r["partition"]: r["next_offset"] for r in rows}


async def save_checkpoints(
    conn: asyncpg.Connection,
    consumer: str,
    topic: str,
    positions: dict[int, int],
    deferred: Collection[str] = (),
) -> None:
    """Store ``{partition: next_offset}`` and tell waiting readers, in one statement.

    Within the batch's transaction: the notification on
    :data:`~eventfold.db.CHECKPOINT_CHANNEL` is delivered at commit, so a reader
    woken by it sees the batch. It also names the tenants whose events the batch
    ``deferred`` (``"d"``; ``"*"`` when too many to list): readers then look for
    deferred events only for those tenants (see :mod:`eventfold.checkpoints`).
    """
    doc: dict[str, object] = {"t": topic, "c": consumer, "p": positions, "d": sorted(deferred)}
    payload = orjson.dumps(doc, option=orjson.OPT_NON_STR_KEYS).decode()
    if len(payload) > NOTIFY_PAYLOAD_LIMIT:
        payload = orjson.dumps({**doc, "d": "*"}, option=orjson.OPT_NON_STR_KEYS).decode()
    await conn.execute(
        """WITH saved AS (
             UPDATE eventfold.checkpoints c SET next_offset = u.o, updated_at = now()
             FROM unnest($3::integer[], $4::bigint[]) AS u(p, o)
             WHERE c.consumer = $1 AND c.topic = $2 AND c.partition = u.p
           )
           SELECT pg_notify($5, $6)""",
        consumer,
        topic,
        list(positions),
        list(positions.values()),
        CHECKPOINT_CHANNEL,
        payload,
    )

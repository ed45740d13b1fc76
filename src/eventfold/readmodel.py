"""The read model: every tenant's tables (records, event history) and all of their SQL.

Each tenant's projection is one PostgreSQL schema, ``"t_<tenant>"``
(:func:`eventfold.ids.tenant_schema`), holding ``records`` (the current state
of each record, tombstones included) and ``events`` (the tenant's event
history, each event with its status and, via ``seq``, its place: the SSE id).
This module is the only one that names them: the projector and the rebuild
write through it (:func:`tenant_ddl`, :func:`create_tenant`, :func:`load_state`,
:func:`save_many`), the API, the gateway, the cache, the notifier and the CLI read
through it, and ``eventfold verify`` compares through it (:func:`compare`).

The schema also holds the workflow tables (definitions, versions, runs and their
steps), whose shape and SQL are :mod:`eventfold.workflows.tables` (the workflow
feature's kernel part); :func:`tenant_ddl` creates them with the rest.

Every function that touches a tenant's tables takes the quoted schema it works
on: :func:`schema_of` for the live one, or a rebuild's shadow
(:func:`shadow_schema`), passed down explicitly; nothing redirects the names
behind the caller's back. Reads of the live schema run on a connection from
:func:`eventfold.tenancy.tenant_connection` (read-only, as the tenant's role).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from eventfold.errors import FieldError, ValidationFailed
from eventfold.fold import Record
from eventfold.ids import shadow_schema_name, tenant_schema
from eventfold.tenancy import tenant_role_ddl
from eventfold.workflows.tables import tenant_ddl as workflow_tables

#: The projection's shape; bump it when the tables below change (replay rebuilds).
PROJECTION_VERSION = 1
#: Indexes of the tenant tables not needed while a rebuild folds (built once at its end).
SECONDARY_INDEXES = ("records_by_updated", "records_data", "events_by_type", "events_by_subject")
#: The columns of a record as ``GET …/records`` answers it.
RECORD_COLUMNS = "id, collection, version, data, created_at, updated_at"


# -- naming -------------------------------------------------------------------


def schema_of(tenant: str) -> str:
    """The quoted live schema of ``tenant`` (validated): ``"t_<tenant>"``."""
    return tenant_schema(tenant)


def shadow_schema(tenant: str, purpose: str) -> str:
    """The quoted internal schema a rebuild (``rebuild``) or a verify (``verify``) folds into."""
    return f'"{shadow_schema_name(tenant, purpose)}"'


@dataclass(frozen=True, slots=True)
class Target:
    """Where a tenant's events are folded: its live schema, or a rebuild's shadow.

    The fold (:mod:`eventfold.projection.batch`) hands it to every step: this
    module's SQL runs against ``schema``, and the handlers of gateway events write
    the platform tables, or inside a shadow the shadow's copies of them
    (:mod:`eventfold.projection.platform`). Passed down explicitly: nothing
    redirects the names behind the fold's back.
    """

    tenant: str
    #: The quoted schema holding the tenant's tables for this fold.
    schema: str
    #: A rebuild's (or verify's) shadow: the live side (platform tables, the notifier's
    #: position, API key notifications) is left alone.
    shadow: bool = False
    #: The topic the folded events come from (an integration records it).
    topic: str = ""

    @classmethod
    def live(cls, tenant: str, topic: str = "") -> Target:
        """The tenant's live schema."""
        return cls(tenant, schema_of(tenant), topic=topic)

    @classmethod
    def rebuild(cls, tenant: str, schema: str, topic: str = "") -> Target:
        """A shadow ``schema`` (quoted) of the tenant, folded by a rebuild or a verify."""
        return cls(tenant, schema, shadow=True, topic=topic)


# -- shape --------------------------------------------------------------------


def tenant_ddl(tenant: str, schema: str | None = None) -> str:
    """DDL creating one tenant's tables in ``schema`` (default: its live schema), its role
    and grants (idempotent).

    The role (:func:`eventfold.tenancy.tenant_role_ddl`) may read this schema
    and nothing else. Run it under :func:`eventfold.tenancy.tenant_lock` when
    another process may create the same tenant at once.
    """
    s = schema or schema_of(tenant)
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
    {workflow_tables(s)}
    -- The shape this schema was built with (a rebuild sets it when it swaps in).
    INSERT INTO eventfold.projection_versions (tenant, version)
        VALUES ('{tenant}', {PROJECTION_VERSION}) ON CONFLICT (tenant) DO NOTHING;
    """ + tenant_role_ddl(tenant, s)


async def outdated_tenants(conn: asyncpg.Connection) -> dict[str, int]:
    """Tenants whose schema was built by another :data:`PROJECTION_VERSION`, with that version.

    Schemas from before versions were recorded count as version 1.
    """
    rows = await conn.fetch(
        """SELECT t.id, coalesce(v.version, 1) AS version
           FROM eventfold.tenants t LEFT JOIN eventfold.projection_versions v ON v.tenant = t.id
           WHERE coalesce(v.version, 1) <> $1 AND t.status <> 'deleted' ORDER BY t.id""",
        PROJECTION_VERSION,
    )
    return {r["id"]: r["version"] for r in rows}


async def tenant_status(
    conn: asyncpg.Connection, tenants: Sequence[str]
) -> tuple[dict[str, bool], set[str]]:
    """Which of ``tenants`` have a live schema (and whether each is registered), and
    which were deleted.

    The first part maps every tenant whose schema exists to whether it is
    registered (its ``tenant.created`` applied); tenants missing from it have no
    schema. The second holds the deleted ones (their schema is gone for good).
    One round trip for the whole batch.
    """
    rows = await conn.fetch(
        """SELECT u.t AS tenant, (r.id IS NOT NULL) AS registered, n.oid IS NOT NULL AS schema,
                  coalesce(r.status = 'deleted', false) AS deleted
           FROM unnest($1::text[]) AS u(t)
           LEFT JOIN pg_namespace n ON n.nspname = 't_' || u.t
           LEFT JOIN eventfold.tenants r ON r.id = u.t
           WHERE n.oid IS NOT NULL OR r.status = 'deleted'""",
        list(tenants),
    )
    return (
        {r["tenant"]: r["registered"] for r in rows if r["schema"] and not r["deleted"]},
        {r["tenant"] for r in rows if r["deleted"]},
    )


async def deleted_tenants(conn: asyncpg.Connection, tenants: Iterable[str]) -> set[str]:
    """Which of ``tenants`` were deleted (their ids are never used again)."""
    rows = await conn.fetch(
        "SELECT id FROM eventfold.tenants WHERE id = ANY($1::text[]) AND status = 'deleted'",
        list(tenants),
    )
    return {r["id"] for r in rows}


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
    schema: str,
    name: str,
    limits: dict[str, Any],
    created_at: datetime,
    event_id: str,
) -> None:
    """Create the tenant's tables in ``schema`` and register it (inside the batch transaction)."""
    await conn.execute(tenant_ddl(tenant, schema))
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


# -- the fold's writes ----------------------------------------------------------


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


@dataclass(slots=True)
class TenantState:
    """What a batch needs to know of one tenant before folding its events."""

    #: Ids of the batch's events already in the tenant's history (duplicates to skip).
    seen: set[str] = field(default_factory=set)
    #: Current state of the batch's records, tombstones included.
    records: dict[tuple[str, str], Record] = field(default_factory=dict)


async def load_state(
    conn: asyncpg.Connection,
    schema: str,
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
            FROM {schema}.events e WHERE e.id = ANY($1::text[])
            UNION ALL
            SELECT r.collection, r.id, r.version, r.data, r.created_at, r.updated_at, r.deleted
            FROM {schema}.records r
            JOIN unnest($2::text[], $3::text[]) AS k(collection, id)
              ON r.collection = k.collection AND r.id = k.id""",
        list(event_ids),
        [k[0] for k in keys],
        [k[1] for k in keys],
    )
    state = TenantState()
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


async def erase_history_data(conn: asyncpg.Connection, schema: str, subject: str) -> None:
    """Drop the ``data`` of every history row of ``subject`` in ``schema`` (an erasure)."""
    await conn.execute(
        f"UPDATE {schema}.events SET envelope = (envelope::jsonb - 'data')::json"
        " WHERE subject = $1 AND (envelope::jsonb) ? 'data'",
        subject,
    )


#: What :func:`save_many` writes for one tenant: its schema, changed records, history.
TenantWrites = tuple[str, dict[tuple[str, str], tuple[Record, str]], Sequence[HistoryRow]]
#: Parameters per tenant in :func:`save_many`'s statement (8 record columns, 9 history).
_SAVE_PARAMS = 17
#: Tenants per statement (3,400 parameters; PostgreSQL takes 65,535): a bound on its size.
_SAVE_TENANTS = 200


async def save_many(
    conn: asyncpg.Connection, writes: Sequence[TenantWrites]
) -> list[dict[str, int]]:
    """Write each tenant's changed records and append its history (in order), all in
    one statement; per tenant, the ``seq`` of each appended event (its place in the
    tenant's history, the SSE id) by id, empty for a tenant with no history. The
    records are upserted by data-modifying CTEs, which PostgreSQL runs exactly once
    whether or not the statement reads them.

    A batch touches dozens of tenants, each in a schema of its own: one statement
    for all of them instead of one each (~1 ms of fixed cost per statement and a
    pass of the event loop) is about a fifth of the projector's time. Each tenant
    keeps its own pair of data-modifying CTEs; the statement's text depends on the
    schemas, so the tenants come in the order given (the batch's, stable).
    """
    out: list[dict[str, int]] = [{} for _ in writes]
    todo = [n for n, (_, _, history) in enumerate(writes) if history]
    for first in range(0, len(todo), _SAVE_TENANTS):
        part = todo[first : first + _SAVE_TENANTS]
        ctes: list[str] = []
        selects: list[str] = []
        args: list[Any] = []
        for k, n in enumerate(part):
            schema, changed, history = writes[n]
            b = k * _SAVE_PARAMS
            ctes.append(_save_ctes(schema, k, b))
            selects.append(f"SELECT {k} AS k, seq, id FROM e{k}")
            args += _save_args(changed, history)
        rows = await conn.fetch(f"WITH {', '.join(ctes)} {' UNION ALL '.join(selects)}", *args)
        for r in rows:
            out[part[r["k"]]][r["id"]] = r["seq"]
    return out


def _save_ctes(schema: str, k: int, b: int) -> str:
    """The two CTEs writing one tenant (``r{k}``, ``e{k}``), from parameters past ``b``."""
    p = [f"${b + i}" for i in range(1, _SAVE_PARAMS + 1)]
    return f"""r{k} AS (
          INSERT INTO {schema}.records AS r
            (collection, id, version, data, created_at, updated_at, deleted, last_event_id)
          SELECT c, i, v, d::jsonb, ca, ua, del, e
          FROM unnest({p[0]}::text[], {p[1]}::text[], {p[2]}::bigint[], {p[3]}::text[],
                      {p[4]}::timestamptz[], {p[5]}::timestamptz[], {p[6]}::boolean[],
                      {p[7]}::text[])
               AS u(c, i, v, d, ca, ua, del, e)
          ON CONFLICT (collection, id) DO UPDATE SET
            version = EXCLUDED.version, data = EXCLUDED.data,
            created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at,
            deleted = EXCLUDED.deleted, last_event_id = EXCLUDED.last_event_id
        ), e{k} AS (
          INSERT INTO {schema}.events
            (id, type, subject, time, status, reason, partition, "offset", envelope)
          SELECT i, t, s, tm, st, rs, p, o, env::json
          FROM unnest({p[8]}::text[], {p[9]}::text[], {p[10]}::text[], {p[11]}::timestamptz[],
                      {p[12]}::text[], {p[13]}::text[], {p[14]}::integer[], {p[15]}::bigint[],
                      {p[16]}::text[])
               WITH ORDINALITY AS u(i, t, s, tm, st, rs, p, o, env, n)
          ORDER BY n
          RETURNING seq, id
        )"""


def _save_args(
    changed: dict[tuple[str, str], tuple[Record, str]], history: Sequence[HistoryRow]
) -> list[list[Any]]:
    """The 17 array parameters of one tenant's CTEs (records, then history)."""
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
    return [
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
    ]


async def last_event(conn: asyncpg.Connection, schema: str) -> tuple[int, str] | None:
    """``(seq, id)`` of the newest event in the history of ``schema`` (None when empty)."""
    row = await conn.fetchrow(f"SELECT seq, id FROM {schema}.events ORDER BY seq DESC LIMIT 1")
    return (int(row["seq"]), str(row["id"])) if row is not None else None


# -- reads ----------------------------------------------------------------------


async def read_record(
    conn: asyncpg.Connection, tenant: str, collection: str, record_id: str
) -> asyncpg.Record | None:
    """One record's row (:data:`RECORD_COLUMNS` and ``deleted``), tombstones included."""
    row: asyncpg.Record | None = await conn.fetchrow(
        f"SELECT {RECORD_COLUMNS}, deleted FROM {schema_of(tenant)}.records"
        " WHERE collection = $1 AND id = $2",
        collection,
        record_id,
    )
    return row


async def record_version(
    conn: asyncpg.Connection, tenant: str, collection: str, record_id: str
) -> int | None:
    """The projected version of one record (deleted ones keep counting); None when absent."""
    version: int | None = await conn.fetchval(
        f"SELECT version FROM {schema_of(tenant)}.records WHERE collection = $1 AND id = $2",
        collection,
        record_id,
    )
    return version


async def committed_records(
    conn: asyncpg.Connection, tenant: str, keys: Sequence[tuple[str, str]]
) -> list[asyncpg.Record]:
    """The rows of ``keys`` (``(collection, id)``) as committed, tombstones included."""
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT collection, id, version, data, created_at, updated_at, deleted"
        f" FROM {schema_of(tenant)}.records"
        " WHERE (collection, id) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
        [c for c, _ in keys],
        [i for _, i in keys],
    )
    return rows


#: ``order`` of a record list → (column, direction).
RECORD_ORDERS = {
    "id": ("id", "ASC"),
    "-id": ("id", "DESC"),
    "updated_at": ("updated_at", "ASC"),
    "-updated_at": ("updated_at", "DESC"),
}


def list_query(
    tenant: str,
    collection: str,
    order: str,
    filters: list[tuple[str, str]],
    position: Any,
    limit: int,
) -> tuple[str, list[Any]]:
    """The SQL and parameters of one page (``limit + 1`` rows: one more tells if there is a next).

    ``position`` is the decoded cursor (None for the first page); ``order`` one of
    :data:`RECORD_ORDERS`, ``filters`` validated ``(field, text)`` pairs.
    """
    column, direction = RECORD_ORDERS[order]
    params: list[Any] = [collection]
    where = ["collection = $1", "NOT deleted"]
    for name, value in filters:
        # Containment is what the GIN index (records_data) answers: one probe per JSON
        # value the text may mean. The text comparison after it keeps the meaning exact
        # (data->>field equals the text form: "3" matches 3, not 3.0; "true" matches true).
        probes = []
        for candidate in _filter_candidates(value):
            # As text, cast in SQL: the pool's jsonb codec would encode a str once more.
            params.append(json.dumps({name: candidate}))
            probes.append(f"data @> ${len(params)}::text::jsonb")
        params += [name, value]
        where.append(f"({' OR '.join(probes)})")
        where.append(f"data->>${len(params) - 1} = ${len(params)}")
    cmp = ">" if direction == "ASC" else "<"
    if position is not None:
        if column == "id":
            params.append(_str(position))
            where.append(f"id {cmp} ${len(params)}")
        else:
            stamp, last_id = _pair(position)
            params += [stamp, last_id]
            where.append(f"(updated_at, id) {cmp} (${len(params) - 1}, ${len(params)})")
    order_sql = f"id {direction}" if column == "id" else f"updated_at {direction}, id {direction}"
    params.append(limit + 1)
    sql = (
        f"SELECT {RECORD_COLUMNS} FROM {schema_of(tenant)}.records"
        f" WHERE {' AND '.join(where)} ORDER BY {order_sql} LIMIT ${len(params)}"
    )
    return sql, params


async def list_records(
    conn: asyncpg.Connection,
    tenant: str,
    collection: str,
    order: str,
    filters: list[tuple[str, str]],
    position: Any,
    limit: int,
) -> list[asyncpg.Record]:
    """One page of a collection's live records (``limit + 1`` rows, see :func:`list_query`)."""
    sql, params = list_query(tenant, collection, order, filters, position, limit)
    rows: list[asyncpg.Record] = await conn.fetch(sql, *params)
    return rows


def _filter_candidates(text: str) -> list[Any]:
    """The JSON values whose text form may be ``text``: the string, and what it parses as."""
    out: list[Any] = [text]
    try:
        # json (not orjson): integers of any size; NaN/Infinity are not JSON and stay strings.
        parsed = json.loads(text, parse_constant=_no_constant)
    except ValueError:
        return out
    if parsed is not None and not isinstance(parsed, str):
        out.append(parsed)
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(name)


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValidationFailed("bad cursor", errors=[FieldError("/after", "invalid cursor")])
    return value


def _pair(value: Any) -> tuple[datetime, str]:
    try:
        stamp, last_id = value
        return datetime.fromisoformat(stamp), _str(last_id)
    except (TypeError, ValueError):
        raise ValidationFailed(
            "bad cursor", errors=[FieldError("/after", "invalid cursor")]
        ) from None


async def list_collections(
    conn: asyncpg.Connection, tenant: str, after: str, limit: int
) -> list[str]:
    """Up to ``limit`` names of collections holding a live record, after ``after``, in order."""
    s = schema_of(tenant)
    # The recursive part walks the distinct names in index order; the outer query
    # pulls only as many as the page needs.
    sql = f"""
        WITH RECURSIVE c(name) AS (
            (SELECT collection FROM {s}.records WHERE collection > $1
             ORDER BY collection LIMIT 1)
            UNION ALL
            SELECT (SELECT collection FROM {s}.records WHERE collection > c.name
                    ORDER BY collection LIMIT 1)
            FROM c WHERE c.name IS NOT NULL
        )
        SELECT name FROM c
        WHERE name IS NOT NULL
          AND EXISTS (SELECT 1 FROM {s}.records r WHERE r.collection = c.name AND NOT r.deleted)
        LIMIT $2"""
    return [r["name"] for r in await conn.fetch(sql, after, limit)]


async def history_page(
    conn: asyncpg.Connection,
    tenant: str,
    *,
    event_type: str | None = None,
    subject: str | None = None,
    actor: str | None = None,
    after: int | None = None,
    newest_first: bool = False,
    limit: int = 50,
) -> list[asyncpg.Record]:
    """Up to ``limit`` history rows (``seq, envelope, status, reason``), oldest first (or newest
    first), past the ``seq`` ``after``, narrowed by type, subject and actor.

    The actor is read from the envelope (no column of its own: schemas built
    before it existed need no migration), so narrowing by it walks the history
    in ``seq`` order until the page is full.
    """
    params: list[Any] = []
    where: list[str] = []
    for column, value in (
        ("type", event_type),
        ("subject", subject),
        ("envelope->>'actor'", actor),
    ):
        if value is not None:
            params.append(value)
            where.append(f"{column} = ${len(params)}")
    if after is not None:
        params.append(after)
        where.append(f"seq {'<' if newest_first else '>'} ${len(params)}")
    params.append(limit)
    sql = (
        f"SELECT seq, envelope, status, reason FROM {schema_of(tenant)}.events"
        f"{' WHERE ' + ' AND '.join(where) if where else ''}"
        f" ORDER BY seq {'DESC' if newest_first else 'ASC'} LIMIT ${len(params)}"
    )
    rows: list[asyncpg.Record] = await conn.fetch(sql, *params)
    return rows


async def history_event(
    conn: asyncpg.Connection, tenant: str, event_id: str
) -> asyncpg.Record | None:
    """One event of the history (``envelope, status, reason``) by id."""
    row: asyncpg.Record | None = await conn.fetchrow(
        f"SELECT envelope, status, reason FROM {schema_of(tenant)}.events WHERE id = $1",
        event_id,
    )
    return row


async def applied_after(
    conn: asyncpg.Connection, tenant: str, seq: int, limit: int
) -> list[asyncpg.Record]:
    """Up to ``limit`` applied events past ``seq`` (``seq, envelope, status, reason``), in order:
    what a stream resuming with ``Last-Event-ID`` missed."""
    rows: list[asyncpg.Record] = await conn.fetch(
        f"SELECT seq, envelope, status, reason FROM {schema_of(tenant)}.events"
        " WHERE seq > $1 AND status = 'applied' ORDER BY seq LIMIT $2",
        seq,
        limit,
    )
    return rows


async def events_after(
    conn: asyncpg.Connection, tenant: str, seq: int, limit: int
) -> list[asyncpg.Record]:
    """Up to ``limit`` events past ``seq`` (``seq, id, type, subject, status, envelope``), in
    order, whatever their status: the notifier's walk of the history."""
    rows: list[asyncpg.Record] = await conn.fetch(
        f"SELECT seq, id, type, subject, status, envelope"
        f" FROM {schema_of(tenant)}.events WHERE seq > $1 ORDER BY seq LIMIT $2",
        seq,
        limit,
    )
    return rows


async def seq_of(conn: asyncpg.Connection, tenant: str, event_id: str) -> int | None:
    """Where event ``event_id`` sits in the tenant's history now (None when it is not there)."""
    found = await conn.fetchval(
        f"SELECT seq FROM {schema_of(tenant)}.events WHERE id = $1", event_id
    )
    return None if found is None else int(found)


async def last_seq(conn: asyncpg.Connection, tenant: str) -> int:
    """The newest ``seq`` of the tenant's history (0 when empty)."""
    return (await last_seqs(conn, [tenant]))[tenant]


#: Tenants per statement in :func:`last_seqs`.
LAST_SEQS_CHUNK = 100


async def last_seqs(conn: asyncpg.Connection, tenants: Sequence[str]) -> dict[str, int]:
    """The newest ``seq`` of each tenant's history (0 when empty), in one round trip.

    Raises ``UndefinedTableError`` when a tenant has no schema (never created, or deleted).
    """
    newest: dict[str, int] = {}
    # In statements of LAST_SEQS_CHUNK tenants: asyncpg keeps a prepared statement only
    # up to 15 kB of text, and one over every tenant would be parsed and planned anew on
    # each call (a poller calls it ten times a second).
    for start in range(0, len(tenants), LAST_SEQS_CHUNK):
        chunk = tenants[start : start + LAST_SEQS_CHUNK]
        parts = [
            f"SELECT ${n}::text AS tenant,"
            f" (SELECT seq FROM {schema_of(t)}.events ORDER BY seq DESC LIMIT 1) AS seq"
            for n, t in enumerate(chunk, start=1)
        ]
        rows = await conn.fetch(" UNION ALL ".join(parts), *chunk)
        newest.update((r["tenant"], int(r["seq"] or 0)) for r in rows)
    return newest


async def browse_history(
    conn: asyncpg.Connection,
    tenant: str,
    *,
    event_type: str | None,
    subject: str | None,
    since: datetime | None,
    until: datetime | None,
    limit: int,
) -> list[asyncpg.Record]:
    """History rows with every column, oldest first, by type, subject and time (``eventfold
    events``)."""
    rows: list[asyncpg.Record] = await conn.fetch(
        f"""SELECT seq, id, type, subject, time, status, reason, partition,
                   "offset", envelope
            FROM {schema_of(tenant)}.events
            WHERE ($1::text IS NULL OR type = $1)
              AND ($2::text IS NULL OR subject = $2)
              AND ($3::timestamptz IS NULL OR time >= $3)
              AND ($4::timestamptz IS NULL OR time < $4)
            ORDER BY seq LIMIT $5""",
        event_type,
        subject,
        since,
        until,
        limit,
    )
    return rows


# -- rebuilds: shadows, their comparison, the swap ------------------------------


async def create_shadow(conn: asyncpg.Connection, tenant: str, shadow: str) -> None:
    """Drop any earlier ``shadow`` and create it empty, without its secondary indexes
    (:func:`add_indexes` builds them once at the end: much cheaper than row by row)."""
    await conn.execute(f"DROP SCHEMA IF EXISTS {shadow} CASCADE")
    await conn.execute(tenant_ddl(tenant, shadow))
    for index in SECONDARY_INDEXES:
        await conn.execute(f"DROP INDEX {shadow}.{index}")


async def add_indexes(conn: asyncpg.Connection, tenant: str, shadow: str) -> None:
    """Create what the tenant's DDL has and ``shadow`` lacks (its secondary indexes)."""
    await conn.execute(tenant_ddl(tenant, shadow))


async def drop_schema(conn: asyncpg.Connection, schema: str) -> None:
    """Drop ``schema`` (a shadow) with everything in it, if it exists."""
    await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


async def schema_exists(conn: asyncpg.Connection, schema: str) -> bool:
    """Whether the quoted ``schema`` exists."""
    found = await conn.fetchval(
        "SELECT count(*) FROM pg_namespace WHERE nspname = $1", schema.strip('"')
    )
    return bool(found)


async def registered_in(conn: asyncpg.Connection, schema: str) -> bool:
    """Whether the history in ``schema`` holds its tenant's applied ``tenant.created``."""
    done = await conn.fetchval(
        f"SELECT count(*) FROM {schema}.events WHERE type = 'tenant.created' AND status = 'applied'"
    )
    return bool(done)


async def swap(conn: asyncpg.Connection, tenant: str, shadow: str) -> None:
    """Make ``shadow`` the tenant's live schema and drop the old one (caller's transaction).

    Grants belong to the schema and its tables, so the tenant's read role keeps
    reading; the schema records the :data:`PROJECTION_VERSION` that built it.
    """
    old = shadow_schema(tenant, "old")
    live = schema_of(tenant)
    await conn.execute(f"DROP SCHEMA IF EXISTS {old} CASCADE")
    await conn.execute(f"ALTER SCHEMA {live} RENAME TO {old}")
    await conn.execute(f"ALTER SCHEMA {shadow} RENAME TO {live}")
    await conn.execute(f"DROP SCHEMA {old} CASCADE")
    await conn.execute(
        "INSERT INTO eventfold.projection_versions (tenant, version) VALUES ($1, $2)"
        " ON CONFLICT (tenant) DO UPDATE SET version = $2, built_at = now()",
        tenant,
        PROJECTION_VERSION,
    )


@dataclass(slots=True)
class Differences:
    """How a rebuilt ``shadow`` differs from the live schema: records and history rows."""

    added: int = 0
    changed: int = 0
    removed: int = 0
    history_differs: int = 0
    #: Differing records (up to the limit): collection, id, change, live and rebuilt version.
    records: list[dict[str, Any]] = field(default_factory=list)
    #: Differing history rows (up to the limit): ``id``, ``type``, ``live_status``,
    #: ``live_reason``, ``rebuilt_status``, ``rebuilt_reason`` (status None: no such row).
    history: list[dict[str, Any]] = field(default_factory=list)


async def compare(conn: asyncpg.Connection, tenant: str, shadow: str, limit: int) -> Differences:
    """Records and history rows of the rebuilt ``shadow`` that differ from the live schema.

    Counted in SQL, listed up to ``limit``: memory stays bounded whatever differs.
    """
    live = schema_of(tenant)
    differing = f"""
        SELECT coalesce(n.collection, o.collection) AS collection, coalesce(n.id, o.id) AS id,
               CASE WHEN o.id IS NULL OR o.deleted AND NOT n.deleted THEN 'added'
                    WHEN n.id IS NULL OR n.deleted AND NOT o.deleted THEN 'removed'
                    ELSE 'changed' END AS change,
               o.version AS live_version, n.version AS rebuilt_version
        FROM {live}.records o FULL JOIN {shadow}.records n
          ON n.collection = o.collection AND n.id = o.id
        WHERE o.id IS NULL OR n.id IS NULL
           OR (o.version, o.data, o.deleted, o.created_at, o.updated_at)
              IS DISTINCT FROM (n.version, n.data, n.deleted, n.created_at, n.updated_at)"""
    diff = Differences()
    for r in await conn.fetch(f"SELECT change, count(*) AS n FROM ({differing}) d GROUP BY 1"):
        setattr(diff, r["change"], r["n"])
    rows = await conn.fetch(f"{differing} ORDER BY 1, 2 LIMIT {int(limit)}")
    diff.records = [dict(r) for r in rows]
    history = f"""
        SELECT coalesce(o.id, n.id) AS id, coalesce(o.type, n.type) AS type,
               o.status AS live_status, o.reason AS live_reason,
               n.status AS rebuilt_status, n.reason AS rebuilt_reason,
               coalesce(o.seq, n.seq) AS seq
        FROM {live}.events o FULL JOIN {shadow}.events n ON n.id = o.id
        WHERE o.id IS NULL OR n.id IS NULL
           OR (o.status, o.reason) IS DISTINCT FROM (n.status, n.reason)"""
    diff.history_differs = await conn.fetchval(f"SELECT count(*) FROM ({history}) h")
    # In the live history's order (a row only the rebuild has: by its rebuilt place).
    rows = await conn.fetch(f"SELECT * FROM ({history}) h ORDER BY seq, id LIMIT {int(limit)}")
    diff.history = [{k: v for k, v in r.items() if k != "seq"} for r in rows]
    return diff

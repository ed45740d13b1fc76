"""PostgreSQL access: the pool (JSON codecs set in ``init``) and platform migrations."""

from __future__ import annotations

import contextlib
import hashlib
import weakref
from collections.abc import Collection, Sequence
from typing import Any

import asyncpg
import orjson

PLATFORM_DDL = """
CREATE SCHEMA IF NOT EXISTS eventfold;
CREATE TABLE IF NOT EXISTS eventfold.tenants (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    status      text NOT NULL DEFAULT 'active',
    limits      jsonb NOT NULL,
    created_at  timestamptz NOT NULL,
    event_id    text NOT NULL
);
-- tenant.suspended's reason; tenant.deleted's time (the row stays: the id is never reused).
ALTER TABLE eventfold.tenants ADD COLUMN IF NOT EXISTS status_reason text;
ALTER TABLE eventfold.tenants ADD COLUMN IF NOT EXISTS deleted_at timestamptz;
-- The input position each processor's derived state reflects, written in the
-- same transaction as that state (Kafka's committed offsets are only a hint).
CREATE TABLE IF NOT EXISTS eventfold.checkpoints (
    consumer     text NOT NULL,
    topic        text NOT NULL,
    partition    integer NOT NULL,
    next_offset  bigint NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, topic, partition)
);
-- Events a processor could not apply, and every later event of the same key
-- parked behind them (order kept). The envelope is kept as the raw bytes of
-- the log: a poison event may not even be valid jsonb.
CREATE TABLE IF NOT EXISTS eventfold.parked (
    consumer    text NOT NULL,
    partition   integer NOT NULL,
    "offset"    bigint NOT NULL,
    tenant      text NOT NULL,
    park_key    text NOT NULL,
    event_id    text,
    event_type  text,
    envelope    bytea NOT NULL,
    error       text NOT NULL,
    behind      text,
    parked_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, partition, "offset")
);
-- Set on events deferred because their tenant was too slow to write (locks, a
-- slow statement): those are retried automatically; NULL marks a dead letter.
ALTER TABLE eventfold.parked ADD COLUMN IF NOT EXISTS retry boolean NOT NULL DEFAULT false;
CREATE INDEX IF NOT EXISTS parked_by_key
    ON eventfold.parked (consumer, tenant, park_key, partition, "offset");
-- API keys (projected from apikey.* events): only the hash of each secret.
CREATE TABLE IF NOT EXISTS eventfold.api_keys (
    id           text PRIMARY KEY,
    tenant       text NOT NULL,
    name         text NOT NULL,
    roles        text[] NOT NULL,
    secret_hash  text NOT NULL,
    created_at   timestamptz NOT NULL,
    revoked_at   timestamptz,
    event_id     text NOT NULL
);
CREATE INDEX IF NOT EXISTS api_keys_by_tenant ON eventfold.api_keys (tenant, id);
-- A blue-green rebuild in progress: its shadow schema and the log positions
-- folded into it (committed with the shadow's rows), so a re-run continues.
CREATE TABLE IF NOT EXISTS eventfold.rebuilds (
    tenant      text PRIMARY KEY,
    shadow      text NOT NULL,
    topic       text NOT NULL,
    positions   jsonb NOT NULL,
    version     integer NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
-- The projection version each tenant schema was built with (see store.PROJECTION_VERSION).
CREATE TABLE IF NOT EXISTS eventfold.projection_versions (
    tenant      text PRIMARY KEY,
    version     integer NOT NULL,
    built_at    timestamptz NOT NULL DEFAULT now()
);
-- Integrations (configuration projected from integration.* events; secrets
-- sealed) and the sync runner's state (cursor, health, lease) beside it.
CREATE TABLE IF NOT EXISTS eventfold.integrations (
    id                     text PRIMARY KEY,
    tenant                 text NOT NULL,
    kind                   text NOT NULL,
    config                 jsonb NOT NULL,
    headers_sealed         text,
    webhook_secret_sealed  text NOT NULL,
    paused                 boolean NOT NULL DEFAULT false,
    deleted_at             timestamptz,
    created_at             timestamptz NOT NULL,
    event_id               text NOT NULL,
    state                  text NOT NULL DEFAULT 'ok',
    cursor                 text,
    items_synced           bigint NOT NULL DEFAULT 0,
    last_run_at            timestamptz,
    last_error             text,
    failures               integer NOT NULL DEFAULT 0,
    next_run_at            timestamptz,
    sync_requested         boolean NOT NULL DEFAULT false,
    reconcile_at           timestamptz,
    lease_owner            text,
    lease_until            timestamptz
);
CREATE INDEX IF NOT EXISTS integrations_by_tenant ON eventfold.integrations (tenant, id);
-- The events topic the integration was projected from: a sync runner serves
-- only its own log's integrations (and publishes into that log).
ALTER TABLE eventfold.integrations ADD COLUMN IF NOT EXISTS topic text NOT NULL DEFAULT '';
-- What each integration last published per item: a change counter and the
-- content hash (``deleted`` once deleted). Unchanged items publish nothing; a
-- change gets the next counter, so A -> B -> A is three distinct events.
CREATE TABLE IF NOT EXISTS eventfold.integration_items (
    integration  text NOT NULL,
    item_id      text NOT NULL,
    seq          bigint NOT NULL,
    hash         text NOT NULL,
    PRIMARY KEY (integration, item_id)
);
-- Webhook endpoints (projected from webhook.* events); the secret sealed only.
-- start_seq: the tenant's history position at subscription (later events only).
CREATE TABLE IF NOT EXISTS eventfold.webhooks (
    id               text PRIMARY KEY,
    tenant           text NOT NULL,
    url              text NOT NULL,
    types            text[] NOT NULL,
    secret_sealed    text NOT NULL,
    start_seq        bigint NOT NULL,
    created_at       timestamptz NOT NULL,
    deleted_at       timestamptz,
    disabled_at      timestamptz,
    disabled_reason  text,
    failures_in_row  integer NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS webhooks_by_tenant ON eventfold.webhooks (tenant, id);
-- The notifier's position in each tenant's history: deliveries are created in
-- the same transaction that moves it, so each event is scheduled exactly once.
-- anchor: the id of the event at seq, to find the place again when a rebuild
-- swaps in a history whose seq numbers differ.
CREATE TABLE IF NOT EXISTS eventfold.webhook_positions (
    tenant  text PRIMARY KEY,
    seq     bigint NOT NULL
);
ALTER TABLE eventfold.webhook_positions ADD COLUMN IF NOT EXISTS anchor text;
-- One delivery per (endpoint, event); state pending → delivered | dead.
CREATE TABLE IF NOT EXISTS eventfold.webhook_deliveries (
    id               bigserial PRIMARY KEY,
    webhook_id       text NOT NULL,
    tenant           text NOT NULL,
    event_id         text NOT NULL,
    subject          text NOT NULL,  -- '' for events without one
    seq              bigint NOT NULL,
    body             bytea NOT NULL,
    state            text NOT NULL DEFAULT 'pending',
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    lease_until      timestamptz NOT NULL DEFAULT '-infinity',
    created_at       timestamptz NOT NULL DEFAULT now(),
    done_at          timestamptz,
    UNIQUE (webhook_id, event_id)
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_due
    ON eventfold.webhook_deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS webhook_deliveries_order
    ON eventfold.webhook_deliveries (webhook_id, subject, seq) WHERE state = 'pending';
-- head: the delivery is the first pending one of its (endpoint, subject) line, so the
-- notifier's claim reads the heads only, not every pending delivery behind them.
ALTER TABLE eventfold.webhook_deliveries
    ADD COLUMN IF NOT EXISTS head boolean NOT NULL DEFAULT false;
CREATE INDEX IF NOT EXISTS webhook_deliveries_heads
    ON eventfold.webhook_deliveries (next_attempt_at, seq) WHERE state = 'pending' AND head;
CREATE INDEX IF NOT EXISTS webhook_deliveries_dead
    ON eventfold.webhook_deliveries (webhook_id, done_at) WHERE state = 'dead';
-- Every attempt, for GET …/webhooks/{id}/deliveries.
CREATE TABLE IF NOT EXISTS eventfold.webhook_attempts (
    id           bigserial PRIMARY KEY,
    webhook_id   text NOT NULL,
    delivery_id  bigint NOT NULL,
    event_id     text NOT NULL,
    attempt      integer NOT NULL,
    status_code  integer,
    error        text,
    duration_ms  double precision NOT NULL,
    at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS webhook_attempts_by_webhook
    ON eventfold.webhook_attempts (webhook_id, id);
-- Data keys of personal records (eventfold.datakeys): sealed by the keyring, NULL
-- once destroyed by an erasure; a record has at most one live key.
CREATE TABLE IF NOT EXISTS eventfold.data_keys (
    id            text PRIMARY KEY,
    tenant        text NOT NULL,
    subject       text NOT NULL,
    sealed        text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    destroyed_at  timestamptz
);
CREATE UNIQUE INDEX IF NOT EXISTS data_keys_live
    ON eventfold.data_keys (tenant, subject) WHERE destroyed_at IS NULL;
-- Collections whose events' data the gateway encrypts (one key per record).
ALTER TABLE eventfold.tenants ADD COLUMN IF NOT EXISTS personal_collections text[]
    NOT NULL DEFAULT '{}';
-- Tenant event types, one row per version (projected from eventtype.* events);
-- id = '{tenant}/{type}/{version}'. A version never changes once registered.
CREATE TABLE IF NOT EXISTS eventfold.event_types (
    id             text PRIMARY KEY,
    tenant         text NOT NULL,
    type           text NOT NULL,
    version        integer NOT NULL,
    schema         jsonb NOT NULL,
    compatibility  text NOT NULL,
    projection     jsonb,
    upcast         jsonb NOT NULL DEFAULT '[]',
    created_at     timestamptz NOT NULL,
    event_id       text NOT NULL,
    UNIQUE (tenant, type, version)
);
-- The workflow processor's inbox (consumers/workflows): written by the projector in
-- the batch transaction that applies the event (a run to start: kind 'trigger' with
-- the record as it stood after the event; a command: 'approve', 'reject', 'cancel'),
-- deleted by the processor in the transaction that acts on it.
CREATE TABLE IF NOT EXISTS eventfold.workflow_inbox (
    id          bigserial PRIMARY KEY,
    key         text NOT NULL UNIQUE,
    tenant      text NOT NULL,
    topic       text NOT NULL,
    kind        text NOT NULL,
    workflow    text,
    version     integer,
    run         text,
    step        text,
    event       jsonb NOT NULL,
    record      jsonb,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS workflow_inbox_by_tenant ON eventfold.workflow_inbox (topic, tenant, id);
-- Each run's state as the processor drives it: the events of its last transition
-- (pending, published before anything else is done for the run), its timer
-- (wake_at) and the lease of the processor driving it.
CREATE TABLE IF NOT EXISTS eventfold.workflow_runs (
    id           text PRIMARY KEY,
    tenant       text NOT NULL,
    topic        text NOT NULL,
    workflow     text NOT NULL,
    depth        integer NOT NULL,
    status       text NOT NULL,
    state        jsonb NOT NULL,
    pending      jsonb NOT NULL DEFAULT '[]',
    rev          bigint NOT NULL DEFAULT 0,
    wake_at      timestamptz,
    lease_until  timestamptz NOT NULL DEFAULT '-infinity',
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS workflow_runs_due
    ON eventfold.workflow_runs (topic, tenant, wake_at) WHERE wake_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS workflow_runs_unfinished
    ON eventfold.workflow_runs (status) WHERE status IN ('running', 'waiting');
CREATE INDEX IF NOT EXISTS workflow_runs_finished
    ON eventfold.workflow_runs (topic, updated_at)
    WHERE status IN ('succeeded', 'failed', 'cancelled');
-- A tenant moving to or from this server (eventfold.tenantmove): 'live' (arrived: its
-- events from the handover positions `since` are folded here), 'leaving' (its side
-- effects wait: deliveries, syncs, runs, new data keys), 'gone' (its events are passed
-- over here).
CREATE TABLE IF NOT EXISTS eventfold.tenant_homes (
    tenant      text PRIMARY KEY,
    state       text NOT NULL CHECK (state IN ('live', 'leaving', 'gone')),
    since       jsonb NOT NULL DEFAULT '{}',
    updated_at  timestamptz NOT NULL DEFAULT now()
);
-- Tenant -> database server (eventfold.placement); read on the first server only.
CREATE TABLE IF NOT EXISTS eventfold.tenant_placement (
    tenant     text PRIMARY KEY,
    server     text NOT NULL,
    placed_at  timestamptz NOT NULL DEFAULT now()
);
"""
#: Serialises concurrent migrations from processes starting at once.
_MIGRATION_LOCK = 0x4576_466F  # "EvFo"
#: Channel the projector notifies on commit; readers waiting on a token listen.
CHECKPOINT_CHANNEL = "eventfold_checkpoints"
#: The key of a :data:`CHECKPOINT_CHANNEL` notification naming a tenant whose row
#: changed (suspended, resumed, deleted): each process's tenant cache forgets it.
TENANT_CHANGED = "tenant_changed"
#: Channel the projector notifies (with the topic) when it hands the workflow processor
#: a trigger or a command; the processor wakes at once instead of at its next poll.
WORKFLOW_CHANNEL = "eventfold_workflows"


async def _init_connection(conn: asyncpg.Connection) -> None:
    # orjson for every json/jsonb value: text in and out, no per-call dumps.
    for typ in ("json", "jsonb"):
        await conn.set_type_codec(
            typ,
            schema="pg_catalog",
            encoder=lambda v: orjson.dumps(v).decode(),
            decoder=orjson.loads,
            format="text",
        )


#: Pooled connections whose session state their user changed (a ``SET`` of the session):
#: reset on release. See :func:`_reset_on_release`.
_SESSION_CHANGED: weakref.WeakSet[asyncpg.Connection] = weakref.WeakSet()


def session_changed(conn: asyncpg.Connection) -> None:
    """Note that ``conn`` (pooled) had its session settings changed: the pool resets it
    when it is given back, before another user takes it."""
    # A pool hands out a proxy; the pool's reset sees the connection under it.
    _SESSION_CHANGED.add(getattr(conn, "_con", None) or conn)


async def _reset_on_release(conn: asyncpg.Connection) -> None:
    """What the pool does to a connection given back, past ending its transaction and
    dropping its listeners (asyncpg does that first, with no round trip).

    asyncpg's default sends ``RESET ALL; UNLISTEN *; CLOSE ALL`` and an advisory unlock
    on every release: a round trip for every pooled use, as many as the statement
    itself for an API read. Eventfold changes a pooled session in one way only,
    session settings, and says so (:func:`session_changed`); LISTEN and session
    locks have connections of their own (:func:`connect`), cursors live in
    transactions. So only the connections marked are reset.
    """
    if conn in _SESSION_CHANGED:
        _SESSION_CHANGED.discard(conn)
        await conn.execute(conn.get_reset_query())


async def create_pool(
    dsn: str, *, min_size: int = 1, max_size: int = 10, statement_cache_size: int = 100
) -> asyncpg.Pool:
    """A pool whose connections speak JSON through orjson; every call has a deadline."""
    pool: asyncpg.Pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        statement_cache_size=statement_cache_size,
        init=_init_connection,
        reset=_reset_on_release,
        timeout=10,
        command_timeout=15,
    )
    return pool


async def connect(dsn: str) -> asyncpg.Connection:
    """One connection with the same codecs as the pool (for LISTEN and tools)."""
    conn: asyncpg.Connection = await asyncpg.connect(dsn, timeout=10, command_timeout=15)
    await _init_connection(conn)
    return conn


#: Identifies this version of :data:`PLATFORM_DDL` in ``eventfold.migrations``.
DDL_VERSION = hashlib.sha256(PLATFORM_DDL.encode()).hexdigest()[:16]


class KeptConnection:
    """One pooled connection kept from one use to the next, until :meth:`drop`.

    A connection given back to the pool is reset (a round trip, and about as much
    client CPU as a small statement) and loses its session settings: a loop that sends
    one statement after another keeps one instead. ``setup`` runs once on each
    connection taken. For one user at a time.
    """

    def __init__(
        self, pool: asyncpg.Pool, setup: str | None = None, *, timeout: float = 10
    ) -> None:
        self._pool = pool
        self._setup = setup
        self._timeout = timeout
        #: The connection kept (None until :meth:`get`, and after :meth:`drop`).
        self.conn: asyncpg.Connection | None = None

    async def get(self) -> asyncpg.Connection:
        """The kept connection, taken from the pool (and set up) if there is none."""
        if self.conn is None:
            conn: asyncpg.Connection = await self._pool.acquire(timeout=self._timeout)
            if self._setup:
                session_changed(conn)  # the pool resets it when it goes back
                try:
                    await conn.execute(self._setup)
                except BaseException:
                    await self._pool.release(conn)
                    raise
            self.conn = conn
        return self.conn

    async def drop(self) -> None:
        """Give the connection back to the pool (which resets it, or discards it)."""
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # a broken one is terminated by the pool
                await self._pool.release(conn)


async def migrate(pool: asyncpg.Pool) -> None:
    """Create the platform schema if missing; safe to run from many processes at once.

    The DDL runs once per version: ``ALTER TABLE`` and ``CREATE INDEX`` take
    table locks even when there is nothing to do, so running them on every
    start would queue a starting process (a CLI command) behind the running
    processors' open transactions.
    """
    async with pool.acquire(timeout=10) as conn:
        if await _applied(conn):
            return
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            if await _applied(conn):
                return
            await conn.execute(PLATFORM_DDL)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS eventfold.migrations ("
                " ddl_version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            await conn.execute(
                "INSERT INTO eventfold.migrations (ddl_version) VALUES ($1) ON CONFLICT DO NOTHING",
                DDL_VERSION,
            )


async def _applied(conn: asyncpg.Connection) -> bool:
    # to_regclass, not a caught UndefinedTableError: an error would abort the
    # surrounding migration transaction.
    if await conn.fetchval("SELECT to_regclass('eventfold.migrations')") is None:
        return False
    return bool(
        await conn.fetchval(
            "SELECT true FROM eventfold.migrations WHERE ddl_version = $1", DDL_VERSION
        )
    )


async def fetch_checkpoints(conn: Any, consumer: str, topic: str) -> dict[int, int]:
    """``{partition: next_offset}`` stored for ``consumer`` on ``topic``."""
    rows = await conn.fetch(
        "SELECT partition, next_offset FROM eventfold.checkpoints"
        " WHERE consumer = $1 AND topic = $2",
        consumer,
        topic,
    )
    return {r["partition"]: r["next_offset"] for r in rows}


#: A checkpoint notification longer than this names no deferred tenants ("*"):
#: PostgreSQL refuses a NOTIFY payload of 8,000 bytes or more.
NOTIFY_PAYLOAD_LIMIT = 7_000


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
    :data:`CHECKPOINT_CHANNEL` is delivered at commit, so a reader
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

"""SQL of the workflow processor: its inbox, its runs' state, leases and timers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from eventfold.ids import tenant_schema

# A suspended tenant's inbox and runs wait (the NOT EXISTS on eventfold.tenants) until
# it is resumed; a moving tenant's (eventfold.tenant_homes) until it is on its new
# server (eventfold.tenantmove).
_CLAIM_INBOX = """
SELECT i.id, i.tenant, i.kind, i.workflow, i.version, i.run, i.step, i.event, i.record
FROM (SELECT DISTINCT tenant FROM eventfold.workflow_inbox x WHERE topic = $1
      AND NOT EXISTS (SELECT 1 FROM eventfold.tenants s
                      WHERE s.id = x.tenant AND s.status <> 'active')
      AND NOT EXISTS (SELECT 1 FROM eventfold.tenant_homes h
                      WHERE h.tenant = x.tenant AND h.state <> 'live')) t,
LATERAL (SELECT * FROM eventfold.workflow_inbox x WHERE x.topic = $1 AND x.tenant = t.tenant
         ORDER BY x.id LIMIT $2 FOR UPDATE SKIP LOCKED) i
ORDER BY i.id
LIMIT $3
"""

# Each tenant's due runs in turn (a few each), tenants in random order: one
# tenant's backlog never fills a claim. The tenants with a claimable run are found
# by skipping through the due index a tenant at a time (a loose index scan, seeded
# with '' which no tenant id is): a DISTINCT over the claimable runs read every one
# of them, 1,540 rows and 7 ms a claim with one tenant's backlog waiting for room.
_CLAIM_RUNS = """
WITH RECURSIVE due(tenant) AS (
    SELECT ''::text
    UNION ALL
    SELECT (SELECT x.tenant FROM eventfold.workflow_runs x
            WHERE x.topic = $1 AND x.tenant > due.tenant AND x.wake_at <= now()
              AND x.lease_until < now() AND NOT (x.tenant = ANY($2::text[]))
            ORDER BY x.tenant LIMIT 1)
    FROM due WHERE due.tenant IS NOT NULL
), t AS (
    SELECT due.tenant FROM due
    WHERE due.tenant <> ''
      AND NOT EXISTS (SELECT 1 FROM eventfold.tenants s
                      WHERE s.id = due.tenant AND s.status <> 'active')
      AND NOT EXISTS (SELECT 1 FROM eventfold.tenant_homes h
                      WHERE h.tenant = due.tenant AND h.state <> 'live')
), picked AS (
    SELECT r.id FROM (SELECT tenant FROM t ORDER BY random()) t2,
    LATERAL (SELECT x.id FROM eventfold.workflow_runs x
             WHERE x.topic = $1 AND x.tenant = t2.tenant AND x.wake_at <= now()
               AND x.lease_until < now()
             ORDER BY x.wake_at LIMIT $3 FOR UPDATE SKIP LOCKED) r
    LIMIT $4
)
UPDATE eventfold.workflow_runs w SET lease_until = now() + make_interval(secs => $5)
FROM picked WHERE w.id = picked.id
RETURNING w.id, w.tenant, w.state, w.rev, w.pending
"""


@dataclass(frozen=True, slots=True)
class InboxRow:
    """A trigger or a command the projector handed over."""

    id: int
    tenant: str
    kind: str
    workflow: str | None
    version: int | None
    run: str | None
    step: str | None
    event: dict[str, Any]
    record: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class Claimed:
    """A run this processor holds the lease of."""

    id: str
    tenant: str
    state: dict[str, Any]
    rev: int
    pending: list[dict[str, Any]]


async def claim_inbox(
    conn: asyncpg.Connection, topic: str, per_tenant: int, limit: int
) -> list[InboxRow]:
    """Lock up to ``limit`` inbox rows of ``topic`` (oldest first, ``per_tenant`` each);
    the caller's transaction deletes them with what it did about them."""
    rows = await conn.fetch(_CLAIM_INBOX, topic, per_tenant, limit)
    return [InboxRow(**dict(r)) for r in rows]


async def definition(
    conn: asyncpg.Connection, tenant: str, workflow: str, version: int
) -> dict[str, Any] | None:
    """The definition of ``workflow`` at ``version``."""
    doc = await conn.fetchval(
        f"SELECT definition FROM {tenant_schema(tenant)}.workflow_versions"
        " WHERE id = $1 AND version = $2",
        workflow,
        version,
    )
    return dict(doc) if doc is not None else None


async def parent(conn: asyncpg.Connection, tenant: str, run: str) -> tuple[str, int] | None:
    """The workflow and depth of run ``run`` of ``tenant`` (the cause of an event), if any."""
    row = await conn.fetchrow(
        "SELECT workflow, depth FROM eventfold.workflow_runs WHERE id = $1 AND tenant = $2",
        run,
        tenant,
    )
    return (row["workflow"], int(row["depth"])) if row is not None else None


@dataclass(frozen=True, slots=True)
class NewRun:
    """A run to start: due now, so it is claimed and its events published."""

    run: str
    tenant: str
    topic: str
    workflow: str
    depth: int
    status: str
    state: dict[str, Any]
    pending: list[dict[str, Any]]
    #: Leased for this long to the processor inserting it, which drives it at once
    #: (no claim between); None: left for a claim (the processor had no room for it).
    lease_seconds: float | None = None


# The inbox rows acted on go in the same statement (one round trip of the intake less).
_INSERT_RUNS = """
WITH handled AS (DELETE FROM eventfold.workflow_inbox WHERE id = ANY($2::bigint[]))
INSERT INTO eventfold.workflow_runs (id, tenant, topic, workflow, depth, status, state,
    pending, wake_at, lease_until)
SELECT b.id, b.tenant, b.topic, b.workflow, b.depth, b.status, b.state, b.pending, now(),
    CASE WHEN b.lease IS NULL THEN '-infinity'::timestamptz
         ELSE now() + make_interval(secs => b.lease) END
FROM jsonb_to_recordset($1::jsonb) AS b(id text, tenant text, topic text, workflow text,
    depth integer, status text, state jsonb, pending jsonb, lease float8)
ON CONFLICT (id) DO NOTHING RETURNING id
"""


async def insert_runs(
    conn: asyncpg.Connection, runs: Sequence[NewRun], handled: Sequence[int] = ()
) -> list[NewRun]:
    """Insert new runs and drop the ``handled`` inbox rows, in one statement; the runs
    inserted (a run that exists is left be)."""
    if not runs and not handled:
        return []
    docs = [
        {"id": r.run, "tenant": r.tenant, "topic": r.topic, "workflow": r.workflow,
         "depth": r.depth, "status": r.status, "state": r.state, "pending": r.pending,
         "lease": r.lease_seconds}
        for r in runs
    ]  # fmt: skip
    inserted = {row["id"] for row in await conn.fetch(_INSERT_RUNS, docs, list(handled))}
    out = []
    for r in runs:
        if r.run in inserted:
            inserted.discard(r.run)  # one run twice in the batch: inserted once
            out.append(r)
    return out


async def lock_run(
    conn: asyncpg.Connection, tenant: str, run: str
) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """The state and pending events of ``run``, locked for the caller's transaction."""
    row = await conn.fetchrow(
        "SELECT state, pending FROM eventfold.workflow_runs WHERE id = $1 AND tenant = $2"
        " FOR UPDATE",
        run,
        tenant,
    )
    return (dict(row["state"]), list(row["pending"])) if row is not None else None


async def signal_run(
    conn: asyncpg.Connection,
    run: str,
    status: str,
    state: dict[str, Any],
    pending: list[dict[str, Any]],
) -> None:
    """Write a command's transition (under :func:`lock_run`): due now, so its events go out."""
    await conn.execute(
        "UPDATE eventfold.workflow_runs SET state = $2, status = $3, pending = $4,"
        " wake_at = now(), rev = rev + 1, updated_at = now() WHERE id = $1",
        run,
        state,
        status,
        pending,
    )


async def claim_runs(
    pool: asyncpg.Pool,
    topic: str,
    *,
    busy_tenants: list[str],
    per_tenant: int,
    limit: int,
    lease_seconds: float,
) -> list[Claimed]:
    """Lease up to ``limit`` due runs, tenants in turn."""
    async with pool.acquire(timeout=5) as conn:
        rows = await conn.fetch(_CLAIM_RUNS, topic, busy_tenants, per_tenant, limit, lease_seconds)
    return [
        Claimed(r["id"], r["tenant"], dict(r["state"]), int(r["rev"]), list(r["pending"]))
        for r in rows
    ]


@dataclass(frozen=True, slots=True)
class Save:
    """A transition to write if the run is still at ``rev`` (renewing its lease).

    While ``pending`` holds events the run is due at once, whatever its timer
    (``wake_at``, None for a finished run): its lease keeps it with this processor,
    and should the processor die before publishing them, the first claim after the
    lease publishes them. With the timer alone, a run that finished in a transition
    whose events were never published stayed "running" for good. :class:`Release`
    sets the timer back once they are out.
    """

    run: str
    rev: int
    status: str
    state: dict[str, Any]
    pending: list[dict[str, Any]]
    wake_at: float | None
    lease_seconds: float


@dataclass(frozen=True, slots=True)
class Release:
    """Letting go of a run at ``rev`` whose events are published; ``wake_at`` is its
    timer (None: nothing to do until a command comes, or finished)."""

    run: str
    rev: int
    wake_at: float | None


# The rows are locked in the order of their ids, so two statements writing many runs
# (saves, releases, the lease renewal) never wait on each other crosswise.
_SAVE_MANY = """
WITH b AS (
    SELECT * FROM jsonb_to_recordset($1::jsonb) AS b(id text, rev bigint, status text,
        state jsonb, pending jsonb, wake_at float8, lease float8)
), l AS (
    SELECT w.id FROM eventfold.workflow_runs w JOIN b ON w.id = b.id AND w.rev = b.rev
    ORDER BY w.id FOR UPDATE OF w
)
UPDATE eventfold.workflow_runs w SET state = b.state, status = b.status, pending = b.pending,
    wake_at = CASE WHEN b.pending <> '[]' THEN now() ELSE to_timestamp(b.wake_at) END,
    rev = w.rev + 1, updated_at = now(),
    lease_until = now() + make_interval(secs => b.lease)
FROM b, l WHERE w.id = l.id AND w.id = b.id AND w.rev = b.rev
RETURNING w.id, w.rev
"""

_RELEASE_MANY = """
WITH b AS (
    SELECT * FROM unnest($1::text[], $2::bigint[], $3::float8[]) AS b(id, rev, wake_at)
), l AS (
    SELECT w.id FROM eventfold.workflow_runs w JOIN b ON w.id = b.id AND w.rev = b.rev
    ORDER BY w.id FOR UPDATE OF w
)
UPDATE eventfold.workflow_runs w SET pending = '[]', lease_until = '-infinity',
    wake_at = to_timestamp(b.wake_at)
FROM b, l WHERE w.id = l.id AND w.id = b.id AND w.rev = b.rev
RETURNING w.id
"""


async def save(pool: asyncpg.Pool, s: Save) -> int | None:
    """Write a transition if the run is still at ``s.rev``; its new rev, or None (changed)."""
    async with pool.acquire(timeout=5) as conn:
        new = await conn.fetchval(
            "UPDATE eventfold.workflow_runs SET state = $3, status = $4, pending = $5,"
            " wake_at = CASE WHEN $5::jsonb <> '[]' THEN now() ELSE to_timestamp($6) END,"
            " rev = rev + 1, updated_at = now(),"
            " lease_until = now() + make_interval(secs => $7)"
            " WHERE id = $1 AND rev = $2 RETURNING rev",
            s.run, s.rev, s.state, s.status, s.pending, s.wake_at, s.lease_seconds,
        )  # fmt: skip
    return int(new) if new is not None else None


async def save_many(pool: asyncpg.Pool, saves: Sequence[Save]) -> list[int | None]:
    """:func:`save` of many runs (distinct) in one statement; per run, as :func:`save`."""
    docs = [
        {"id": s.run, "rev": s.rev, "status": s.status, "state": s.state,
         "pending": s.pending, "wake_at": s.wake_at, "lease": s.lease_seconds}
        for s in saves
    ]  # fmt: skip
    async with pool.acquire(timeout=5) as conn:
        rows = await conn.fetch(_SAVE_MANY, docs)
    revs = {r["id"]: int(r["rev"]) for r in rows}
    return [revs.get(s.run) for s in saves]


async def release(pool: asyncpg.Pool, r: Release) -> bool:
    """Let go of a run whose events are published (it waits or has finished)."""
    async with pool.acquire(timeout=5) as conn:
        done = await conn.fetchval(
            "UPDATE eventfold.workflow_runs SET pending = '[]', lease_until = '-infinity',"
            " wake_at = to_timestamp($3) WHERE id = $1 AND rev = $2 RETURNING true",
            r.run,
            r.rev,
            r.wake_at,
        )
    return bool(done)


async def release_many(pool: asyncpg.Pool, releases: Sequence[Release]) -> list[bool]:
    """:func:`release` of many runs (distinct) in one statement; per run, as :func:`release`."""
    async with pool.acquire(timeout=5) as conn:
        rows = await conn.fetch(
            _RELEASE_MANY,
            [r.run for r in releases],
            [r.rev for r in releases],
            [r.wake_at for r in releases],
        )
    done = {row["id"] for row in rows}
    return [r.run in done for r in releases]


async def reload(pool: asyncpg.Pool, run: str) -> Claimed | None:
    """A run's current state (after a command changed it under its driver)."""
    async with pool.acquire(timeout=5) as conn:
        r = await conn.fetchrow(
            "SELECT id, tenant, state, rev, pending FROM eventfold.workflow_runs WHERE id = $1",
            run,
        )
    if r is None:
        return None
    return Claimed(r["id"], r["tenant"], dict(r["state"]), int(r["rev"]), list(r["pending"]))


async def renew(pool: asyncpg.Pool, runs: list[str], lease_seconds: float) -> None:
    """Extend the leases of the runs this processor is driving."""
    async with pool.acquire(timeout=5) as conn:
        await conn.execute(
            "UPDATE eventfold.workflow_runs w SET lease_until = now() + make_interval(secs => $2)"
            " FROM (SELECT id FROM eventfold.workflow_runs WHERE id = ANY($1::text[])"
            " ORDER BY id FOR UPDATE) l WHERE w.id = l.id",
            runs,
            lease_seconds,
        )


async def gauges(pool: asyncpg.Pool, topic: str) -> tuple[int, float, int]:
    """Timers set in the future, how long the oldest due run has waited for a
    processor (s), and the inbox rows not yet taken."""
    async with pool.acquire(timeout=5) as conn:
        row = await conn.fetchrow(
            "SELECT count(*) FILTER (WHERE wake_at > now()) AS timers,"
            " coalesce(extract(epoch FROM now() - min(wake_at)"
            "   FILTER (WHERE wake_at <= now() AND lease_until < now())), 0) AS oldest,"
            " (SELECT count(*) FROM eventfold.workflow_inbox WHERE topic = $1) AS inbox"
            " FROM eventfold.workflow_runs WHERE topic = $1 AND status IN ('running', 'waiting')",
            topic,
        )
    assert row is not None
    return int(row["timers"]), float(row["oldest"]), int(row["inbox"])


async def prune(pool: asyncpg.Pool, topic: str, older_than_days: float, limit: int) -> int:
    """Forget up to ``limit`` runs of ``topic`` that finished before ``older_than_days``
    (the read model keeps them; here they only served loop protection, whose
    lookups come within moments of a run's writes)."""
    async with pool.acquire(timeout=5) as conn:
        deleted = await conn.fetchval(
            "WITH gone AS (DELETE FROM eventfold.workflow_runs WHERE id IN ("
            "  SELECT id FROM eventfold.workflow_runs WHERE topic = $1"
            "  AND status IN ('succeeded', 'failed', 'cancelled')"
            "  AND updated_at < now() - make_interval(days => $2) LIMIT $3)"
            " RETURNING 1) SELECT count(*) FROM gone",
            topic,
            older_than_days,
            limit,
        )
    return int(deleted)

"""Blue-green rebuild of tenants' projections: fold the log into shadow schemas, swap them in.

The live schema keeps serving reads while the shadow catches up. The swap runs
in one transaction holding the projector's checkpoint rows (``FOR UPDATE``, as
the projector's own batches do): the tail up to those checkpoints is folded into
the shadow, the shadow is compared, and the schemas are renamed (grants follow
the schema, so the tenant's read role keeps reading). Progress (shadow schema +
positions) is committed with each chunk in ``eventfold.rebuilds``: a re-run after
an interruption continues from there. The fold is the projector's own
(:mod:`consumers.projector.batch`), pointed at the shadow through
:data:`eventfold.ids.SCHEMA_REDIRECT`. Tenants rebuilt together share one read of
the log (each has its own shadow, progress and swap). Platform tables the
handlers write (API keys, webhooks, integrations) are folded into copies inside
the shadow and reconciled into the live tables at the swap (see
:mod:`consumers.projector.platform`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from consumers.projector import platform, store
from consumers.projector.batch import BatchResult, LogEvent, _apply_tenant
from consumers.projector.handlers import HANDLERS, PROJECTED_TOPIC
from consumers.rebuild import source
from eventfold.ids import SCHEMA_REDIRECT, shadow_schema_name, tenant_schema
from eventfold.replay import REPLAY_ATTRIBUTE
from eventfold.settings import Settings
from eventfold.workflows import tables as workflow_tables

#: ``(events folded, seconds, share of the log's offsets covered or None)``.
Progress = Callable[[int, float, float | None], None]
#: Indexes of the tenant schema (store.tenant_ddl) not needed while folding.
SECONDARY_INDEXES = ("records_by_updated", "records_data", "events_by_type", "events_by_subject")
#: Records listed per kind of difference in a report.
LIST_LIMIT = 100
#: Tenants folding a chunk at once, each on its own connection (the pool has 20).
FOLD_CONNECTIONS = 2


@dataclass(slots=True)
class Diff:
    """How the rebuilt projection differs from the live one."""

    added: int = 0
    changed: int = 0
    removed: int = 0
    history_differs: int = 0
    #: Rows of the tenant's platform tables (API keys, webhooks, integrations).
    platform_differs: int = 0
    records: list[dict[str, Any]] = field(default_factory=list)
    #: Differing history rows (up to LIST_LIMIT): ``id``, ``type``, ``live_status``,
    #: ``live_reason``, ``rebuilt_status``, ``rebuilt_reason`` (status None: no such row).
    history: list[dict[str, Any]] = field(default_factory=list)
    #: Differing platform rows (up to LIST_LIMIT): ``table``, ``id``, ``change``.
    platform: list[dict[str, Any]] = field(default_factory=list)
    #: Rows of the workflow tables (definitions, runs, steps) that differ, and up to
    #: LIST_LIMIT of them: ``table``, ``key``, ``change``.
    workflows_differs: int = 0
    workflows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def equal(self) -> bool:
        """No record, no history row, no platform row and no workflow row differs."""
        return not (
            self.added
            or self.changed
            or self.removed
            or self.history_differs
            or self.platform_differs
            or self.workflows_differs
        )


@dataclass(slots=True)
class Report:
    """What one tenant's rebuild (or verification) did."""

    tenant: str
    events: int = 0
    #: Of ``events``, those read from the S3 archive.
    archive_events: int = 0
    seconds: float = 0.0
    swapped: bool = False
    resumed: bool = False
    diff: Diff = field(default_factory=Diff)
    #: Why the rebuild was not swapped in (None when it was, or was not meant to be).
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        d = self.diff
        return {
            "tenant": self.tenant,
            "events": self.events,
            "archive_events": self.archive_events,
            "seconds": round(self.seconds, 3),
            "events_per_second": round(self.events / self.seconds) if self.seconds else None,
            "swapped": self.swapped,
            "resumed": self.resumed,
            "error": self.error,
            "equal": d.equal,
            "added": d.added,
            "changed": d.changed,
            "removed": d.removed,
            "history_differs": d.history_differs,
            "platform_differs": d.platform_differs,
            "records": d.records,
            "history": d.history,
            "platform": d.platform,
            "workflows_differs": d.workflows_differs,
            "workflows": d.workflows,
        }


@dataclass(slots=True)
class Options:
    """How to rebuild: where the fold starts, whether to swap, how fast."""

    from_time: datetime | None = None
    from_archive: bool = False
    #: Fold and compare only (verify, --dry-run): a scratch schema, dropped after.
    compare_only: bool = False
    #: At most this many events per second (None: as fast as it goes).
    rate: float | None = None
    progress: Progress | None = None


@dataclass(slots=True)
class _Job:
    """One tenant's rebuild in progress: its shadow and how far its fold got."""

    tenant: str
    shadow: str
    report: Report
    registered: set[str] = field(default_factory=set)
    #: Next offset to fold per partition (None until the start is known).
    positions: dict[int, int] | None = None


async def rebuild(settings: Settings, pool: asyncpg.Pool, tenant: str, opts: Options) -> Report:
    """Rebuild ``tenant``'s projection (or, with ``compare_only``, compare a fresh fold with it)."""
    [report] = await rebuild_many(settings, pool, [tenant], opts)
    return report


async def rebuild_many(
    settings: Settings, pool: asyncpg.Pool, tenants: list[str], opts: Options
) -> list[Report]:
    """Rebuild (or compare) the projections of ``tenants`` reading the log once for all.

    Each tenant has its own shadow, saved progress and swap; the bulk of the log
    is read in one pass whose events are handed to their tenant's shadow (a
    rebuild of every tenant would otherwise read the whole log once per
    tenant). Only each tenant's short tail is read again, under its swap.
    ``opts.progress`` follows the shared pass; every report's ``seconds`` is
    the time from the start to that tenant's swap.
    """
    started = time.perf_counter()
    topic = settings.events_topic
    # Handlers record the topic they fold (an integration's); tasks started below inherit it.
    topic_token = PROJECTED_TOPIC.set(topic)
    try:
        return await _rebuild_many(settings, pool, tenants, opts, started)
    finally:
        PROJECTED_TOPIC.reset(topic_token)


async def _rebuild_many(
    settings: Settings, pool: asyncpg.Pool, tenants: list[str], opts: Options, started: float
) -> list[Report]:
    topic = settings.events_topic
    suffix = "verify" if opts.compare_only else "rebuild"
    replay_id = uuid.uuid4().hex
    jobs: list[_Job] = []
    async with pool.acquire(timeout=10) as conn:
        for tenant in tenants:
            job = _Job(tenant, shadow_schema_name(tenant, suffix), Report(tenant))
            if not opts.compare_only:
                job.positions = await _resume(conn, tenant, job.shadow, topic)
            if job.positions is not None:
                job.report.resumed = True
                job.registered = await _registered(conn, tenant, job.shadow)
            else:
                await _fresh_shadow(conn, tenant, job.shadow, topic, persist=not opts.compare_only)
            jobs.append(job)
    fresh = [j for j in jobs if j.positions is None]
    if fresh:
        at_ms = int(opts.from_time.timestamp() * 1000) if opts.from_time else None
        start = await source.offsets_at(settings, topic, at_ms)
        folded = 0
        gate = asyncio.Semaphore(FOLD_CONNECTIONS)

        async def from_archive(job: _Job, s3: Any) -> None:
            """Fold ``job``'s archived events (the archive is stored per tenant)."""
            nonlocal folded
            positions = _positions(job)
            async with gate:  # a few tenants at once, as in _fold
                archived = source.read_ahead(source.read_archive(settings, job.tenant, s3))
                async with contextlib.aclosing(archived):  # stops the read-ahead task
                    async for chunk, reached in archived:
                        n = await _fold(pool, {job.tenant: chunk}, {job.tenant: job}, [], replay_id)
                        job.report.archive_events += n
                        folded += n
                        positions.update(reached)
                        await _throttle(folded, started, opts)

        for job in fresh:
            job.positions = {}
        if opts.from_archive:
            async with source.archive_client(settings) as s3, asyncio.TaskGroup() as tasks:
                for job in fresh:
                    tasks.create_task(from_archive(job, s3))
        for job in fresh:
            mine = _positions(job)
            for p, o in start.items():
                mine[p] = max(mine.get(p, 0), o) if opts.from_archive else o
    await _catch_up(settings, pool, jobs, replay_id, started, opts)
    for job in jobs:
        await _finish(settings, pool, job, replay_id, opts)
        job.report.seconds = time.perf_counter() - started
    if opts.progress is not None:
        opts.progress(sum(j.report.events for j in jobs), time.perf_counter() - started, 1.0)
    return [j.report for j in jobs]


def _positions(job: _Job) -> dict[int, int]:
    assert job.positions is not None, "positions are known once the rebuild started"
    return job.positions


async def _catch_up(
    settings: Settings,
    pool: asyncpg.Pool,
    jobs: list[_Job],
    replay_id: str,
    started: float,
    opts: Options,
) -> None:
    """Fold the log up to where the projector is now, without holding anything, in one pass."""
    topic = settings.events_topic
    projector = f"{settings.consumer_group_prefix}.projector"
    # Each partition is read from the earliest position any tenant still needs.
    begin: dict[int, int] = {}
    for job in jobs:
        for p, o in _positions(job).items():
            begin[p] = min(begin.get(p, o), o)
    async with pool.acquire(timeout=30) as conn:
        target = await _checkpoints(conn, projector, topic, list(begin))
    total = sum(max(0, target[p] - begin[p]) for p in target) or 1
    by_tenant = {j.tenant: j for j in jobs}
    save = [] if opts.compare_only else jobs
    folded = sum(j.report.events for j in jobs)
    reader = source.read_range(settings, topic, set(by_tenant), begin, target)
    catch_up = source.read_ahead(reader)
    async with contextlib.aclosing(catch_up):  # stops the read-ahead task and its consumer
        async for chunk, reached in catch_up:
            groups: dict[str, list[LogEvent]] = {}
            for e in chunk:
                # read_range yields decoded events of these tenants only.
                job = by_tenant[e.event.tenant if e.event is not None and e.event.tenant else ""]
                own = _positions(job).get(e.partition)
                # A resumed tenant folded what lies before its own position already.
                if own is not None and e.offset >= own:
                    groups.setdefault(job.tenant, []).append(e)
            # The positions after this chunk, saved in the transaction that folds it.
            for job in jobs:
                mine = _positions(job)
                for p, o in reached.items():
                    if p in mine:
                        mine[p] = max(mine[p], o)
            folded += await _fold(pool, groups, by_tenant, save, replay_id)
            covered = sum(
                max(0, min(reached.get(p, begin[p]), target[p]) - begin[p]) for p in target
            )
            await _throttle(folded, started, opts, min(1.0, covered / total))


async def _finish(
    settings: Settings, pool: asyncpg.Pool, job: _Job, replay_id: str, opts: Options
) -> None:
    """Fold ``job``'s tail with the projector held at its checkpoints, compare, and swap."""
    topic = settings.events_topic
    projector = f"{settings.consumer_group_prefix}.projector"
    tenant, shadow, report = job.tenant, job.shadow, job.report
    positions = _positions(job)
    async with pool.acquire(timeout=30) as conn:
        await _shape(conn, tenant, shadow)  # the secondary indexes, before the swap
    async with pool.acquire(timeout=30) as conn, conn.transaction():
        target = await store.lock_checkpoints(conn, projector, topic, sorted(positions))
        tail = source.read_range(settings, topic, {tenant}, positions, target)
        async for chunk, reached in tail:
            report.events += await _fold_in(conn, tenant, shadow, chunk, job.registered, replay_id)
            positions.update(reached)
        report.diff = await compare(conn, tenant, shadow)
        if not job.registered and opts.from_time is None:
            # The log read does not start at the tenant's creation (retention, or the
            # wrong topic): swapping would drop what only the old schema still holds.
            report.error = (
                "the log read holds no tenant.created of this tenant (try --from-archive)"
            )
        if opts.compare_only or report.error:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{shadow}" CASCADE')
            if not opts.compare_only:
                await conn.execute("DELETE FROM eventfold.rebuilds WHERE tenant = $1", tenant)
        else:
            await platform.reconcile(conn, tenant, f'"{shadow}"')
            await conn.execute(platform.drop_copies_ddl(f'"{shadow}"'))
            old = shadow_schema_name(tenant, "old")
            live = tenant_schema(tenant)
            await conn.execute(f'DROP SCHEMA IF EXISTS "{old}" CASCADE')
            await conn.execute(f'ALTER SCHEMA {live} RENAME TO "{old}"')
            await conn.execute(f'ALTER SCHEMA "{shadow}" RENAME TO {live[1:-1]!s}')
            await conn.execute(f'DROP SCHEMA "{old}" CASCADE')
            await conn.execute("DELETE FROM eventfold.rebuilds WHERE tenant = $1", tenant)
            await conn.execute(
                "INSERT INTO eventfold.projection_versions (tenant, version) VALUES ($1, $2)"
                " ON CONFLICT (tenant) DO UPDATE SET version = $2, built_at = now()",
                tenant,
                store.PROJECTION_VERSION,
            )
            report.swapped = True


async def compare(conn: asyncpg.Connection, tenant: str, shadow: str) -> Diff:
    """Records and history rows of the rebuilt ``shadow`` that differ from the live schema."""
    live = tenant_schema(tenant)
    differing = f"""
        SELECT coalesce(n.collection, o.collection) AS collection, coalesce(n.id, o.id) AS id,
               CASE WHEN o.id IS NULL OR o.deleted AND NOT n.deleted THEN 'added'
                    WHEN n.id IS NULL OR n.deleted AND NOT o.deleted THEN 'removed'
                    ELSE 'changed' END AS change,
               o.version AS live_version, n.version AS rebuilt_version
        FROM {live}.records o FULL JOIN "{shadow}".records n
          ON n.collection = o.collection AND n.id = o.id
        WHERE o.id IS NULL OR n.id IS NULL
           OR (o.version, o.data, o.deleted, o.created_at, o.updated_at)
              IS DISTINCT FROM (n.version, n.data, n.deleted, n.created_at, n.updated_at)"""
    diff = Diff()
    # Counted in SQL, listed up to LIST_LIMIT: memory stays bounded whatever differs.
    for r in await conn.fetch(f"SELECT change, count(*) AS n FROM ({differing}) d GROUP BY 1"):
        setattr(diff, r["change"], r["n"])
    rows = await conn.fetch(f"{differing} ORDER BY 1, 2 LIMIT {LIST_LIMIT}")
    diff.records = [dict(r) for r in rows]
    history = f"""
        SELECT coalesce(o.id, n.id) AS id, coalesce(o.type, n.type) AS type,
               o.status AS live_status, o.reason AS live_reason,
               n.status AS rebuilt_status, n.reason AS rebuilt_reason,
               coalesce(o.seq, n.seq) AS seq
        FROM {live}.events o FULL JOIN "{shadow}".events n ON n.id = o.id
        WHERE o.id IS NULL OR n.id IS NULL
           OR (o.status, o.reason) IS DISTINCT FROM (n.status, n.reason)"""
    diff.history_differs = await conn.fetchval(f"SELECT count(*) FROM ({history}) h")
    # In the live history's order (a row only the rebuild has: by its rebuilt place).
    rows = await conn.fetch(f"SELECT * FROM ({history}) h ORDER BY seq, id LIMIT {LIST_LIMIT}")
    diff.history = [{k: v for k, v in r.items() if k != "seq"} for r in rows]
    diff.platform_differs, diff.platform = await platform.compare(
        conn, tenant, f'"{shadow}"', LIST_LIMIT
    )
    diff.workflows_differs, diff.workflows = await workflow_tables.compare(
        conn, live, f'"{shadow}"', LIST_LIMIT
    )
    return diff


async def _fresh_shadow(
    conn: asyncpg.Connection, tenant: str, shadow: str, topic: str, *, persist: bool
) -> None:
    """Drop any earlier shadow and create an empty one, shaped as the projector shapes it."""
    async with conn.transaction():
        await conn.execute(f'DROP SCHEMA IF EXISTS "{shadow}" CASCADE')
        await _shape(conn, tenant, shadow)
        # Secondary indexes are built once at the end (much cheaper than row by row).
        for index in SECONDARY_INDEXES:
            await conn.execute(f'DROP INDEX "{shadow}".{index}')
        if persist:
            await conn.execute(
                "INSERT INTO eventfold.rebuilds (tenant, shadow, topic, positions, version)"
                " VALUES ($1, $2, $3, '{}', $4) ON CONFLICT (tenant) DO UPDATE SET"
                " shadow = $2, topic = $3, positions = '{}', version = $4, started_at = now()",
                tenant,
                shadow,
                topic,
                store.PROJECTION_VERSION,
            )


async def _shape(conn: asyncpg.Connection, tenant: str, shadow: str) -> None:
    """Run the projector's DDL of ``tenant`` on ``shadow``, with copies of the platform
    tables (creates what is missing)."""
    token = SCHEMA_REDIRECT.set((tenant, shadow))
    try:
        await conn.execute(store.tenant_ddl(tenant))
    finally:
        SCHEMA_REDIRECT.reset(token)
    # The handlers' platform tables, folded afresh (see consumers.projector.platform).
    await conn.execute(platform.copies_ddl(f'"{shadow}"'))


async def _resume(
    conn: asyncpg.Connection, tenant: str, shadow: str, topic: str
) -> dict[int, int] | None:
    """The positions of an interrupted rebuild of ``tenant`` whose shadow is still there."""
    row = await conn.fetchrow(
        "SELECT positions, version FROM eventfold.rebuilds WHERE tenant = $1 AND topic = $2"
        " AND shadow = $3",
        tenant,
        topic,
        shadow,
    )
    if row is None or row["version"] != store.PROJECTION_VERSION or not row["positions"]:
        return None
    present = await conn.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname = $1", shadow)
    if not present or not await platform.copies_present(conn, f'"{shadow}"'):
        return None
    raw = row["positions"]
    doc = orjson.loads(raw) if isinstance(raw, str | bytes) else raw
    return {int(p): int(o) for p, o in doc.items()}


async def _registered(conn: asyncpg.Connection, tenant: str, shadow: str) -> set[str]:
    """``{tenant}`` when the shadow has applied the tenant's ``tenant.created`` already."""
    done = await conn.fetchval(
        f"""SELECT count(*) FROM "{shadow}".events
            WHERE type = 'tenant.created' AND status = 'applied'"""
    )
    return {tenant} if done else set()


async def _checkpoints(
    conn: asyncpg.Connection, consumer: str, topic: str, partitions: list[int]
) -> dict[int, int]:
    rows = await conn.fetch(
        "SELECT partition, next_offset FROM eventfold.checkpoints"
        " WHERE consumer = $1 AND topic = $2",
        consumer,
        topic,
    )
    found = {r["partition"]: r["next_offset"] for r in rows}
    return {p: found.get(p, 0) for p in partitions}


async def _fold(
    pool: asyncpg.Pool,
    groups: dict[str, list[LogEvent]],
    jobs: dict[str, _Job],
    save: list[_Job],
    replay_id: str,
) -> int:
    """Fold each tenant's events of ``groups`` into its shadow, and save the progress of
    the ``save`` jobs (their positions as they stand after these events).

    Each tenant folds in a transaction of its own, which also saves its progress:
    its shadow rows and its positions commit together, so a resumed rebuild
    never folds an event twice or skips one. Up to :data:`FOLD_CONNECTIONS`
    tenants fold at once: one tenant's statements run in PostgreSQL while the
    next tenant's are built (a rebuild of many tenants is one statement pair per
    tenant per chunk, each mostly a wait). Tenants of ``save`` without events
    here share one transaction for their positions. A failure cancels the
    tenants still folding; what committed stays, with its progress.

    Each job's report counts its events; the total is returned.
    """
    if not groups and not save:
        return 0
    saving = {j.tenant for j in save}
    idle = [j for j in save if j.tenant not in groups]
    gate = asyncio.Semaphore(FOLD_CONNECTIONS)
    folded: dict[str, int] = {}

    async def fold_one(job: _Job, chunk: list[LogEvent]) -> None:
        async with gate, pool.acquire(timeout=30) as conn, conn.transaction():
            # Losing the last commits in a crash loses shadow rows and progress together.
            await conn.execute("SET LOCAL synchronous_commit = off")
            n = await _fold_in(conn, job.tenant, job.shadow, chunk, job.registered, replay_id)
            if job.tenant in saving:
                await _save_progress(conn, [job])
        folded[job.tenant] = n
        job.report.events += n

    async def save_idle() -> None:
        async with gate, pool.acquire(timeout=30) as conn, conn.transaction():
            await conn.execute("SET LOCAL synchronous_commit = off")
            await _save_progress(conn, idle)

    async with asyncio.TaskGroup() as tasks:
        for tenant, chunk in groups.items():
            tasks.create_task(fold_one(jobs[tenant], chunk))
        if idle:
            tasks.create_task(save_idle())
    return sum(folded.values())


async def _save_progress(conn: asyncpg.Connection, jobs: list[_Job]) -> None:
    """Store each job's positions in ``eventfold.rebuilds`` (the caller's transaction)."""
    await conn.executemany(
        "UPDATE eventfold.rebuilds SET positions = positions || $2::jsonb,"
        " updated_at = now() WHERE tenant = $1",
        # The pool's jsonb codec encodes the parameter (string keys for JSON).
        [(j.tenant, {str(p): o for p, o in _positions(j).items()}) for j in jobs],
    )


async def _fold_in(
    conn: asyncpg.Connection,
    tenant: str,
    shadow: str,
    chunk: list[LogEvent],
    registered: set[str],
    replay_id: str,
) -> int:
    """Fold ``chunk`` into ``shadow`` with the projector's own code (caller's transaction)."""
    if not chunk:
        return 0
    # Event types with side effects (handlers) see the replay marker.
    items = [
        LogEvent(
            e.partition,
            e.offset,
            e.timestamp_ms,
            e.event.model_copy(update={REPLAY_ATTRIBUTE: replay_id}),
            e.raw,
        )
        if e.event is not None and e.event.type in HANDLERS
        else e
        for e in chunk
    ]
    token = SCHEMA_REDIRECT.set((tenant, shadow))
    try:
        await _apply_tenant(conn, tenant, items, registered, {}, BatchResult())
    finally:
        SCHEMA_REDIRECT.reset(token)
    return len(items)


async def _throttle(events: int, started: float, opts: Options, share: float | None = None) -> None:
    """Keep under ``opts.rate`` events/s (``events`` folded so far) and report progress."""
    elapsed = time.perf_counter() - started
    if opts.progress is not None:
        opts.progress(events, elapsed, share)
    if opts.rate:
        ahead = events / opts.rate - elapsed
        if ahead > 0:
            await asyncio.sleep(ahead)


async def all_tenants(pool: asyncpg.Pool) -> list[str]:
    """Every registered tenant."""
    async with pool.acquire(timeout=10) as conn:
        rows = await conn.fetch("SELECT id FROM eventfold.tenants ORDER BY id")
    return [r["id"] for r in rows]

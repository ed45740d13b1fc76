"""Blue-green rebuild of tenants' projections: fold the log into shadow schemas, swap them in.

The live schema keeps serving reads while the shadow catches up. The swap runs
in one transaction holding the projector's checkpoint rows (``FOR UPDATE``, as
the projector's own batches do): the tail up to those checkpoints is folded into
the shadow, the shadow is compared, and the schemas are renamed (grants follow
the schema, so the tenant's read role keeps reading). Progress (shadow schema +
positions) is committed with each chunk in ``eventfold.rebuilds``: a re-run after
an interruption continues from there. The fold is the projector's own
(:func:`eventfold.projection.batch.fold_tenant`), handed the shadow as its
:class:`~eventfold.readmodel.Target`; the shadow's tables, their
comparison and the swap are the read model's (:mod:`eventfold.readmodel`).
Tenants rebuilt together share one read of the log (each has its own shadow,
progress and swap). Platform tables the handlers write (API keys, webhooks,
integrations) are folded into copies inside the shadow and reconciled into the
live tables at the swap (see :mod:`eventfold.projection.platform`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from consumers.rebuild import source
from eventfold import db, readmodel
from eventfold.ids import shadow_schema_name
from eventfold.projection import platform
from eventfold.projection.batch import BatchResult, LogEvent, fold_tenant
from eventfold.projection.handlers import HANDLERS
from eventfold.readmodel import Target
from eventfold.replay import REPLAY_ATTRIBUTE
from eventfold.s3 import open_s3
from eventfold.settings import Settings
from eventfold.workflows import tables as workflow_tables

#: ``(events folded, seconds, share of the log's offsets covered or None)``.
Progress = Callable[[int, float, float | None], None]
#: Records listed per kind of difference in a report.
LIST_LIMIT = 100
#: Tenants folding a chunk at once, each on its own connection (the pool has 20).
FOLD_CONNECTIONS = 2


@dataclass(slots=True)
class Diff(readmodel.Differences):
    """How the rebuilt projection differs from the live one: records and history rows
    (:class:`eventfold.readmodel.Differences`), the tenant's platform rows and its workflow
    rows."""

    #: Rows of the tenant's platform tables (API keys, webhooks, integrations).
    platform_differs: int = 0
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
    #: The shadow schema's name (unquoted, as ``eventfold.rebuilds`` holds it).
    shadow: str
    report: Report
    #: Where the fold goes: the shadow, quoted.
    target: Target
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
    suffix = "verify" if opts.compare_only else "rebuild"
    replay_id = uuid.uuid4().hex
    jobs: list[_Job] = []
    async with pool.acquire(timeout=10) as conn:
        for tenant in tenants:
            name = shadow_schema_name(tenant, suffix)
            job = _Job(tenant, name, Report(tenant), Target.rebuild(tenant, f'"{name}"', topic))
            if not opts.compare_only:
                job.positions = await _resume(conn, job, topic)
            if job.positions is not None:
                job.report.resumed = True
                job.registered = await _registered(conn, job)
            else:
                await _fresh_shadow(conn, job, topic, persist=not opts.compare_only)
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
            async with open_s3(settings) as s3, asyncio.TaskGroup() as tasks:
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
    tenant, schema, report = job.tenant, job.target.schema, job.report
    positions = _positions(job)
    async with pool.acquire(timeout=30) as conn:
        await _shape(conn, job)  # the secondary indexes, before the swap
    async with pool.acquire(timeout=30) as conn, conn.transaction():
        target = await db.lock_checkpoints(conn, projector, topic, sorted(positions))
        tail = source.read_range(settings, topic, {tenant}, positions, target)
        async for chunk, reached in tail:
            report.events += await _fold_in(conn, job, chunk, replay_id)
            positions.update(reached)
        report.diff = await compare(conn, tenant, schema)
        if not job.registered and opts.from_time is None:
            # The log read does not start at the tenant's creation (retention, or the
            # wrong topic): swapping would drop what only the old schema still holds.
            report.error = (
                "the log read holds no tenant.created of this tenant (try --from-archive)"
            )
        if opts.compare_only or report.error:
            await readmodel.drop_schema(conn, schema)
            if not opts.compare_only:
                await conn.execute("DELETE FROM eventfold.rebuilds WHERE tenant = $1", tenant)
        else:
            await platform.reconcile(conn, tenant, schema)
            await conn.execute(platform.drop_copies_ddl(schema))
            await readmodel.swap(conn, tenant, schema)
            await conn.execute("DELETE FROM eventfold.rebuilds WHERE tenant = $1", tenant)
            report.swapped = True


async def compare(conn: asyncpg.Connection, tenant: str, shadow: str) -> Diff:
    """Records, history rows, platform rows and workflow rows of the rebuilt ``shadow``
    (quoted) that differ from the live ones."""
    found = await readmodel.compare(conn, tenant, shadow, LIST_LIMIT)
    diff = Diff(**{f.name: getattr(found, f.name) for f in dataclasses.fields(found)})
    diff.platform_differs, diff.platform = await platform.compare(conn, tenant, shadow, LIST_LIMIT)
    diff.workflows_differs, diff.workflows = await workflow_tables.compare(
        conn, readmodel.schema_of(tenant), shadow, LIST_LIMIT
    )
    return diff


async def _fresh_shadow(conn: asyncpg.Connection, job: _Job, topic: str, *, persist: bool) -> None:
    """Drop any earlier shadow of ``job`` and create an empty one, shaped as the projector
    shapes a tenant (without the secondary indexes until the end), with empty copies of
    the platform tables."""
    async with conn.transaction():
        await readmodel.create_shadow(conn, job.tenant, job.target.schema)
        # The handlers' platform tables, folded afresh (see eventfold.projection.platform).
        await conn.execute(platform.copies_ddl(job.target.schema))
        if persist:
            await conn.execute(
                "INSERT INTO eventfold.rebuilds (tenant, shadow, topic, positions, version)"
                " VALUES ($1, $2, $3, '{}', $4) ON CONFLICT (tenant) DO UPDATE SET"
                " shadow = $2, topic = $3, positions = '{}', version = $4, started_at = now()",
                job.tenant,
                job.shadow,
                topic,
                readmodel.PROJECTION_VERSION,
            )


async def _shape(conn: asyncpg.Connection, job: _Job) -> None:
    """Give ``job``'s shadow what the tenant's DDL has and it lacks (its secondary indexes),
    and the copies of the platform tables."""
    await readmodel.add_indexes(conn, job.tenant, job.target.schema)
    await conn.execute(platform.copies_ddl(job.target.schema))


async def _resume(conn: asyncpg.Connection, job: _Job, topic: str) -> dict[int, int] | None:
    """The positions of an interrupted rebuild of ``job``'s tenant whose shadow is still there."""
    row = await conn.fetchrow(
        "SELECT positions, version FROM eventfold.rebuilds WHERE tenant = $1 AND topic = $2"
        " AND shadow = $3",
        job.tenant,
        topic,
        job.shadow,
    )
    if row is None or row["version"] != readmodel.PROJECTION_VERSION or not row["positions"]:
        return None
    schema = job.target.schema
    if not await readmodel.schema_exists(conn, schema):
        return None
    if not await platform.copies_present(conn, schema):
        return None
    raw = row["positions"]
    doc = orjson.loads(raw) if isinstance(raw, str | bytes) else raw
    return {int(p): int(o) for p, o in doc.items()}


async def _registered(conn: asyncpg.Connection, job: _Job) -> set[str]:
    """``{tenant}`` when the shadow has applied the tenant's ``tenant.created`` already."""
    done = await readmodel.registered_in(conn, job.target.schema)
    return {job.tenant} if done else set()


async def _checkpoints(
    conn: asyncpg.Connection, consumer: str, topic: str, partitions: list[int]
) -> dict[int, int]:
    found = await db.fetch_checkpoints(conn, consumer, topic)
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
            n = await _fold_in(conn, job, chunk, replay_id)
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
    conn: asyncpg.Connection, job: _Job, chunk: list[LogEvent], replay_id: str
) -> int:
    """Fold ``chunk`` into ``job``'s shadow with the projector's own code (caller's transaction)."""
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
    await fold_tenant(conn, job.target, items, job.registered, {}, BatchResult())
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
    """Every registered tenant but the deleted ones (nothing of theirs is rebuilt)."""
    async with pool.acquire(timeout=10) as conn:
        rows = await conn.fetch(
            "SELECT id FROM eventfold.tenants WHERE status <> 'deleted' ORDER BY id"
        )
    return [r["id"] for r in rows]

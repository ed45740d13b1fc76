"""Blue-green rebuild of one tenant's projection: fold the log into a shadow schema, swap it in.

The live schema keeps serving reads while the shadow catches up. The swap runs
in one transaction holding the projector's checkpoint rows (``FOR UPDATE``, as
the projector's own batches do): the tail up to those checkpoints is folded into
the shadow, the shadow is compared, and the schemas are renamed (grants follow
the schema, so the tenant's read role keeps reading). Progress (shadow schema +
positions) is committed with each chunk in ``eventfold.rebuilds``: a re-run after
an interruption continues from there. The fold is the projector's own
(:mod:`consumers.projector.batch`), pointed at the shadow through
:data:`eventfold.ids.SCHEMA_REDIRECT`.
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

from consumers.projector import store
from consumers.projector.batch import BatchResult, LogEvent, _apply_tenant
from consumers.projector.handlers import HANDLERS
from consumers.rebuild import source
from eventfold.ids import SCHEMA_REDIRECT, shadow_schema_name, tenant_schema
from eventfold.replay import REPLAY_ATTRIBUTE
from eventfold.settings import Settings

#: ``(events folded, seconds, share of the log's offsets covered or None)``.
Progress = Callable[[int, float, float | None], None]
#: Indexes of the tenant schema (store.tenant_ddl) not needed while folding.
SECONDARY_INDEXES = ("records_by_updated", "records_data", "events_by_type", "events_by_subject")
#: Records listed per kind of difference in a report.
LIST_LIMIT = 100


@dataclass(slots=True)
class Diff:
    """How the rebuilt projection differs from the live one."""

    added: int = 0
    changed: int = 0
    removed: int = 0
    history_differs: int = 0
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def equal(self) -> bool:
        """No record and no history row differs."""
        return not (self.added or self.changed or self.removed or self.history_differs)


@dataclass(slots=True)
class Report:
    """What one tenant's rebuild (or verification) did."""

    tenant: str
    events: int = 0
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
            "records": d.records,
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


async def rebuild(settings: Settings, pool: asyncpg.Pool, tenant: str, opts: Options) -> Report:
    """Rebuild ``tenant``'s projection (or, with ``compare_only``, compare a fresh fold with it)."""
    started = time.perf_counter()
    report = Report(tenant)
    topic = settings.events_topic
    projector = f"{settings.consumer_group_prefix}.projector"
    suffix = "verify" if opts.compare_only else "rebuild"
    shadow = shadow_schema_name(tenant, suffix)
    replay_id = uuid.uuid4().hex
    registered: set[str] = set()
    async with pool.acquire(timeout=10) as conn:
        positions = None if opts.compare_only else await _resume(conn, tenant, shadow, topic)
        if positions is not None:
            report.resumed = True
            registered = await _registered(conn, tenant, shadow)
        else:
            await _fresh_shadow(conn, tenant, shadow, topic, persist=not opts.compare_only)
    if positions is None:
        positions = {}
        if opts.from_archive:
            # Closed on the way out whatever happens: the read-ahead task stops with it.
            archived = source.read_ahead(source.read_archive(settings, tenant))
            async with contextlib.aclosing(archived):
                async for chunk, reached in archived:
                    report.events += await _fold(
                        pool, tenant, shadow, chunk, registered, replay_id, None
                    )
                    positions.update(reached)
                    await _throttle(report, started, opts)
        at_ms = int(opts.from_time.timestamp() * 1000) if opts.from_time else None
        start = await source.offsets_at(settings, topic, at_ms)
        for p, o in start.items():
            positions[p] = max(positions.get(p, 0), o) if opts.from_archive else o
    save = None if opts.compare_only else (tenant, topic)
    # Catch up without holding anything: up to where the projector is now.
    async with pool.acquire(timeout=10) as conn:
        target = await _checkpoints(conn, projector, topic, list(positions))
    begin = dict(positions)
    total = sum(max(0, target[p] - begin.get(p, 0)) for p in target) or 1
    catch_up = source.read_ahead(source.read_range(settings, topic, tenant, positions, target))
    async with contextlib.aclosing(catch_up):
        async for chunk, reached in catch_up:
            report.events += await _fold(
                pool, tenant, shadow, chunk, registered, replay_id, save, reached
            )
            positions.update(reached)
            covered = sum(max(0, positions[p] - begin.get(p, 0)) for p in target)
            await _throttle(report, started, opts, min(1.0, covered / total))
    async with pool.acquire(timeout=30) as conn:
        await _shape(conn, tenant, shadow)  # the secondary indexes, before the swap
    # The tail and the swap, with the projector held at its checkpoints.
    async with pool.acquire(timeout=30) as conn, conn.transaction():
        target = await store.lock_checkpoints(conn, projector, topic, sorted(positions))
        async for chunk, reached in source.read_range(settings, topic, tenant, positions, target):
            report.events += await _fold_in(conn, tenant, shadow, chunk, registered, replay_id)
            positions.update(reached)
        report.diff = await compare(conn, tenant, shadow)
        if not registered and opts.from_time is None:
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
    report.seconds = time.perf_counter() - started
    if opts.progress is not None:
        opts.progress(report.events, report.seconds, 1.0)
    return report


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
    diff.history_differs = await conn.fetchval(
        f"""SELECT count(*) FROM {live}.events o FULL JOIN "{shadow}".events n ON n.id = o.id
            WHERE o.id IS NULL OR n.id IS NULL
               OR (o.status, o.reason) IS DISTINCT FROM (n.status, n.reason)"""
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
    """Run the projector's DDL of ``tenant`` on ``shadow`` (creates what is missing)."""
    token = SCHEMA_REDIRECT.set((tenant, shadow))
    try:
        await conn.execute(store.tenant_ddl(tenant))
    finally:
        SCHEMA_REDIRECT.reset(token)


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
    if not present:
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
    tenant: str,
    shadow: str,
    chunk: list[LogEvent],
    registered: set[str],
    replay_id: str,
    save: tuple[str, str] | None,
    reached: dict[int, int] | None = None,
) -> int:
    """Fold one chunk into the shadow in its own transaction, with the progress it reaches."""
    async with pool.acquire(timeout=30) as conn, conn.transaction():
        # Losing the last commits in a crash loses shadow rows and progress together.
        await conn.execute("SET LOCAL synchronous_commit = off")
        n = await _fold_in(conn, tenant, shadow, chunk, registered, replay_id)
        if save is not None and reached is not None:
            await conn.execute(
                "UPDATE eventfold.rebuilds SET positions = positions || $2::jsonb,"
                " updated_at = now() WHERE tenant = $1",
                save[0],
                # The pool's jsonb codec encodes the parameter (string keys for JSON).
                {str(p): o for p, o in reached.items()},
            )
    return n


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


async def _throttle(
    report: Report, started: float, opts: Options, share: float | None = None
) -> None:
    """Keep under ``opts.rate`` events/s and report progress."""
    elapsed = time.perf_counter() - started
    if opts.progress is not None:
        opts.progress(report.events, elapsed, share)
    if opts.rate:
        ahead = report.events / opts.rate - elapsed
        if ahead > 0:
            await asyncio.sleep(ahead)


async def all_tenants(pool: asyncpg.Pool) -> list[str]:
    """Every registered tenant."""
    async with pool.acquire(timeout=10) as conn:
        rows = await conn.fetch("SELECT id FROM eventfold.tenants ORDER BY id")
    return [r["id"] for r in rows]

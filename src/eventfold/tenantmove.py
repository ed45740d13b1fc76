"""Moving a tenant to another database server while it is written and read.

``eventfold tenants move T --to S`` (:func:`move_tenant`). The tenant's projection,
platform rows and the state of its side effects (deliveries, sync cursors, runs,
data keys) are copied at one position of the log, the handover, and each server's
projector folds the tenant on its side of it:

1. **Pause the side effects on the source.** Its ``eventfold.tenant_homes`` row
   becomes ``leaving``: the notifier, sync and workflows processors claim nothing
   of the tenant there, and no data key is made for it there (a publish needing one
   answers 503, retried). The move waits until the leases taken before have lapsed.
2. **Handover.** Under the target's projector checkpoint locks (its projector
   waits), once the source's projector is at least as far, and under the source's
   locks (its projector waits too): the source's checkpoints are the handover
   positions; everything of the tenant is copied in the target's transaction, with
   its ``tenant_homes`` row ``live`` since those positions. The target's projector
   then skips the tenant's events before them (the copy holds them) and folds those
   after; the source's goes on folding them into its copy, which still serves.
3. **Switch.** The directory entry on ``main`` names the target; every process reads
   it again within :data:`eventfold.placement.ENTRY_SECONDS`, so reads and writes'
   lookups go to the target.
4. **Drop.** After a grace period longer than that, the source's copy goes and its
   row becomes ``gone``: its projector passes the tenant's events over from then on.

A move that fails before the switch leaves the tenant where it was (its source row
is removed, so its side effects resume); run again, it starts over (a target copy
from a failed attempt is dropped first). One that fails after the switch is run
again to finish the drop.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg

from eventfold import readmodel
from eventfold.db import fetch_checkpoints, lock_checkpoints
from eventfold.errors import PermanentError, RetriableError
from eventfold.ids import tenant_schema
from eventfold.placement import ENTRY_SECONDS, Placement
from eventfold.projection.tenants import TENANT_ROWS
from eventfold.settings import Settings
from eventfold.tenancy import tenant_lock

#: A line of progress for the operator.
Progress = Callable[[str], None]
#: Tables whose id a sequence of the target server gives (their rows get new ids there).
_SERIAL_IDS = frozenset({"webhook_deliveries", "webhook_attempts", "workflow_inbox"})


class MoveRefused(PermanentError):
    """The move cannot be made as asked (no such tenant or server, already there)."""


class MoveStalled(RetriableError):
    """A step did not finish in time (a projector or a lease); nothing was switched."""


@dataclass(slots=True)
class MoveReport:
    """What a move did."""

    tenant: str
    source: str
    target: str
    #: The handover positions: ``{partition: offset}`` of the events topic.
    handover: dict[int, int]
    rows: int
    seconds: float
    #: How long both servers' projectors waited for the handover (0 when resumed).
    handover_seconds: float = 0.0


async def move_tenant(
    settings: Settings,
    placed: Placement,
    tenant: str,
    target: str,
    *,
    progress: Progress = lambda _line: None,
    grace: float = 3 * ENTRY_SECONDS,
    wait: float = 120.0,
) -> MoveReport:
    """Move ``tenant`` to server ``target`` (see the module); raises :class:`MoveRefused`
    or :class:`MoveStalled`."""
    started = time.monotonic()
    if target not in placed.pools:
        raise MoveRefused(f"no database server {target!r} (EVENTFOLD_DATABASE_SERVERS)")
    source = (await placed.directory.servers_of([tenant], fresh=True))[tenant]
    src, dst = placed.pools[source], placed.pools[target]
    if not await _exists(src, tenant):
        raise MoveRefused(f"no tenant {tenant} on its server {source}")
    if source == target:
        # An earlier run may have switched and not dropped the old copy: drop it now.
        for name, pool in placed.pools.items():
            if name != target and await _state(pool, tenant) == "leaving":
                progress(f"{tenant}: dropping {name}'s copy, left by an earlier move")
                await _drop_copy(pool, tenant, state="gone")
                return MoveReport(tenant, name, target, {}, 0, time.monotonic() - started)
        raise MoveRefused(f"tenant {tenant} is on {target} already")
    copied, held = 0, 0.0
    handover: dict[int, int] = {}
    if await _state(dst, tenant) != "live":
        await _set_state(src, tenant, "leaving")
        try:
            progress(f"{tenant}: side effects paused on {source}; waiting for their leases")
            await _leases_lapsed(src, tenant, wait)
            await _drop_copy(dst, tenant, state=None)  # a failed attempt's, if any
            progress(f"{tenant}: handing over to {target}")
            handover, copied, held = await _hand_over(settings, src, dst, tenant, wait)
        except BaseException:
            await _clear_state(src, tenant)
            raise
        progress(f"{tenant}: {copied} rows copied at {_positions(handover)}")
    async with placed.home.acquire(timeout=10) as conn:
        await conn.execute(
            "INSERT INTO eventfold.tenant_placement (tenant, server) VALUES ($1, $2)"
            " ON CONFLICT (tenant) DO UPDATE SET server = $2, placed_at = now()",
            tenant,
            target,
        )
    progress(f"{tenant}: now on {target}; dropping {source}'s copy in {grace:.0f} s")
    await asyncio.sleep(grace)
    await _drop_copy(src, tenant, state="gone")
    return MoveReport(tenant, source, target, handover, copied, time.monotonic() - started, held)


def _positions(handover: dict[int, int]) -> str:
    return ",".join(f"{p}:{o}" for p, o in sorted(handover.items())) or "the start"


async def _exists(pool: asyncpg.Pool, tenant: str) -> bool:
    async with pool.acquire(timeout=10) as conn:
        return bool(
            await conn.fetchval(
                "SELECT true FROM eventfold.tenants WHERE id = $1 AND status <> 'deleted'", tenant
            )
        )


async def _state(pool: asyncpg.Pool, tenant: str) -> str | None:
    async with pool.acquire(timeout=10) as conn:
        state: str | None = await conn.fetchval(
            "SELECT state FROM eventfold.tenant_homes WHERE tenant = $1", tenant
        )
        return state


async def _set_state(pool: asyncpg.Pool, tenant: str, state: str) -> None:
    async with pool.acquire(timeout=10) as conn:
        await conn.execute(
            "INSERT INTO eventfold.tenant_homes (tenant, state) VALUES ($1, $2)"
            " ON CONFLICT (tenant) DO UPDATE SET state = $2, updated_at = now()",
            tenant,
            state,
        )


async def _clear_state(pool: asyncpg.Pool, tenant: str) -> None:
    async with pool.acquire(timeout=10) as conn:
        await conn.execute("DELETE FROM eventfold.tenant_homes WHERE tenant = $1", tenant)


async def _leases_lapsed(pool: asyncpg.Pool, tenant: str, within: float) -> None:
    """Wait until no delivery, sync or run of ``tenant`` is leased on ``pool``'s server."""
    deadline = time.monotonic() + within
    while True:
        async with pool.acquire(timeout=10) as conn:
            held = await conn.fetchval(
                """SELECT (SELECT count(*) FROM eventfold.webhook_deliveries
                           WHERE tenant = $1 AND state = 'pending' AND lease_until > now())
                        + (SELECT count(*) FROM eventfold.integrations
                           WHERE tenant = $1 AND lease_until > now())
                        + (SELECT count(*) FROM eventfold.workflow_runs
                           WHERE tenant = $1 AND lease_until > now())""",
                tenant,
            )
        if not held:
            return
        if time.monotonic() > deadline:
            raise MoveStalled(f"{held} leases of tenant {tenant} still held after {within:.0f} s")
        await asyncio.sleep(0.2)


async def _hand_over(
    settings: Settings, src: asyncpg.Pool, dst: asyncpg.Pool, tenant: str, within: float
) -> tuple[dict[int, int], int, float]:
    """Copy ``tenant`` to ``dst`` at the source projector's checkpoints (see step 2); the
    handover positions, the rows copied and how long the target's checkpoints were held."""
    consumer = f"{settings.consumer_group_prefix}.projector"
    topic = settings.events_topic
    async with src.acquire(timeout=10) as s, dst.acquire(timeout=10) as d:
        # A partition neither projector has a checkpoint of holds nothing either folded.
        partitions = sorted(
            set(await fetch_checkpoints(s, consumer, topic))
            | set(await fetch_checkpoints(d, consumer, topic))
        )
        locked = time.monotonic()
        async with d.transaction():
            target_at = await lock_checkpoints(d, consumer, topic, partitions)
            # The source's projector must have folded at least what the target's passed
            # over, or the target would miss those events of the tenant.
            deadline = time.monotonic() + within
            while True:
                at = await fetch_checkpoints(s, consumer, topic)
                if all(at.get(p, 0) >= o for p, o in target_at.items()):
                    break
                if time.monotonic() > deadline:
                    raise MoveStalled(
                        "the source server's projector did not reach the target's position"
                        f" within {within:.0f} s: is it running?"
                    )
                await asyncio.sleep(0.05)
            async with s.transaction():
                handover = await lock_checkpoints(s, consumer, topic, partitions)
                copied = await _copy(s, d, tenant)
                await d.execute(
                    "INSERT INTO eventfold.tenant_homes (tenant, state, since)"
                    " VALUES ($1, 'live', $2)"
                    " ON CONFLICT (tenant) DO UPDATE SET state = 'live', since = $2,"
                    " updated_at = now()",
                    tenant,
                    {str(p): o for p, o in handover.items()},
                )
    return handover, copied, time.monotonic() - locked


async def _copy(s: asyncpg.Connection, d: asyncpg.Connection, tenant: str) -> int:
    """Copy ``tenant``'s schema and platform rows from ``s``'s server to ``d``'s."""
    schema = tenant_schema(tenant)
    await tenant_lock(d, tenant)
    await d.execute(readmodel.tenant_ddl(tenant))
    copied = 0
    tables = await s.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = $1 ORDER BY tablename",
        schema.strip('"'),
    )
    for row in tables:
        table = row["tablename"]
        columns = await _columns(d, schema.strip('"'), table)
        copied += await _copy_text(
            s,
            d,
            f"SELECT {_list(columns)} FROM {schema}.{_quote(table)}",
            (),
            schema.strip('"'),
            table,
            columns,
        )
        # A serial column's sequence goes on after the copied values.
        for column in await _columns(d, schema.strip('"'), table, serial=True):
            await d.execute(
                "SELECT setval(pg_get_serial_sequence($1, $2), greatest("
                f"(SELECT max({_quote(column)}) FROM {schema}.{_quote(table)}), 1))",
                f"{schema}.{_quote(table)}",
                column,
            )
    # tenant_ddl recorded the current projection version; the source's is the truth.
    await d.execute("DELETE FROM eventfold.projection_versions WHERE tenant = $1", tenant)
    copied += await _copy_rows(s, d, "tenants", "id = $1", tenant)
    delivery_ids: dict[int, tuple[str, str]] = {}
    # Parents before children: deliveries before their attempts.
    for table, where in reversed(TENANT_ROWS):
        if table == "rebuilds":
            continue  # a rebuild's progress belongs to the source's shadow schemas
        if table == "webhook_deliveries":
            rows = await s.fetch(
                f"SELECT id, webhook_id, event_id FROM eventfold.{table} WHERE {where}", tenant
            )
            delivery_ids = {r["id"]: (r["webhook_id"], r["event_id"]) for r in rows}
        copied += await _copy_rows(s, d, table, where, tenant, delivery_ids=delivery_ids)
    return copied


async def _copy_rows(
    s: asyncpg.Connection,
    d: asyncpg.Connection,
    table: str,
    where: str,
    tenant: str,
    *,
    delivery_ids: dict[int, tuple[str, str]] | None = None,
) -> int:
    """Copy the rows of ``eventfold.table`` matching ``where`` (``$1``: the tenant)."""
    columns = await _columns(d, "eventfold", table)
    if table in _SERIAL_IDS:
        columns = [c for c in columns if c != "id"]
    query = f"SELECT {_list(columns)} FROM eventfold.{table} WHERE {where}" + (
        " ORDER BY id" if table in _SERIAL_IDS else ""
    )
    if table != "webhook_attempts":
        return await _copy_text(s, d, query, (tenant,), "eventfold", table, columns)
    records = await s.fetch(query, tenant)
    if records:
        # An attempt names its delivery by id: the target gave the deliveries new ones.
        new_ids = {
            (r["webhook_id"], r["event_id"]): r["id"]
            for r in await d.fetch(
                "SELECT id, webhook_id, event_id FROM eventfold.webhook_deliveries"
                " WHERE tenant = $1",
                tenant,
            )
        }
        at = columns.index("delivery_id")
        old = delivery_ids or {}
        remapped = [
            tuple(new_ids.get(old.get(v, ("", "")), v) if n == at else v for n, v in enumerate(r))
            for r in records
        ]
        await d.copy_records_to_table(
            table, schema_name="eventfold", records=remapped, columns=columns
        )
    return len(records)


async def _copy_text(
    s: asyncpg.Connection,
    d: asyncpg.Connection,
    query: str,
    args: tuple[object, ...],
    schema: str,
    table: str,
    columns: list[str],
) -> int:
    """COPY ``query``'s rows from ``s`` into ``schema.table`` on ``d`` (text format: every
    type goes, json too); the rows copied."""
    buffer = io.BytesIO()
    await s.copy_from_query(query, *args, output=buffer, format="text")
    rows = buffer.getvalue().count(b"\n")
    if rows:
        buffer.seek(0)
        await d.copy_to_table(
            table, source=buffer, schema_name=schema, columns=columns, format="text"
        )
    return rows


async def _columns(
    conn: asyncpg.Connection, schema: str, table: str, *, serial: bool = False
) -> list[str]:
    """The table's columns in order (``serial``: only those a sequence fills)."""
    rows = await conn.fetch(
        "SELECT column_name FROM information_schema.columns"
        " WHERE table_schema = $1 AND table_name = $2"
        " AND (NOT $3 OR column_default LIKE 'nextval(%') ORDER BY ordinal_position",
        schema,
        table,
        serial,
    )
    return [r["column_name"] for r in rows]


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _list(columns: list[str]) -> str:
    return ", ".join(_quote(c) for c in columns)


async def _drop_copy(pool: asyncpg.Pool, tenant: str, *, state: str | None) -> None:
    """Remove ``tenant``'s schema and platform rows from ``pool``'s server, leaving its
    ``tenant_homes`` row as ``state`` (none: removed)."""
    schema = tenant_schema(tenant)
    async with pool.acquire(timeout=10) as conn, conn.transaction():
        await tenant_lock(conn, tenant)
        if state is None:
            await conn.execute("DELETE FROM eventfold.tenant_homes WHERE tenant = $1", tenant)
        else:
            await conn.execute(
                "INSERT INTO eventfold.tenant_homes (tenant, state) VALUES ($1, $2)"
                " ON CONFLICT (tenant) DO UPDATE SET state = $2, updated_at = now()",
                tenant,
                state,
            )
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        for table, where in TENANT_ROWS:
            await conn.execute(f"DELETE FROM eventfold.{table} WHERE {where}", tenant)
        await conn.execute("DELETE FROM eventfold.tenants WHERE id = $1", tenant)

"""One batch of the log folded into the projections, in one transaction.

The batch's partition checkpoints are locked first and written last in the
same transaction, so a batch is applied entirely or not at all, and never twice.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

from consumers.projector import store
from consumers.projector.fold import RECORD_TYPES, Outcome, Record, apply
from eventfold.db import CHECKPOINT_CHANNEL
from eventfold.envelope import CloudEvent
from eventfold.ids import is_valid, tenant_schema


@dataclass(frozen=True, slots=True)
class LogEvent:
    """An event read from the log with its position; ``event`` is None when undecodable."""

    partition: int
    offset: int
    timestamp_ms: int
    event: CloudEvent | None
    #: The envelope as it is in the log; stored as is (no re-serialisation per event).
    raw: bytes | None = None


@dataclass(slots=True)
class BatchResult:
    """What a batch did, for metrics and logs."""

    applied: int = 0
    rejected: int = 0
    duplicates: int = 0
    skipped: int = 0
    positions: dict[int, int] = field(default_factory=dict)
    newest_event_time: datetime | None = None


async def apply_batch(
    conn: asyncpg.Connection, *, consumer: str, topic: str, events: Sequence[LogEvent]
) -> BatchResult:
    """Fold ``events`` (in log order per partition) and checkpoint them atomically."""
    result = BatchResult()
    if not events:
        return result
    async with conn.transaction():
        stored = await store.lock_checkpoints(
            conn, consumer, topic, sorted({e.partition for e in events})
        )
        by_tenant: dict[str, list[LogEvent]] = defaultdict(list)
        for item in events:
            stored_next = stored.get(item.partition, 0)
            result.positions[item.partition] = max(
                result.positions.get(item.partition, stored_next), item.offset + 1
            )
            if item.offset < stored_next:
                result.duplicates += 1  # applied by an earlier batch (a redelivery)
                continue
            ev = item.event
            if ev is None or ev.tenant is None or not is_valid("tenant", ev.tenant):
                result.skipped += 1
                continue
            by_tenant[ev.tenant].append(item)
        await _ensure_schemas(conn, list(by_tenant))
        registered = await store.existing_tenants(conn, list(by_tenant))
        for tenant, items in by_tenant.items():
            await _apply_tenant(conn, tenant, items, registered, result)
        await store.save_checkpoints(conn, consumer, topic, result.positions)
        await conn.execute(
            "SELECT pg_notify($1, $2)",
            CHECKPOINT_CHANNEL,
            orjson.dumps(
                {"t": topic, "c": consumer, "p": result.positions}, option=orjson.OPT_NON_STR_KEYS
            ).decode(),
        )
    return result


async def _ensure_schemas(conn: asyncpg.Connection, tenants: list[str]) -> None:
    """Create missing tenant schemas.

    Record events of a tenant can reach the projector before its
    ``tenant.created`` (they sit on other partitions, and a replay reads
    partitions at different speeds), so the schema comes with the first event
    of any type; the tenant becomes visible when ``tenant.created`` registers it.
    """
    if not tenants:
        return
    names = [f"t_{t}" for t in tenants]
    rows = await conn.fetch(
        "SELECT nspname FROM pg_namespace WHERE nspname = ANY($1::text[])", names
    )
    present = {r["nspname"] for r in rows}
    for tenant in tenants:
        if f"t_{tenant}" not in present:
            # Two processors creating one schema at once would collide in pg_namespace.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", tenant_schema(tenant))
            await conn.execute(store.tenant_ddl(tenant))


async def _apply_tenant(
    conn: asyncpg.Connection,
    tenant: str,
    items: list[LogEvent],
    registered: set[str],
    result: BatchResult,
) -> None:
    seen = await store.known_event_ids(conn, tenant, [i.event.id for i in items if i.event])
    # Each record event's key, parsed once; None for other types or a bad subject.
    keys = [
        _record_key(i.event.subject or "")
        if i.event is not None and i.event.type in RECORD_TYPES
        else None
        for i in items
    ]
    wanted = list(dict.fromkeys(k for k in keys if k is not None))
    state: dict[tuple[str, str], Record | None] = dict(
        await store.load_records(conn, tenant, wanted)
    )
    changed: dict[tuple[str, str], tuple[Record, str]] = {}
    history: list[store.HistoryRow] = []
    for item, key in zip(items, keys, strict=True):
        ev = item.event
        assert ev is not None  # filtered by apply_batch
        if ev.id in seen:
            result.duplicates += 1
            continue
        seen.add(ev.id)
        at = ev.time or datetime.fromtimestamp(item.timestamp_ms / 1000, UTC)
        outcome = await _apply_one(conn, tenant, ev, key, at, registered, state, changed)
        if outcome.status == "applied":
            result.applied += 1
        else:
            result.rejected += 1
        if result.newest_event_time is None or at > result.newest_event_time:
            result.newest_event_time = at
        history.append(
            store.HistoryRow(
                id=ev.id,
                type=ev.type,
                subject=ev.subject,
                time=at,
                status=outcome.status,
                reason=outcome.reason,
                partition=item.partition,
                offset=item.offset,
                envelope=item.raw.decode()
                if item.raw is not None and ev.time is not None
                else orjson.dumps(ev.to_dict()).decode(),
            )
        )
    await store.save_records(conn, tenant, changed)
    await store.append_history(conn, tenant, history)


async def _apply_one(
    conn: asyncpg.Connection,
    tenant: str,
    ev: CloudEvent,
    key: tuple[str, str] | None,
    at: datetime,
    registered: set[str],
    state: dict[tuple[str, str], Record | None],
    changed: dict[tuple[str, str], tuple[Record, str]],
) -> Outcome:
    if ev.type == "tenant.created":
        data: dict[str, Any] = ev.data if isinstance(ev.data, dict) else {}
        if tenant in registered:
            return Outcome("rejected", f"tenant {tenant} exists already")
        if data.get("id") != tenant:
            return Outcome("rejected", "tenant.created data.id differs from the event's tenant")
        await store.create_tenant(
            conn,
            tenant=tenant,
            name=str(data.get("name") or tenant),
            limits=dict(data.get("limits") or {}),
            created_at=at,
            event_id=ev.id,
        )
        registered.add(tenant)
        return Outcome("applied")
    if ev.type in RECORD_TYPES:
        if key is None:
            return Outcome("rejected", "subject must be {collection}/{id}")
        new, outcome = apply(
            state.get(key), ev.type, ev.data, at=at, expected_version=ev.expectedversion
        )
        if outcome.status == "applied" and new is not None:
            state[key] = new
            changed[key] = (new, ev.id)
        return outcome
    # Other registered types have no projection yet: they are kept in the history.
    return Outcome("applied")


def _record_key(subject: str) -> tuple[str, str] | None:
    collection, sep, record_id = subject.partition("/")
    if sep and is_valid("collection", collection) and is_valid("id", record_id):
        return collection, record_id
    return None

"""Redrive: apply parked events again, in their order, once the cause is fixed.

Each parked record (tenant + key) is redriven in its own transaction that locks
its parked rows, so a projector parking a newer event of the same record waits
for it. The events are applied oldest first; the first one that still fails
stays parked together with everything behind it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncpg
import orjson

from consumers.projector import parking
from consumers.projector.batch import BatchResult, LogEvent, apply_events, budget_sql
from consumers.projector.handlers import PROJECTED_TOPIC
from eventfold.db import CHECKPOINT_CHANNEL
from eventfold.envelope import decode_event


@dataclass(slots=True)
class RedriveReport:
    """What a redrive did, per record key."""

    applied: int = 0
    rejected: int = 0
    still_parked: int = 0
    keys: list[dict[str, object]] = field(default_factory=list)


async def redrive(
    pool: asyncpg.Pool,
    consumer: str,
    *,
    tenant: str | None = None,
    key: str | None = None,
    dry_run: bool = False,
    deferred_only: bool = False,
    budget_ms: int | None = None,
    topic: str = "",
) -> RedriveReport:
    """Apply the parked events of ``consumer`` (narrowed by tenant/key) in order.

    ``deferred_only`` takes only records holding deferred events (the automatic
    retry); ``budget_ms`` bounds each statement and lock wait, and a timeout
    leaves that record parked (the error is raised for the caller to retry).
    ``topic`` is the log the events came from, for handlers that record it (the
    workflow inbox is served per topic: an event applied here still starts its runs).
    """
    if topic:
        PROJECTED_TOPIC.set(topic)
    report = RedriveReport()
    async with pool.acquire(timeout=10) as conn:
        groups = await conn.fetch(
            """SELECT tenant, park_key FROM eventfold.parked
               WHERE consumer = $1 AND ($2::text IS NULL OR tenant = $2)
                 AND ($3::text IS NULL OR park_key = $3)
               GROUP BY tenant, park_key
               HAVING NOT $4::boolean OR bool_or(retry)
               ORDER BY tenant, park_key""",
            consumer,
            tenant,
            key,
            deferred_only,
        )
    for group in groups:
        async with pool.acquire(timeout=10) as conn:
            outcome = await _redrive_key(
                conn,
                consumer,
                group["tenant"],
                group["park_key"],
                dry_run=dry_run,
                budget_ms=budget_ms,
            )
        report.applied += outcome.applied
        report.rejected += outcome.rejected
        report.still_parked += len(outcome.parked)
        report.keys.append(
            {
                "tenant": group["tenant"],
                "key": group["park_key"],
                "applied": outcome.applied,
                "rejected": outcome.rejected,
                "still_parked": len(outcome.parked),
                "error": outcome.parked[0].error if outcome.parked else None,
            }
        )
    return report


async def _redrive_key(
    conn: asyncpg.Connection,
    consumer: str,
    tenant: str,
    key: str,
    *,
    dry_run: bool,
    budget_ms: int | None,
) -> BatchResult:
    result = BatchResult()
    try:
        async with conn.transaction():
            if budget_ms is not None:
                await conn.execute(budget_sql(budget_ms, local=True))
            rows = await conn.fetch(
                """SELECT partition, "offset", envelope FROM eventfold.parked
                   WHERE consumer = $1 AND tenant = $2 AND park_key = $3
                   ORDER BY partition, "offset" FOR UPDATE""",
                consumer,
                tenant,
                key,
            )
            items = []
            for r in rows:
                raw = bytes(r["envelope"])
                try:
                    event = decode_event(raw)
                except ValueError:
                    event = None
                items.append(LogEvent(r["partition"], r["offset"], 0, event, raw))
            # Parking is ignored for the key being redriven; careful mode parks
            # anew whatever still fails, and everything after it behind it.
            await apply_events(
                conn,
                consumer=consumer,
                items=items,
                result=result,
                careful=True,
                honour_parking=False,
            )
            await conn.execute(
                "DELETE FROM eventfold.parked"
                " WHERE consumer = $1 AND tenant = $2 AND park_key = $3",
                consumer,
                tenant,
                key,
            )
            await parking.park(conn, consumer, result.parked)
            if dry_run:
                raise _DryRun
            # Readers waiting on a consistency token for this tenant look again.
            await conn.execute(
                "SELECT pg_notify($1, $2)",
                CHECKPOINT_CHANNEL,
                orjson.dumps({"c": consumer, "tenant": tenant, "redriven": True}).decode(),
            )
    except _DryRun:
        pass
    return result


class _DryRun(Exception):
    """Rolls a dry-run redrive back after it has seen what would happen."""

"""Redrive: apply parked events again, in their order, once the cause is fixed.

Each parked record (tenant + key) is redriven in its own transaction that locks
its parked rows, so a projector parking a newer event of the same record waits
for it. The events are applied oldest first; the first one that still fails
stays parked together with everything behind it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncpg

from consumers.projector import parking
from consumers.projector.batch import BatchResult, LogEvent, apply_events
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
) -> RedriveReport:
    """Apply the parked events of ``consumer`` (narrowed by tenant/key) in order."""
    report = RedriveReport()
    async with pool.acquire(timeout=10) as conn:
        groups = await conn.fetch(
            """SELECT DISTINCT tenant, park_key FROM eventfold.parked
               WHERE consumer = $1 AND ($2::text IS NULL OR tenant = $2)
                 AND ($3::text IS NULL OR park_key = $3)
               ORDER BY tenant, park_key""",
            consumer,
            tenant,
            key,
        )
    for group in groups:
        async with pool.acquire(timeout=10) as conn:
            outcome = await _redrive_key(
                conn, consumer, group["tenant"], group["park_key"], dry_run=dry_run
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
    conn: asyncpg.Connection, consumer: str, tenant: str, key: str, *, dry_run: bool
) -> BatchResult:
    result = BatchResult()
    try:
        async with conn.transaction():
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
    except _DryRun:
        pass
    return result


class _DryRun(Exception):
    """Rolls a dry-run redrive back after it has seen what would happen."""

"""Redrive: apply dead letters again, in their order, once the cause is fixed.

Each record key (tenant + key) holding dead letters is redriven in its own
transaction that locks its rows, so a projector setting aside a newer event of
the same record waits for it. The events are applied oldest first; the first
one that still fails stays a dead letter together with everything behind it.
``eventfold dlq redrive``, ``POST …/dead-letters/redrive`` and the projector's
retry of deferred tenants all come here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncpg
import orjson

from eventfold import deadletters
from eventfold.db import CHECKPOINT_CHANNEL
from eventfold.projection.batch import BatchResult, apply_events, budget_sql, log_event


@dataclass(slots=True)
class RedriveReport:
    """What a redrive did, per record key (``still_parked``: dead letters left)."""

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
    """Apply the dead letters of ``consumer`` (narrowed by tenant/key) in order.

    ``deferred_only`` takes only records holding deferred events (the automatic
    retry); ``budget_ms`` bounds each statement and lock wait, and a timeout
    leaves that record's dead letters in place (the error is raised for the
    caller to retry). ``topic`` is the log the events came from, for the handlers
    that record it (the workflow inbox is served per topic: a trigger applied here
    still starts its run; an integration is synced by the runner of its log).
    """
    report = RedriveReport()
    async with pool.acquire(timeout=10) as conn:
        keys = await deadletters.keys_to_redrive(
            conn, consumer, tenant=tenant, key=key, deferred_only=deferred_only
        )
    for group_tenant, group_key in keys:
        async with pool.acquire(timeout=10) as conn:
            outcome = await _redrive_key(
                conn, consumer, group_tenant, group_key,
                dry_run=dry_run, budget_ms=budget_ms, topic=topic,
            )  # fmt: skip
        report.applied += outcome.applied
        report.rejected += outcome.rejected
        report.still_parked += len(outcome.dead_letters)
        report.keys.append(
            {
                "tenant": group_tenant,
                "key": group_key,
                "applied": outcome.applied,
                "rejected": outcome.rejected,
                "still_parked": len(outcome.dead_letters),
                "error": outcome.dead_letters[0].error if outcome.dead_letters else None,
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
    topic: str,
) -> BatchResult:
    result = BatchResult()
    try:
        async with conn.transaction():
            if budget_ms is not None:
                await conn.execute(budget_sql(budget_ms, local=True))
            taken = await deadletters.take(conn, consumer, tenant, key)
            items = [log_event(partition, offset, 0, raw) for partition, offset, raw in taken]
            # The key's dead letters are ignored while it is redriven; careful mode
            # sets aside anew whatever still fails, and everything after it behind it.
            await apply_events(
                conn,
                consumer=consumer,
                items=items,
                result=result,
                careful=True,
                honour_dead_letters=False,
                topic=topic,
            )
            await deadletters.put(conn, consumer, result.dead_letters)
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

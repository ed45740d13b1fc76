"""Parked events: the ones the projector could not apply, and those waiting behind them.

A record's events are applied in order, so once one of them cannot be applied
every later event of the same record waits (is parked) behind it, while other
records and tenants go on. ``eventfold dlq`` lists, shows and redrives them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from eventfold.envelope import CloudEvent


@dataclass(frozen=True, slots=True)
class ParkedEvent:
    """An event set aside: its position, who it belongs to, and why."""

    partition: int
    offset: int
    tenant: str
    key: str
    raw: bytes
    error: str
    event_id: str | None = None
    event_type: str | None = None
    #: The id of the event this one waits behind (None for the poison event itself).
    behind: str | None = None
    #: Deferred (its tenant was too slow), retried automatically; not a dead letter.
    retry: bool = False


def park_key(event: CloudEvent) -> str:
    """What an event is ordered by: its subject (one record), else its own id."""
    return event.subject or event.id


@dataclass(frozen=True, slots=True)
class Blocker:
    """Why a key is parked: the event it waits behind, and whether that one is retried."""

    event_id: str
    retry: bool


async def parked_keys(
    conn: asyncpg.Connection, consumer: str, keys: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], Blocker]:
    """Which ``(tenant, key)`` pairs are parked now, and behind what.

    The rows are share-locked for the transaction: a concurrent redrive of one
    of these keys finishes first or waits for this batch.
    """
    keys = list(dict.fromkeys(keys))
    if not keys:
        return {}
    rows = await conn.fetch(
        """SELECT p.tenant, p.park_key, p.event_id, p.behind, p.retry
           FROM eventfold.parked p
           JOIN unnest($2::text[], $3::text[]) AS k(tenant, park_key)
             ON p.tenant = k.tenant AND p.park_key = k.park_key
           WHERE p.consumer = $1
           ORDER BY p.partition, p."offset"
           FOR SHARE OF p""",
        consumer,
        [k[0] for k in keys],
        [k[1] for k in keys],
    )
    out: dict[tuple[str, str], Blocker] = {}
    for r in rows:
        out.setdefault(
            (r["tenant"], r["park_key"]),
            Blocker(r["behind"] or r["event_id"] or "?", r["retry"]),
        )
    return out


async def park(conn: asyncpg.Connection, consumer: str, events: Sequence[ParkedEvent]) -> None:
    """Record ``events`` as parked (inside the batch's transaction; idempotent)."""
    if not events:
        return
    await conn.executemany(
        """INSERT INTO eventfold.parked
             (consumer, partition, "offset", tenant, park_key, event_id, event_type,
              envelope, error, behind, retry)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
           ON CONFLICT (consumer, partition, "offset") DO NOTHING""",
        [
            (
                consumer,
                e.partition,
                e.offset,
                e.tenant,
                e.key,
                e.event_id,
                e.event_type,
                e.raw,
                e.error,
                e.behind,
                e.retry,
            )
            for e in events
        ],
    )


async def count(conn: asyncpg.Connection, consumer: str) -> int:
    """How many events are parked for ``consumer``."""
    value: int = await conn.fetchval(
        "SELECT count(*) FROM eventfold.parked WHERE consumer = $1", consumer
    )
    return value


@dataclass(frozen=True, slots=True)
class ParkedRow:
    """A parked event as ``eventfold dlq`` shows it."""

    partition: int
    offset: int
    tenant: str
    key: str
    event_id: str | None
    event_type: str | None
    error: str
    behind: str | None
    parked_at: datetime
    envelope: bytes
    #: Deferred (retried automatically), not a dead letter.
    retry: bool = False

    def summary(self) -> dict[str, Any]:
        """Everything but the envelope."""
        return {
            "event_id": self.event_id,
            "type": self.event_type,
            "tenant": self.tenant,
            "key": self.key,
            "partition": self.partition,
            "offset": self.offset,
            "error": self.error,
            "behind": self.behind,
            "parked_at": self.parked_at.isoformat(),
        }


async def list_parked(
    conn: asyncpg.Connection,
    consumer: str,
    *,
    tenant: str | None = None,
    key: str | None = None,
    event_id: str | None = None,
    limit: int = 1000,
    after: tuple[str, int, int] | None = None,
) -> list[ParkedRow]:
    """Parked events, oldest first per key, optionally narrowed.

    ``after`` (with ``tenant``): the (key, partition, offset) of the last row of
    the previous page; the page starts past it.
    """
    after_key, after_partition, after_offset = after or (None, None, None)
    rows = await conn.fetch(
        """SELECT partition, "offset", tenant, park_key, event_id, event_type, error, behind,
                  parked_at, envelope, retry
           FROM eventfold.parked
           WHERE consumer = $1
             AND ($2::text IS NULL OR tenant = $2)
             AND ($3::text IS NULL OR park_key = $3)
             AND ($4::text IS NULL OR event_id = $4)
             AND ($6::text IS NULL OR (park_key, partition, "offset") > ($6, $7, $8))
           ORDER BY tenant, park_key, partition, "offset"
           LIMIT $5""",
        consumer,
        tenant,
        key,
        event_id,
        limit,
        after_key,
        after_partition,
        after_offset,
    )
    return [
        ParkedRow(
            partition=r["partition"],
            offset=r["offset"],
            tenant=r["tenant"],
            key=r["park_key"],
            event_id=r["event_id"],
            event_type=r["event_type"],
            error=r["error"],
            behind=r["behind"],
            parked_at=r["parked_at"],
            envelope=bytes(r["envelope"]),
            retry=r["retry"],
        )
        for r in rows
    ]

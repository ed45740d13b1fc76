"""Dead letters: events the projector could not apply, and those waiting behind them.

A record's events are applied in order, so once one of them cannot be applied
(a dead letter) every later event of the same record waits behind it, set
aside with it, while other records and tenants go on. The events of a tenant
too slow to write are set aside the same way, *deferred*, and retried
automatically. Dead letters are also sent to the dead-letter topic
(``EVENTFOLD_DLQ_TOPIC``); ``eventfold dlq`` (the dead-letter queue) and the API's
``…/dead-letters`` routes list, show and redrive them
(:mod:`eventfold.projection.redrive`).

This module is the one that reads and writes their table, ``eventfold.parked``
(its name from before the concept had one name; its ``park_key`` column is the
:func:`order_key`, ``retry`` says deferred).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from eventfold.envelope import CloudEvent


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An event set aside: its position, who it belongs to, and why."""

    partition: int
    offset: int
    tenant: str
    key: str
    raw: bytes
    error: str
    event_id: str | None = None
    event_type: str | None = None
    #: The id of the event this one waits behind (None for the event that failed itself).
    behind: str | None = None
    #: Deferred (its tenant was too slow), retried automatically; not sent to the topic.
    deferred: bool = False


def order_key(event: CloudEvent) -> str:
    """What an event is ordered by: its subject (one record), else its own id."""
    return event.subject or event.id


@dataclass(frozen=True, slots=True)
class Blocker:
    """Why a key is held: the event it waits behind, and whether that one is deferred."""

    event_id: str
    deferred: bool


async def blocked_keys(
    conn: asyncpg.Connection, consumer: str, keys: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], Blocker]:
    """Which ``(tenant, key)`` pairs hold dead letters now, and behind what.

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


async def put(conn: asyncpg.Connection, consumer: str, letters: Sequence[DeadLetter]) -> None:
    """Store ``letters`` (inside the batch's transaction; idempotent)."""
    if not letters:
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
                e.deferred,
            )
            for e in letters
        ],
    )


async def count(conn: asyncpg.Connection, consumer: str) -> int:
    """How many dead letters (deferred events included) ``consumer`` holds."""
    value: int = await conn.fetchval(
        "SELECT count(*) FROM eventfold.parked WHERE consumer = $1", consumer
    )
    return value


@dataclass(frozen=True, slots=True)
class DeadLetterRow:
    """A dead letter as ``eventfold dlq`` and ``GET …/dead-letters`` show it."""

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
    #: Deferred (retried automatically).
    deferred: bool = False

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


async def list_letters(
    conn: asyncpg.Connection,
    consumer: str,
    *,
    tenant: str | None = None,
    key: str | None = None,
    event_id: str | None = None,
    limit: int = 1000,
    after: tuple[str, int, int] | None = None,
) -> list[DeadLetterRow]:
    """Dead letters, oldest first per key, optionally narrowed.

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
        DeadLetterRow(
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
            deferred=r["retry"],
        )
        for r in rows
    ]


async def deferred_tenants(conn: Any, consumer: str) -> set[str]:
    """Tenants with events of ``consumer`` deferred, waiting for an automatic retry."""
    rows = await conn.fetch(
        "SELECT DISTINCT tenant FROM eventfold.parked WHERE consumer = $1 AND retry", consumer
    )
    return {r["tenant"] for r in rows}


async def deferred_within(
    conn: Any, consumer: str, tenant: str, required: Mapping[int, int]
) -> tuple[bool, bool]:
    """Whether ``tenant`` has events deferred at or before ``required`` (per partition), and
    whether it has any deferred at all."""
    row = await conn.fetchrow(
        """SELECT coalesce(bool_or(t.o IS NOT NULL), false) AS within,
                  count(*) > 0 AS anything
           FROM eventfold.parked p
           LEFT JOIN unnest($3::integer[], $4::bigint[]) AS t(pa, o)
             ON p.partition = t.pa AND p."offset" <= t.o
           WHERE p.consumer = $1 AND p.tenant = $2 AND p.retry""",
        consumer,
        tenant,
        list(required),
        list(required.values()),
    )
    return bool(row["within"]), bool(row["anything"])


async def held_keys(
    conn: asyncpg.Connection, consumer: str, tenant: str, keys: Sequence[str]
) -> set[str]:
    """Which of ``keys`` (order keys of ``tenant``) hold dead letters now."""
    rows = await conn.fetch(
        "SELECT DISTINCT park_key FROM eventfold.parked"
        " WHERE consumer = $1 AND tenant = $2 AND park_key = ANY($3::text[])",
        consumer,
        tenant,
        list(keys),
    )
    return {r["park_key"] for r in rows}


async def keys_to_redrive(
    conn: asyncpg.Connection,
    consumer: str,
    *,
    tenant: str | None,
    key: str | None,
    deferred_only: bool,
) -> list[tuple[str, str]]:
    """``(tenant, key)`` of every key holding dead letters (narrowed), in order; with
    ``deferred_only`` only keys holding deferred events (the automatic retry)."""
    rows = await conn.fetch(
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
    return [(r["tenant"], r["park_key"]) for r in rows]


async def take(
    conn: asyncpg.Connection, consumer: str, tenant: str, key: str
) -> list[tuple[int, int, bytes]]:
    """Lock, read and remove one key's dead letters: ``(partition, offset, envelope)`` in
    order (the caller's transaction; a redrive puts back what still fails)."""
    rows = await conn.fetch(
        """SELECT partition, "offset", envelope FROM eventfold.parked
           WHERE consumer = $1 AND tenant = $2 AND park_key = $3
           ORDER BY partition, "offset" FOR UPDATE""",
        consumer,
        tenant,
        key,
    )
    await conn.execute(
        "DELETE FROM eventfold.parked WHERE consumer = $1 AND tenant = $2 AND park_key = $3",
        consumer,
        tenant,
        key,
    )
    return [(r["partition"], r["offset"], bytes(r["envelope"])) for r in rows]

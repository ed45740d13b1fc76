"""Scheduling: each applied event becomes one delivery per matching endpoint, exactly once.

The notifier follows each tenant's event history (read through
:mod:`eventfold.readmodel`, in ``seq`` order; only the projector writes it, and
only applied events count) from its stored position
(``eventfold.webhook_positions``). The deliveries of a page of events and the
new position commit in ONE transaction, under a lock on the position row: a
crash before the commit schedules nothing, after it everything, and two
notifiers never schedule the same event twice.

``seq`` is a sequence: a transaction that rolled back leaves a hole, and a
concurrent one may commit a higher ``seq`` first. So the walk stops at a hole
until every transaction that was running when the hole was first seen has
ended (PostgreSQL's snapshot: the oldest running transaction id has passed the
newest one of then), and then steps over it: the transaction that took the
missing ``seq`` had begun by then (the projector's batch writes its checkpoints
first), so the hole is a rollback. A projector batch rolled back used to hold
the tenant's webhooks for :data:`GAP_SETTLE_SECONDS`; that stays the bound
when other transactions keep the horizon back.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson

from eventfold import readmodel
from eventfold.events.webhook import type_matches
from eventfold.eventtypes.definitions import Registry
from eventfold.eventtypes.names import is_custom
from eventfold.replay import is_replay

log = logging.getLogger("eventfold.notifier")

#: A hole in ``seq`` older than this is a rolled-back transaction, not a pending one.
GAP_SETTLE_SECONDS = 5.0
#: History rows read per tenant per round.
PAGE = 500


#: A page's deliveries in one statement. The first of a line (endpoint, subject) with no
#: pending delivery yet is its head (:mod:`consumers.notifier.delivery`); a line whose
#: head is being delivered as this commits is found by the notifier's sweep.
_INSERT = """
INSERT INTO eventfold.webhook_deliveries (webhook_id, tenant, event_id, subject, seq, body, head)
SELECT u.webhook_id, u.tenant, u.event_id, u.subject, u.seq, u.body,
       u.seq = min(u.seq) OVER (PARTITION BY u.webhook_id, u.subject)
       AND NOT EXISTS (SELECT 1 FROM eventfold.webhook_deliveries p
                       WHERE p.webhook_id = u.webhook_id AND p.subject = u.subject
                         AND p.state = 'pending')
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::bytea[])
     AS u(webhook_id, tenant, event_id, subject, seq, body)
ON CONFLICT (webhook_id, event_id) DO NOTHING
"""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """An active endpoint as the scheduler sees it."""

    id: str
    types: list[str]
    start_seq: int


class Scheduler:
    """Turns applied history rows into deliveries, moving each tenant's position with them."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        #: Tenant types' versions: deliveries carry custom events in their latest shape.
        self._event_types = Registry(pool)
        #: Per tenant, the holes seen: when first, and the snapshot's ``xmax`` then.
        self._gaps: dict[str, dict[int, tuple[float, int]]] = {}

    async def run_once(self) -> int:
        """One round over the tenants with new history (:meth:`due_tenants`); returns
        deliveries created."""
        created = 0
        for tenant in await self.due_tenants():
            created += await self.schedule_tenant(tenant)
        return created

    async def due_tenants(self) -> list[str]:
        """The tenants with an active endpoint whose history moved past their position.

        Read in one statement per hundred tenants (each history's newest ``seq`` beside
        the stored position): a round used to take a transaction per subscribed tenant,
        ten times a second, with or without new events. A position past the newest (a
        rebuild renumbered the history) is due too: :meth:`schedule_tenant` finds its
        anchor again.
        """
        async with self._pool.acquire(timeout=5) as conn:
            rows = await conn.fetch(
                "SELECT DISTINCT w.tenant, p.seq FROM eventfold.webhooks w"
                " LEFT JOIN eventfold.webhook_positions p ON p.tenant = w.tenant"
                " WHERE w.deleted_at IS NULL AND w.disabled_at IS NULL ORDER BY w.tenant"
            )
            positions = {r["tenant"]: r["seq"] for r in rows}
            try:
                newest = await readmodel.last_seqs(conn, list(positions))
            except asyncpg.UndefinedTableError:
                newest = {}  # a tenant without a schema (just deleted): visit each one
        return [
            tenant
            for tenant, position in positions.items()
            if position is None or tenant not in newest or newest[tenant] != position
        ]

    async def _gap_settled(self, conn: asyncpg.Connection, tenant: str, seq: int) -> bool:
        """Whether the hole at ``seq`` is a rollback (see the module docstring)."""
        holes = self._gaps.setdefault(tenant, {})
        seen = holes.get(seq)
        if seen is None:
            xmax = await conn.fetchval(
                "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint"
            )
            holes[seq] = (time.monotonic(), int(xmax))
            return False
        first, xmax = seen
        if time.monotonic() - first >= GAP_SETTLE_SECONDS or await conn.fetchval(
            "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint >= $1", xmax
        ):
            log.info("history gap stepped over", extra={"tenant": tenant, "seq": seq})
            del holes[seq]
            return True
        return False

    def _forget_gaps(self, tenant: str, position: int) -> None:
        """Holes at or before ``position`` are behind the walk (filled, or stepped over)."""
        holes = self._gaps.get(tenant)
        if holes:
            for seq in [s for s in holes if s <= position]:
                del holes[seq]
            if not holes:
                del self._gaps[tenant]

    async def _anchored(
        self, conn: asyncpg.Connection, tenant: str, position: int, anchor: str | None
    ) -> int:
        """``position``, or where its anchor event sits now if a rebuild renumbered the history.

        Deliveries are unique per (endpoint, event id), so landing a little early
        never sends twice; the rebuilt rows carry the replay marker and are skipped.
        """
        if anchor is None:
            return position
        found = await readmodel.seq_of(conn, tenant, anchor)
        if found is None:
            # The anchor is gone from the history (not expected): go on from the end
            # rather than re-walk a history whose numbering is unknown.
            log.warning("webhook position anchor lost", extra={"tenant": tenant})
            return await readmodel.last_seq(conn, tenant)
        return found

    async def schedule_tenant(self, tenant: str) -> int:
        """Schedule the tenant's next page of history; returns deliveries created."""
        async with self._pool.acquire(timeout=5) as conn, conn.transaction():
            stored = await conn.fetchrow(
                "SELECT seq, anchor FROM eventfold.webhook_positions WHERE tenant = $1 FOR UPDATE",
                tenant,
            )
            if stored is None:
                return 0
            try:
                position = await self._anchored(conn, tenant, int(stored["seq"]), stored["anchor"])
            except asyncpg.UndefinedTableError:
                return 0
            endpoints = [
                Endpoint(r["id"], list(r["types"]), r["start_seq"])
                for r in await conn.fetch(
                    "SELECT id, types, start_seq FROM eventfold.webhooks WHERE tenant = $1"
                    " AND deleted_at IS NULL AND disabled_at IS NULL",
                    tenant,
                )
            ]
            try:
                rows = await readmodel.events_after(conn, tenant, position, PAGE)
            except asyncpg.UndefinedTableError:
                return 0
            new_position, new_anchor = position, stored["anchor"]
            deliveries: list[tuple[Any, ...]] = []
            for row in rows:
                seq = int(row["seq"])
                if seq != new_position + 1 and not await self._gap_settled(
                    conn, tenant, new_position + 1
                ):
                    break  # a transaction may still commit the missing seq
                new_position, new_anchor = seq, row["id"]
                envelope = row["envelope"]
                if isinstance(envelope, str):
                    envelope = orjson.loads(envelope)
                # Replays rebuild projections; they never notify anyone again.
                if row["status"] != "applied" or is_replay(envelope):
                    continue
                if is_custom(row["type"]) and any(
                    type_matches(ep.types, row["type"]) for ep in endpoints
                ):
                    [envelope] = await self._event_types.upcast(tenant, [envelope], conn=conn)
                body = orjson.dumps(envelope)
                for ep in endpoints:
                    if seq > ep.start_seq and type_matches(ep.types, row["type"]):
                        deliveries.append(
                            (ep.id, tenant, row["id"], row["subject"] or "", seq, body)
                        )
            if deliveries:
                await conn.execute(
                    _INSERT, *(list(column) for column in zip(*deliveries, strict=True))
                )
            self._forget_gaps(tenant, new_position)
            if new_position != stored["seq"]:
                await conn.execute(
                    "UPDATE eventfold.webhook_positions SET seq = $2, anchor = $3"
                    " WHERE tenant = $1",
                    tenant,
                    new_position,
                    new_anchor,
                )
            return len(deliveries)

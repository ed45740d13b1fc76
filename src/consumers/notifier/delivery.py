"""Delivery: claim due deliveries fairly, POST them signed, record each attempt.

A delivery is claimed by a lease (``lease_until``), never by a transaction
held over the HTTP call: a notifier that dies mid-attempt leaves a lease that
expires, and the delivery is attempted again (same ``webhook-id``: the event
id, so receivers deduplicate). Only the head of each (endpoint, subject) line
is due: a later event of the same record waits until the earlier one is
delivered or exhausted, so one record's events arrive in order. Claims are capped
per endpoint and per tenant, so a slow endpoint holds only its own slots.

Each line's head is marked (``head``): the scheduler marks a new line's first
delivery, recording a delivery done marks the next of its line in the same
transaction, and :func:`sweep` marks the heads a race left unmarked. The claim
reads only marked heads (an index holds them), so its cost follows the number
of lines, not the backlog behind them; it still checks that no earlier delivery
of the line is pending, so a mark never breaks the order.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

import aiohttp
import asyncpg
from yarl import URL

from eventfold import tracing
from eventfold.egress import AllowList, ResponseTooLarge, check_url, failure_text, read_capped
from eventfold.events.webhook import SECRET_PURPOSE
from eventfold.groupcommit import Batcher
from eventfold.metrics import Metrics
from eventfold.sealing import Keyring
from eventfold.signing import signed_headers

#: Bytes of an endpoint's answer read (and thrown away) at most.
RESPONSE_CAP = 64 * 1024
#: Failed attempts in a row (any events) after which an endpoint is disabled.
DISABLE_AFTER_FAILURES = 100
#: Up to this fraction of a retry delay is added at random, so retries do not stampede.
JITTER = 0.2

_CLAIM = """
WITH candidates AS (
    SELECT d.id,
           row_number() OVER (PARTITION BY d.webhook_id ORDER BY d.next_attempt_at, d.seq)
               AS rn_hook,
           row_number() OVER (PARTITION BY d.tenant ORDER BY d.next_attempt_at, d.seq)
               AS rn_tenant
    FROM eventfold.webhook_deliveries d
    JOIN eventfold.webhooks w ON w.id = d.webhook_id
    WHERE d.state = 'pending' AND d.head AND d.next_attempt_at <= now()
      AND d.lease_until < now()
      AND w.deleted_at IS NULL AND w.disabled_at IS NULL
      -- A suspended tenant's deliveries wait (they go out once it is resumed); a
      -- moving one's go out from its new server (eventfold.tenantmove).
      AND NOT EXISTS (SELECT 1 FROM eventfold.tenants s
                      WHERE s.id = d.tenant AND s.status <> 'active')
      AND NOT EXISTS (SELECT 1 FROM eventfold.tenant_homes h
                      WHERE h.tenant = d.tenant AND h.state <> 'live')
      AND NOT (d.webhook_id = ANY($1::text[])) AND NOT (d.tenant = ANY($2::text[]))
      AND NOT EXISTS (
          SELECT 1 FROM eventfold.webhook_deliveries p
          WHERE p.webhook_id = d.webhook_id AND p.subject = d.subject
            AND p.state = 'pending' AND p.seq < d.seq)
    ORDER BY d.next_attempt_at, d.seq
    LIMIT 1000
), picked AS (
    SELECT d.id FROM eventfold.webhook_deliveries d JOIN candidates c ON c.id = d.id
    WHERE c.rn_hook <= $3 AND c.rn_tenant <= $4
      AND d.state = 'pending' AND d.lease_until < now()
    ORDER BY d.next_attempt_at, d.seq
    LIMIT $5
    FOR UPDATE OF d SKIP LOCKED
)
UPDATE eventfold.webhook_deliveries d
SET lease_until = now() + make_interval(secs => $6)
FROM picked, eventfold.webhooks w
WHERE d.id = picked.id AND w.id = d.webhook_id
RETURNING d.id, d.webhook_id, d.tenant, d.event_id, d.subject, d.body, d.attempts,
          d.created_at, w.url, w.secret_sealed
"""

#: One statement for the attempts of a batch that ended their deliveries: the delivered
#: ones marked so; the next delivery of each ended line its head (the ended ones are
#: still pending in this statement's snapshot, hence left out by id); and the endpoints
#: that answered at zero failures in a row (after the batch's failures, written before:
#: an endpoint that answered in the batch ends it at zero, whatever the order in it).
_DONE = """
WITH delivered AS (
    UPDATE eventfold.webhook_deliveries d SET state = 'delivered', attempts = u.attempts,
                                              done_at = now()
    FROM unnest($1::bigint[], $2::int[]) AS u(id, attempts) WHERE d.id = u.id
), next AS (
    SELECT DISTINCT ON (p.webhook_id, p.subject) p.id, p.head
    FROM eventfold.webhook_deliveries p
    JOIN unnest($3::text[], $4::text[]) AS l(webhook_id, subject)
      ON p.webhook_id = l.webhook_id AND p.subject = l.subject
    WHERE p.state = 'pending' AND NOT (p.id = ANY($5::bigint[]))
    ORDER BY p.webhook_id, p.subject, p.seq
), promoted AS (
    UPDATE eventfold.webhook_deliveries d SET head = true
    FROM next WHERE d.id = next.id AND NOT next.head
)
UPDATE eventfold.webhooks SET failures_in_row = 0
WHERE id = ANY($6::text[]) AND failures_in_row <> 0
"""

#: Every line's first pending delivery marked as its head (what a race left unmarked).
_SWEEP = """
UPDATE eventfold.webhook_deliveries d SET head = true
FROM (SELECT DISTINCT ON (webhook_id, subject) id, head
      FROM eventfold.webhook_deliveries WHERE state = 'pending'
      ORDER BY webhook_id, subject, seq) h
WHERE d.id = h.id AND NOT h.head
"""


@dataclass(frozen=True, slots=True)
class Claimed:
    """A delivery this notifier holds the lease of."""

    id: int
    webhook_id: str
    tenant: str
    event_id: str
    subject: str
    body: bytes
    attempts: int
    created_at: datetime
    url: str
    secret_sealed: str


@dataclass(frozen=True, slots=True)
class Result:
    """One attempt's outcome."""

    status: int | None
    error: str | None
    duration_ms: float

    @property
    def ok(self) -> bool:
        """A 2xx answer."""
        return self.status is not None and 200 <= self.status < 300


async def claim(
    pool: asyncpg.Pool,
    *,
    busy_hooks: list[str],
    busy_tenants: list[str],
    per_hook: int,
    per_tenant: int,
    limit: int,
    lease_seconds: float,
) -> list[Claimed]:
    """Lease up to ``limit`` due deliveries (heads of their lines, within the caps)."""
    async with pool.acquire(timeout=5) as conn:
        rows = await conn.fetch(
            _CLAIM, busy_hooks, busy_tenants, per_hook, per_tenant, limit, lease_seconds
        )
    return [Claimed(**dict(r)) for r in rows]


@lru_cache(maxsize=4096)
def _checked(url: str, allow: AllowList) -> URL:
    """:func:`check_url`, once per endpoint URL (a refusal raises each time, uncached)."""
    return check_url(url, allow)


async def sweep(conn: asyncpg.Connection) -> int:
    """Mark each line's first pending delivery as its head where it is not; returns how many.

    Needed where the scheduler added a line's next delivery while its head was being
    recorded (neither saw the other's write), and after a redrive; run at start and
    every few seconds.
    """
    status = await conn.execute(_SWEEP)
    return int(status.split()[-1])


async def attempt(
    session: aiohttp.ClientSession,
    keys: Keyring,
    allow: AllowList,
    item: Claimed,
    deadline: float,
) -> Result:
    """POST the event once, signed; never raises (errors become the result).

    While tracing is on, the attempt is a client span, a child of the event's trace
    context, and the receiver gets the span's own as a ``traceparent`` header.
    """
    if not tracing.enabled():
        return await _post(session, keys, allow, item, deadline)
    attributes = {
        "http.request.method": "POST",
        "eventfold.tenant": item.tenant,
        "eventfold.webhook.id": item.webhook_id,
        "eventfold.event.id": item.event_id,
        "eventfold.delivery.attempt": item.attempts + 1,
    }
    parent = tracing.json_carrier(item.body)
    with tracing.span(
        "webhook delivery", kind="client", parent=parent, attributes=attributes
    ) as span:
        result = await _post(session, keys, allow, item, deadline)
        tracing.set_attributes(
            span, {"http.response.status_code": result.status, "error.type": result.error}
        )
        if not result.ok:
            tracing.failed(span, result.error or f"HTTP {result.status}")
    return result


async def _post(
    session: aiohttp.ClientSession,
    keys: Keyring,
    allow: AllowList,
    item: Claimed,
    deadline: float,
) -> Result:
    started = time.monotonic()
    status: int | None = None
    error: str | None = None
    try:
        target = _checked(item.url, allow)
        secret = keys.open(item.secret_sealed, purpose=SECRET_PURPOSE).decode()
        # Signed per attempt (a fresh timestamp), always with the event id as webhook-id.
        headers = signed_headers(secret, item.event_id, item.body)
        headers["Content-Type"] = "application/json"
        headers.update(tracing.current_carrier())
        async with asyncio.timeout(deadline):
            async with session.post(
                target, data=item.body, headers=headers, allow_redirects=False
            ) as response:
                status = response.status
                # The status is the answer; an endless body is not read.
                with contextlib.suppress(ResponseTooLarge):
                    await read_capped(response, RESPONSE_CAP)
    except asyncio.CancelledError:
        raise
    except TimeoutError:
        error = f"timeout after {deadline:g}s"
    except Exception as exc:
        # Tenants read it in GET …/deliveries: the kind of failure, no address.
        error = failure_text(exc)
    return Result(status, error, (time.monotonic() - started) * 1000)


class Recorder:
    """Stores attempts and their deliveries' next states, many attempts per transaction.

    At hundreds of deliveries a second, one transaction per attempt (four statements)
    made PostgreSQL round trips the notifier's largest cost. The attempts that end in
    one pass of the event loop are written together (:class:`~eventfold.groupcommit.Batcher`):
    the attempt rows and the delivered states as one statement each; failures, which are
    rare and each move a retry schedule, one by one in the same transaction. Each caller
    is answered once its attempt is committed, as before, so a delivery's next event is
    claimed only after it.
    """

    def __init__(self, pool: asyncpg.Pool, metrics: Metrics, schedule: tuple[float, ...]) -> None:
        self._pool = pool
        self._metrics = metrics
        self._schedule = schedule
        self._batcher: Batcher[tuple[Claimed, Result], str] = Batcher(
            self._write, self._write_one, key=lambda entry: entry[0].id, name="webhook-attempts"
        )

    async def record(self, item: Claimed, result: Result) -> str:
        """Store ``item``'s attempt; returns the outcome (delivered, failed, dead, gone)."""
        outcome = await self._batcher.submit((item, result))
        self._metrics.webhook_deliveries.labels(outcome).inc()
        if outcome == "delivered":
            latency = time.time() - item.created_at.timestamp()
            self._metrics.webhook_latency.observe(max(0.0, latency))
        return outcome

    async def close(self) -> None:
        """Wait for the attempts being written."""
        await self._batcher.close()

    async def _write_one(self, entry: tuple[Claimed, Result]) -> str:
        """One attempt alone (a batch that failed is written again attempt by attempt)."""
        [outcome] = await self._write([entry])
        return outcome

    async def _write(self, entries: Sequence[tuple[Claimed, Result]]) -> list[str]:
        async with self._pool.acquire(timeout=5) as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO eventfold.webhook_attempts"
                " (webhook_id, delivery_id, event_id, attempt, status_code, error, duration_ms)"
                " SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::int[],"
                " $5::int[], $6::text[], $7::float8[])",
                [item.webhook_id for item, _ in entries],
                [item.id for item, _ in entries],
                [item.event_id for item, _ in entries],
                [item.attempts + 1 for item, _ in entries],
                [result.status for _, result in entries],
                [result.error for _, result in entries],
                [result.duration_ms for _, result in entries],
            )
            outcomes: list[str] = []
            for item, result in entries:
                outcomes.append(
                    "delivered" if result.ok else await self._failed(conn, item, result)
                )
            done = [item for (item, result) in entries if result.ok]
            # A delivery done (delivered or exhausted) hands its line to the next one.
            ended = [
                item
                for (item, _), outcome in zip(entries, outcomes, strict=True)
                if outcome != "failed"
            ]
            if ended:
                await conn.execute(
                    _DONE,
                    [item.id for item in done],
                    [item.attempts + 1 for item in done],
                    [item.webhook_id for item in ended],
                    [item.subject for item in ended],
                    [item.id for item in ended],
                    sorted({item.webhook_id for item in done}),
                )
        return outcomes

    async def _failed(self, conn: asyncpg.Connection, item: Claimed, result: Result) -> str:
        """A failed attempt's delivery: retried on schedule, or exhausted; its endpoint's
        failures counted (and the endpoint disabled after too many)."""
        number = item.attempts + 1
        if result.status == 410:
            await _exhausted(conn, item.id, number)
            await conn.execute(
                "UPDATE eventfold.webhooks SET disabled_at = now(),"
                " disabled_reason = '410 Gone: the endpoint asked to stop'"
                " WHERE id = $1 AND disabled_at IS NULL",
                item.webhook_id,
            )
            return "gone"
        if number > len(self._schedule):
            outcome = "dead"  # the metric's label for an exhausted delivery
            await _exhausted(conn, item.id, number)
        else:
            outcome = "failed"
            delay = self._schedule[number - 1] * (1 + random.uniform(0, JITTER))  # noqa: S311
            await conn.execute(
                "UPDATE eventfold.webhook_deliveries SET attempts = $2,"
                " next_attempt_at = now() + make_interval(secs => $3),"
                " lease_until = '-infinity' WHERE id = $1",
                item.id,
                number,
                delay,
            )
        failures = await conn.fetchval(
            "UPDATE eventfold.webhooks SET failures_in_row = failures_in_row + 1"
            " WHERE id = $1 RETURNING failures_in_row",
            item.webhook_id,
        )
        if failures is not None and failures >= DISABLE_AFTER_FAILURES:
            last = result.error or f"HTTP {result.status}"
            await conn.execute(
                "UPDATE eventfold.webhooks SET disabled_at = now(), disabled_reason = $2"
                " WHERE id = $1 AND disabled_at IS NULL",
                item.webhook_id,
                f"{failures} failed attempts in a row; last: {last}"[:500],
            )
        return outcome


async def _exhausted(conn: asyncpg.Connection, delivery_id: int, number: int) -> None:
    """Retire a delivery for good: its retries ran out (or its endpoint is gone). Stored as
    state ``'dead'`` (the name of the value, and of the metrics, predates ``exhausted``);
    ``POST …/webhooks/{id}/redrive`` puts it back to pending."""
    await conn.execute(
        "UPDATE eventfold.webhook_deliveries SET state = 'dead', attempts = $2, done_at = now()"
        " WHERE id = $1",
        delivery_id,
        number,
    )

"""Delivery: claim due deliveries fairly, POST them signed, record each attempt.

A delivery is claimed by a lease (``lease_until``), never by a transaction
held over the HTTP call: a notifier that dies mid-attempt leaves a lease that
expires, and the delivery is attempted again (same ``webhook-id``: the event
id, so receivers deduplicate). Only the head of each (endpoint, subject) line
is due: a later event of the same record waits until the earlier one is
delivered or exhausted, so one record's events arrive in order. Claims are capped
per endpoint and per tenant, so a slow endpoint holds only its own slots.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass
from datetime import datetime

import aiohttp
import asyncpg

from eventfold import tracing
from eventfold.egress import AllowList, ResponseTooLarge, check_url, failure_text, read_capped
from eventfold.events.webhook import SECRET_PURPOSE
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
    WHERE d.state = 'pending' AND d.next_attempt_at <= now() AND d.lease_until < now()
      AND w.deleted_at IS NULL AND w.disabled_at IS NULL
      -- A suspended tenant's deliveries wait (they go out once it is resumed).
      AND NOT EXISTS (SELECT 1 FROM eventfold.tenants s
                      WHERE s.id = d.tenant AND s.status <> 'active')
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
RETURNING d.id, d.webhook_id, d.tenant, d.event_id, d.body, d.attempts, d.created_at,
          w.url, w.secret_sealed
"""


@dataclass(frozen=True, slots=True)
class Claimed:
    """A delivery this notifier holds the lease of."""

    id: int
    webhook_id: str
    tenant: str
    event_id: str
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
        check_url(item.url, allow)
        secret = keys.open(item.secret_sealed, purpose=SECRET_PURPOSE).decode()
        # Signed per attempt (a fresh timestamp), always with the event id as webhook-id.
        headers = signed_headers(secret, item.event_id, item.body)
        headers["Content-Type"] = "application/json"
        headers.update(tracing.current_carrier())
        async with asyncio.timeout(deadline):
            async with session.post(
                item.url, data=item.body, headers=headers, allow_redirects=False
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


async def record(
    pool: asyncpg.Pool,
    metrics: Metrics,
    item: Claimed,
    result: Result,
    schedule: tuple[float, ...],
) -> str:
    """Store the attempt and the delivery's next state; returns the outcome."""
    number = item.attempts + 1
    async with pool.acquire(timeout=5) as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO eventfold.webhook_attempts"
            " (webhook_id, delivery_id, event_id, attempt, status_code, error, duration_ms)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7)",
            item.webhook_id,
            item.id,
            item.event_id,
            number,
            result.status,
            result.error,
            result.duration_ms,
        )
        if result.ok:
            outcome = "delivered"
            await conn.execute(
                "UPDATE eventfold.webhook_deliveries SET state = 'delivered', attempts = $2,"
                " done_at = now() WHERE id = $1",
                item.id,
                number,
            )
            await conn.execute(
                "UPDATE eventfold.webhooks SET failures_in_row = 0"
                " WHERE id = $1 AND failures_in_row <> 0",
                item.webhook_id,
            )
        elif result.status == 410:
            outcome = "gone"
            await _exhausted(conn, item.id, number)
            await conn.execute(
                "UPDATE eventfold.webhooks SET disabled_at = now(),"
                " disabled_reason = '410 Gone: the endpoint asked to stop'"
                " WHERE id = $1 AND disabled_at IS NULL",
                item.webhook_id,
            )
        else:
            if number > len(schedule):
                outcome = "dead"  # the metric's label for an exhausted delivery
                await _exhausted(conn, item.id, number)
            else:
                outcome = "failed"
                delay = schedule[number - 1] * (1 + random.uniform(0, JITTER))  # noqa: S311
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
    metrics.webhook_deliveries.labels(outcome).inc()
    if outcome == "delivered":
        latency = time.time() - item.created_at.timestamp()
        metrics.webhook_latency.observe(max(0.0, latency))
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

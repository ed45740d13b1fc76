"""``GET /v1/tenants/{t}/stream``: Server-Sent Events of the tenant's applied events.

The projector publishes every committed batch's applied events to the tenant's
Redis channel (:mod:`consumers.projector.live`), so any API instance serves any
tenant. A client resuming with ``Last-Event-ID`` (or ``?last_event_id=``) first
gets the events it missed from the tenant's event history, then the live ones;
the SSE id is the history ``seq``, which also removes the duplicates where the
replay and the live feed overlap. A client that falls more than
``stream_queue_max`` events behind is disconnected (it resumes by id), never
buffered without bound; a comment every ``stream_heartbeat_seconds`` keeps idle
connections (and proxies) alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import orjson
from aiohttp import web

from api.openapi import TENANT, TENANT_ERRORS, Operation, Param, Reply, register
from api.stream_hub import HUB, Frame, StreamHub, Subscriber
from consumers.projector.live import history_item
from eventfold.errors import BadRequest, FieldError, ValidationFailed
from eventfold.ids import tenant_schema
from eventfold.logs import correlation_id
from eventfold.replay import is_replay
from eventfold.tenancy import tenant_connection
from eventfold.web import METRICS, POOL, REDIS, SETTINGS, authorize_tenant, unbounded

log = logging.getLogger("eventfold.stream")

_PATH = "/v1/tenants/{tenant}/stream"

_TYPE_PATTERN = re.compile(r"[a-z*][a-z0-9_.*-]{0,127}")
#: History rows read per query while replaying after a Last-Event-ID.
_REPLAY_PAGE = 500
#: How long the goodbye comment to a slow client may take before the connection is cut.
_GOODBYE_SECONDS = 1.0


def parse_types(raw: str | None) -> re.Pattern[str] | None:
    """``types`` (comma-separated, ``*`` matches any run of characters) as one regex; 422 if bad."""
    if raw is None:
        return None
    parts = [p.strip() for p in raw.split(",")]
    if not parts or not all(_TYPE_PATTERN.fullmatch(p) for p in parts):
        raise ValidationFailed(
            "bad types",
            errors=[
                FieldError("/types", "comma-separated event types, `*` as a wildcard (record.*)")
            ],
        )
    alternatives = "|".join(".*".join(re.escape(s) for s in p.split("*")) for p in parts)
    return re.compile(f"(?:{alternatives})")


def _last_event_id(request: web.Request) -> int | None:
    raw = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
    if raw is None or raw == "":
        return None
    if not raw.isdigit() or len(raw) > 18:
        raise ValidationFailed(
            "bad Last-Event-ID",
            errors=[FieldError("/last_event_id", "an id this stream sent (a number)")],
        )
    return int(raw)


def _encode(frame: Frame) -> bytes:
    return f"id: {frame.seq}\nevent: {frame.type}\ndata: {frame.data}\n\n".encode()


class _SlowClient(Exception):
    """The client's queue overflowed."""


class _FeedLost(ConnectionError):
    """The process's live feed (Redis) failed: the client reconnects with Last-Event-ID."""


async def _watch(sub: Subscriber) -> None:
    """Raise when the feed ends: :class:`_SlowClient` or :class:`_FeedLost`."""
    slow = asyncio.create_task(sub.slow.wait())
    lost = asyncio.create_task(sub.lost.wait())
    try:
        await asyncio.wait({slow, lost}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        slow.cancel()
        lost.cancel()
    if sub.slow.is_set():
        raise _SlowClient
    raise _FeedLost("live feed lost")


@unbounded
async def stream_events(request: web.Request) -> web.StreamResponse:
    """``GET /v1/tenants/{t}/stream?types=`` (reader): the tenant's applied events as SSE."""
    _, tenant = await authorize_tenant(request, "reader")
    if "text/event-stream" not in request.headers.get("Accept", ""):
        # EventSource always asks for it; a plain GET (``*/*``) would otherwise hang
        # on a body that never ends, so it gets an answer saying what to send.
        raise BadRequest("send Accept: text/event-stream to open the stream")
    wanted = parse_types(request.query.get("types"))
    last = _last_event_id(request)
    app = request.app
    settings = app[SETTINGS]
    # Subscribed before the replay reads the history: nothing falls between the two.
    async with app[HUB].subscribe(tenant.id, settings.stream_queue_max) as sub:
        return await _serve(request, tenant.id, wanted, last, sub)


async def _serve(
    request: web.Request,
    tenant: str,
    wanted: re.Pattern[str] | None,
    last: int | None,
    sub: Subscriber,
) -> web.StreamResponse:
    metrics = request.app[METRICS]
    watch = asyncio.create_task(_watch(sub), name=f"stream-{tenant}")
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # proxies must not hold events back
            # Sent with the head: the middleware's own header would come too late.
            "X-Request-ID": correlation_id.get() or "",
        }
    )
    metrics.stream_clients.inc()
    tasks = [watch]
    try:
        await response.prepare(request)
        writer = asyncio.create_task(
            _write(request, response, tenant, wanted, last, sub.queue), name="stream-writer"
        )
        tasks.append(writer)
        done, _ = await asyncio.wait({watch, writer}, return_when=asyncio.FIRST_COMPLETED)
        if watch in done and isinstance(watch.exception(), _SlowClient):
            writer.cancel()
            with contextlib.suppress(BaseException):
                await writer
            metrics.stream_slow_disconnects.inc()
            log.info("slow stream client disconnected", extra={"tenant": tenant})
            await _goodbye(request, response)
        elif writer in done:
            error = writer.exception()
            if error is not None and not isinstance(error, ConnectionError):
                raise error  # a client going away is the normal end, anything else is not
        elif request.transport is not None:
            # Redis failed: the connection ends, the client reconnects with Last-Event-ID.
            request.transport.close()
        return response
    finally:
        metrics.stream_clients.dec()
        for task in tasks:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


async def _goodbye(request: web.Request, response: web.StreamResponse) -> None:
    """A last comment telling why, if the client's socket takes it in time; then cut."""
    with contextlib.suppress(TimeoutError, ConnectionError):
        await asyncio.wait_for(
            response.write(b": too slow, disconnecting; resume with Last-Event-ID\n\n"),
            _GOODBYE_SECONDS,
        )
    if request.transport is not None:
        request.transport.abort()


async def _write(
    request: web.Request,
    response: web.StreamResponse,
    tenant: str,
    wanted: re.Pattern[str] | None,
    last: int | None,
    queue: asyncio.Queue[Frame],
) -> None:
    """Replay the history after ``last`` (if given), then send live frames, heartbeats between."""
    app = request.app
    metrics = app[METRICS]
    heartbeat = app[SETTINGS].stream_heartbeat_seconds

    async def send(frame: Frame) -> None:
        if wanted is None or wanted.fullmatch(frame.type):
            await response.write(_encode(frame))
            metrics.stream_events_sent.inc()

    if last is not None:
        while True:
            async with tenant_connection(app[POOL], tenant) as conn:
                rows = await conn.fetch(
                    f"SELECT seq, envelope, status, reason FROM {tenant_schema(tenant)}.events"
                    " WHERE seq > $1 AND status = 'applied' ORDER BY seq LIMIT $2",
                    last,
                    _REPLAY_PAGE,
                )
            for row in rows:
                item = history_item(row)
                last = int(row["seq"])
                if not is_replay(item):
                    await send(Frame(last, str(item["type"]), orjson.dumps(item).decode()))
            if len(rows) < _REPLAY_PAGE:
                break
    await response.write(b": live\n\n")
    while True:
        try:
            frame = await asyncio.wait_for(queue.get(), heartbeat)
        except TimeoutError:
            await response.write(b": heartbeat\n\n")
            continue
        if last is not None and frame.seq <= last:
            continue  # already sent by the replay (or published twice)
        last = frame.seq
        await send(frame)


#: One event of the stream, as SSE parsers see it (before OpenAPI 3.2, ``schema`` is per event).
_SSE_EVENT: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "pattern": "^[0-9]+$"},
        "event": {"type": "string"},
        "data": {"type": "string", "contentMediaType": "application/json"},
    },
}


def setup(app: web.Application) -> None:
    """Register the route and the process's shared live feed."""
    app.router.add_get(_PATH, stream_events)
    app.cleanup_ctx.append(_hub_ctx)


async def _hub_ctx(app: web.Application) -> AsyncIterator[None]:
    hub = StreamHub(app[REDIS])
    app[HUB] = hub
    try:
        yield
    finally:
        await hub.close()


register(
    Operation(
        "GET", _PATH, "Live applied events as Server-Sent Events (reader)", "events",
        description="Needs `Accept: text/event-stream` (400 otherwise, as EventSource sends "
        "it and a plain GET would wait on a body that never ends). One frame per applied "
        "event (`id:` its history sequence, `event:` its type, `data:` the CloudEvent JSON "
        "plus `status`), a comment "
        "as heartbeat. Reconnect with `Last-Event-ID` to get the missed events first. A "
        "client too far behind is disconnected.",
        params=(
            TENANT,
            Param("types", "query", {"type": "string"}, "event types, comma-separated, `*` "
                  "as wildcard (`record.*`)"),
            Param("last_event_id", "query", {"type": "string", "pattern": "^[0-9]{1,18}$"},
                  "as the `Last-Event-ID` header"),
            Param("Last-Event-ID", "header", {"type": "string", "pattern": "^[0-9]{1,18}$"},
                  "the last `id:` received: the stream resumes after it"),
        ),
        replies=(
            Reply(200, "the event stream", content_type="text/event-stream",
                  schema=_SSE_EVENT),
        ),
        errors=TENANT_ERRORS,
    )
)  # fmt: skip

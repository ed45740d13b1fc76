"""``GET /v1/tenants/{t}/stream``: Server-Sent Events of the tenant's applied events.

The projector publishes every committed batch's applied events to the tenant's
Redis channel (:mod:`eventfold.livefeed`), so any API instance serves any
tenant. A client resuming with ``Last-Event-ID`` (or ``?last_event_id=``) first
gets the events it missed from the tenant's event history, then the live ones;
the SSE id is the history ``seq``, which also removes the duplicates where the
replay and the live feed overlap. A client that falls more than
``stream_queue_max`` events (or ``stream_queue_max_bytes``) behind is
disconnected (it resumes by id), never buffered without bound; a comment every
``stream_heartbeat_seconds`` keeps idle connections (and proxies) alive.

A stream lives no longer than its credentials: they are checked again every
``stream_recheck_seconds``, and once a new request with them would be refused
(an API key revoked, a token expired, its tenant deleted) the stream ends. A tenant has at most
``stream_max_per_tenant`` streams open across every instance
(:mod:`api.stream_slots`; 429 past it). Whenever the server ends a stream, its
last frame says why (:func:`end_frame`).
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

from api.stream_hub import HUB, Frame, StreamHub, Subscriber
from api.stream_slots import RENEW_SECONDS, StreamSlot, take_slot
from eventfold import faults, readmodel
from eventfold.appkeys import EVENT_TYPES, METRICS, PLACEMENT, REDIS, SETTINGS, TENANTS
from eventfold.errors import BadRequest, FieldError, Unauthorized, ValidationFailed
from eventfold.eventtypes.names import is_custom
from eventfold.livefeed import history_item
from eventfold.logs import correlation_id
from eventfold.openapi import TENANT, TENANT_ERRORS, Operation, Param, Reply, register
from eventfold.replay import is_replay
from eventfold.tenancy import DELETED, tenant_connection
from eventfold.web import authenticate, authorize_tenant, unbounded

log = logging.getLogger("eventfold.stream")

_PATH = "/v1/tenants/{tenant}/stream"

_TYPE_PATTERN = re.compile(r"[a-z*][a-z0-9_.*-]{0,127}")
#: History rows read per query while replaying after a Last-Event-ID.
_REPLAY_PAGE = 500
#: How long the end frame may take to leave before the connection is cut.
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
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (frame.seq, frame.type.encode(), frame.data)


def end_frame(reason: str, detail: str) -> bytes:
    """The last frame of a stream the server ends: ``event: end`` and why.

    No event has the type ``end`` (every registered type is dotted), and the
    frame has no ``id:``, so ``Last-Event-ID`` still names the last event received.
    """
    data = orjson.dumps({"reason": reason, "detail": detail})
    return b"event: " + END_EVENT.encode() + b"\ndata: " + data + b"\n\n"


#: The SSE event name of the frame that ends a stream (see :func:`end_frame`).
END_EVENT = "end"
#: ``reason`` of :func:`end_frame`: the client fell behind (resume with Last-Event-ID) ...
TOO_SLOW = "too_slow"
#: ... the process lost its live feed (reconnect with Last-Event-ID) ...
FEED_LOST = "feed_lost"
#: ... or the stream's credentials are refused now (revoked, expired).
CREDENTIALS_ENDED = "credentials_ended"


class _StreamEnds(Exception):
    """The server ends the stream: ``reason`` (one of the constants above) and ``detail``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


async def _watch(sub: Subscriber) -> None:
    """Raise :class:`_StreamEnds` when the feed ends (slow client or lost feed)."""
    slow = asyncio.create_task(sub.slow.wait())
    lost = asyncio.create_task(sub.lost.wait())
    try:
        await asyncio.wait({slow, lost}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        slow.cancel()
        lost.cancel()
    if sub.slow.is_set():
        raise _StreamEnds(TOO_SLOW, "the client fell behind; resume with Last-Event-ID")
    raise _StreamEnds(FEED_LOST, "the live feed was interrupted; resume with Last-Event-ID")


async def _guard(request: web.Request, slot: StreamSlot) -> None:
    """Check the credentials again every ``stream_recheck_seconds``; renew the stream's slot.

    Raises :class:`_StreamEnds` once a new request with these credentials would
    be refused (an API key revoked, a token past its expiry): the stream ends
    within one period of it. A dependency failing meanwhile (the key lookup's
    database) does not end the stream: a revocation is not projected without it
    either, and the next check sees it.
    """
    every = request.app[SETTINGS].stream_recheck_seconds
    loop = asyncio.get_running_loop()
    renew_at = loop.time() + RENEW_SECONDS
    while True:
        await asyncio.sleep(every)
        try:
            await authenticate(request)
            tenant = await request.app[TENANTS].get(request.match_info["tenant"])
        except Unauthorized as exc:
            raise _StreamEnds(CREDENTIALS_ENDED, exc.detail) from None
        except Exception as exc:
            if not faults.is_retriable(exc):
                raise
            log.info("stream credentials not checked", extra={"error": repr(exc)})
        else:
            if tenant is None or tenant.status == DELETED:
                tenant_id = request.match_info["tenant"]
                raise _StreamEnds(CREDENTIALS_ENDED, f"tenant {tenant_id} was deleted")
        if loop.time() >= renew_at:
            await slot.renew()
            renew_at = loop.time() + RENEW_SECONDS


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
    slot = await take_slot(app[REDIS], tenant.id, settings.stream_max_per_tenant)
    try:
        # Subscribed before the replay reads the history: nothing falls between the two.
        async with app[HUB].subscribe(
            tenant.id, settings.stream_queue_max, settings.stream_queue_max_bytes
        ) as sub:
            return await _serve(request, tenant.id, wanted, last, sub, slot)
    finally:
        await slot.release()


async def _serve(
    request: web.Request,
    tenant: str,
    wanted: re.Pattern[str] | None,
    last: int | None,
    sub: Subscriber,
    slot: StreamSlot,
) -> web.StreamResponse:
    metrics = request.app[METRICS]
    watch = asyncio.create_task(_watch(sub), name=f"stream-{tenant}")
    guard = asyncio.create_task(_guard(request, slot), name=f"stream-guard-{tenant}")
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
    tasks = [watch, guard]
    try:
        await response.prepare(request)
        writer = asyncio.create_task(
            _write(request, response, tenant, wanted, last, sub), name="stream-writer"
        )
        tasks.append(writer)
        done, _ = await asyncio.wait(set(tasks), return_when=asyncio.FIRST_COMPLETED)
        if writer in done:
            error = writer.exception()
            if error is not None and not isinstance(error, ConnectionError):
                raise error  # a client going away is the normal end, anything else is not
            return response
        ended = next(t for t in (watch, guard) if t in done).exception()
        if not isinstance(ended, _StreamEnds):
            raise ended or RuntimeError("stream task ended without a reason")
        writer.cancel()  # the goodbye is the last write, and the only one
        with contextlib.suppress(BaseException):
            await writer
        if ended.reason == TOO_SLOW:
            metrics.stream_slow_disconnects.inc()
        log.info("stream ended", extra={"tenant": tenant, "reason": ended.reason})
        await _goodbye(request, response, ended)
        return response
    finally:
        metrics.stream_clients.dec()
        for task in tasks:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


async def _goodbye(request: web.Request, response: web.StreamResponse, end: _StreamEnds) -> None:
    """The end frame, if the client's socket takes it in time; then the end of the body.

    A slow client's connection is cut after it (its buffers are full); the
    others end cleanly. Either way the client's next request must be a new one.
    """
    with contextlib.suppress(TimeoutError, ConnectionError):
        async with asyncio.timeout(_GOODBYE_SECONDS):
            await response.write(end_frame(end.reason, end.detail))
            if end.reason != TOO_SLOW:
                await response.write_eof()
                return
    if request.transport is not None:
        request.transport.abort()


async def _write(
    request: web.Request,
    response: web.StreamResponse,
    tenant: str,
    wanted: re.Pattern[str] | None,
    last: int | None,
    sub: Subscriber,
) -> None:
    """Replay the history after ``last`` (if given), then send live frames, heartbeats between."""
    app = request.app
    metrics = app[METRICS]
    heartbeat = app[SETTINGS].stream_heartbeat_seconds

    async def send(frame: Frame) -> None:
        if wanted is None or wanted.fullmatch(frame.type):
            if is_custom(frame.type):  # a tenant type: its data in the latest version's shape
                [item] = await app[EVENT_TYPES].upcast(tenant, [orjson.loads(frame.data)])
                frame = Frame(frame.seq, frame.type, orjson.dumps(item))
            await response.write(_encode(frame))
            metrics.stream_events_sent.inc()

    if last is not None:
        while True:
            async with tenant_connection(app[PLACEMENT], tenant) as conn:
                rows = await readmodel.applied_after(conn, tenant, last, _REPLAY_PAGE)
            for row in rows:
                item = history_item(row)
                last = int(row["seq"])
                if not is_replay(item):
                    await send(Frame(last, str(item["type"]), orjson.dumps(item)))
            if len(rows) < _REPLAY_PAGE:
                break
    await response.write(b": live\n\n")
    while True:
        try:
            frame = await asyncio.wait_for(sub.take(), heartbeat)
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
        "client too far behind is disconnected. A stream the server ends gets a last frame "
        "`event: end` with `data: {\"reason\", \"detail\"}`: `too_slow` and `feed_lost` "
        "(reconnect with `Last-Event-ID`), `credentials_ended` (the API key was revoked or "
        "the token expired: reconnect with new credentials). A tenant may have "
        "`EVENTFOLD_STREAM_MAX_PER_TENANT` streams open (429 past it).",
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

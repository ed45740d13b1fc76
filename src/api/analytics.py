"""Windowed analytics of one tenant, read from Redis.

- ``GET /v1/tenants/{t}/analytics/events``: event counts per window, type and
  collection, paged in (window_start, type, collection) order;
- ``GET /v1/tenants/{t}/analytics/activity``: per window and collection, the
  events, the distinct records they touched and the write rate.

The analytics processor (src/consumers/analytics) materialises each counter in
a per-tenant Redis hash per window (and the touched records in a set per window
and collection); these routes read the windows of the asked range from the
tenant's index and sum the per-partition counters.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from redis.asyncio import Redis
from redis.exceptions import RedisError

from eventfold.analytics_windows import (
    SEP,
    WINDOWS,
    index_key,
    records_key,
    window_key,
    window_start,
)
from eventfold.appkeys import CURSORS, REDIS
from eventfold.errors import FieldError, Unavailable, ValidationFailed
from eventfold.openapi import AFTER, LIMIT, TENANT, TENANT_ERRORS, Operation, Param, Reply, register
from eventfold.web import authorize_tenant, json_response, query_int

_PATH = "/v1/tenants/{tenant}/analytics/events"
_ACTIVITY_PATH = "/v1/tenants/{tenant}/analytics/activity"
_KIND = "analytics"
_ACTIVITY_KIND = "analytics-activity"
#: Longest range one request may span, in windows (a day of minutes, 35 days of hours).
MAX_WINDOWS = {"1m": 1440, "1h": 840}
#: Windows read from Redis per round trip.
_CHUNK = 32


class WindowCount(BaseModel):
    """Events of one type in one collection in one window."""

    window_start: datetime
    window_end: datetime
    type: str
    collection: str | None
    count: int
    partial: bool


class WindowActivity(BaseModel):
    """What happened in one collection in one window."""

    window_start: datetime
    window_end: datetime
    collection: str | None
    events: int
    records_touched: int
    events_per_second: float
    partial: bool


class WindowActivityPage(BaseModel):
    """One page of window activity, oldest window first."""

    items: list[WindowActivity]
    next: str | None


class WindowCountPage(BaseModel):
    """One page of window counts, oldest window first."""

    items: list[WindowCount]
    next: str | None


def _bad(name: str, message: str) -> ValidationFailed:
    return ValidationFailed(f"bad {name}: {message}", errors=[FieldError(f"/{name}", message)])


def _instant(request: web.Request, name: str) -> float | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise _bad(name, "an ISO 8601 date-time, e.g. 2026-01-01T00:00:00Z") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def _filter(request: web.Request, name: str) -> str | None:
    value = request.query.get(name)
    if value is not None and (not 0 < len(value) <= 128 or any(c < " " for c in value)):
        raise _bad(name, "1 to 128 printable characters")
    return value


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class _Query:
    """The parsed common parameters of an analytics read."""

    tenant: str
    window: str
    size: int
    first: int  # start of the first window to read
    to: float  # windows starting before this instant
    limit: int
    collection: str | None
    now: float


def _query(request: web.Request, tenant: str, cursor_start: int | None) -> _Query:
    window = request.query.get("window", "1m")
    if window not in WINDOWS:
        raise _bad("window", "one of 1m, 1h")
    size = WINDOWS[window]
    limit = query_int(request, "limit", 100, 1, 1000)
    now = time.time()
    to = _instant(request, "to") or now
    start_from = _instant(request, "from")
    if start_from is None:
        start_from = to - size * 60
    if start_from > to:
        raise _bad("from", "must not be after to")
    if (to - start_from) / size > MAX_WINDOWS[window]:
        raise _bad("from", f"the range spans more than {MAX_WINDOWS[window]} windows of {window}")
    first = window_start(start_from, size)
    if cursor_start is not None:
        first = max(first, cursor_start)
    return _Query(tenant, window, size, first, to, limit, _filter(request, "collection"), now)


def _cursor(request: web.Request, kind: str, length: int) -> list[Any] | None:
    after = request.query.get("after")
    if not after:
        return None
    raw = request.app[CURSORS].decode(kind, after)
    if not (isinstance(raw, list) and len(raw) == length and isinstance(raw[0], int)):
        raise _bad("after", "invalid cursor")
    return raw


def _redis(request: web.Request) -> Redis:
    redis = request.app.get(REDIS)
    if redis is None:
        raise Unavailable("analytics need Redis")
    return redis


async def _windows(redis: Redis, q: _Query) -> AsyncIterator[list[tuple[int, dict[bytes, bytes]]]]:
    """The counter hashes of the asked windows that have counts, a chunk at a time."""
    members = await redis.zrangebyscore(index_key(q.tenant, q.window), q.first, f"({q.to}")
    starts = [int(s) for s in members if isinstance(s, bytes | str)]
    for i in range(0, len(starts), _CHUNK):
        chunk = starts[i : i + _CHUNK]
        async with redis.pipeline(transaction=False) as pipe:
            for start in chunk:
                pipe.hgetall(window_key(q.tenant, q.window, start))
            hashes = await pipe.execute()
        yield list(zip(chunk, hashes, strict=True))


def _next(request: web.Request, kind: str, items: list[Any], limit: int, length: int) -> str | None:
    if len(items) <= limit:
        return None
    return request.app[CURSORS].encode(kind, list(items[limit - 1][:length]))


async def list_counts(request: web.Request) -> web.Response:
    """Window counts of the tenant in ``[from, to)``, oldest window first."""
    _, tenant = await authorize_tenant(request, "reader")
    raw = _cursor(request, _KIND, 3)
    position = None if raw is None else (raw[0], str(raw[1]), str(raw[2]))
    q = _query(request, tenant.id, None if position is None else position[0])
    type_filter = _filter(request, "type")
    redis = _redis(request)
    items: list[tuple[int, str, str, int]] = []
    try:
        async for chunk in _windows(redis, q):
            for start, fields in chunk:
                items.extend(_window_items(start, fields, type_filter, q.collection, position))
            if len(items) > q.limit:
                break
    except RedisError as exc:
        raise Unavailable("analytics store unavailable") from exc
    return json_response(
        {
            "items": [
                {
                    **_window(start, q),
                    "type": type_,
                    "collection": collection or None,
                    "count": count,
                }
                for start, type_, collection, count in items[: q.limit]
            ],
            "next": _next(request, _KIND, items, q.limit, 3),
        }
    )


async def list_activity(request: web.Request) -> web.Response:
    """Per window and collection: events, distinct records touched, events per second."""
    _, tenant = await authorize_tenant(request, "reader")
    raw = _cursor(request, _ACTIVITY_KIND, 2)
    position = None if raw is None else (raw[0], str(raw[1]))
    q = _query(request, tenant.id, None if position is None else position[0])
    redis = _redis(request)
    items: list[tuple[int, str, int, int]] = []
    try:
        async for chunk in _windows(redis, q):
            sums: dict[tuple[int, str], int] = {}
            for start, fields in chunk:
                for _, _type, collection, count in _window_items(
                    start, fields, None, q.collection, None
                ):
                    sums[(start, collection)] = sums.get((start, collection), 0) + count
            events = [(start, collection, n) for (start, collection), n in sums.items()]
            events.sort()
            if position is not None:
                events = [e for e in events if e[:2] > position]
            async with redis.pipeline(transaction=False) as pipe:
                for start, collection, _ in events:
                    if collection:  # events without a record subject touch no record
                        pipe.scard(records_key(q.tenant, q.window, start, collection))
                records = iter(await pipe.execute())
            items.extend(
                (start, collection, count, int(next(records)) if collection else 0)
                for start, collection, count in events
            )
            if len(items) > q.limit:
                break
    except RedisError as exc:
        raise Unavailable("analytics store unavailable") from exc
    return json_response(
        {
            "items": [
                {
                    **_window(start, q),
                    "collection": collection or None,
                    "events": count,
                    "records_touched": records,
                    "events_per_second": events_per_second(count, start, q.size, q.now),
                }
                for start, collection, count, records in items[: q.limit]
            ],
            "next": _next(request, _ACTIVITY_KIND, items, q.limit, 2),
        }
    )


def _window(start: int, q: _Query) -> dict[str, Any]:
    """The fields every analytics item has: its window and whether it is still open."""
    return {
        "window_start": _iso(start),
        "window_end": _iso(start + q.size),
        "partial": start + q.size > q.now,
    }


def events_per_second(count: int, start: int, size: int, now: float) -> float:
    """The rate of ``count`` events over the window, or over its elapsed part while open."""
    elapsed = min(float(size), max(1.0, now - start))
    return round(count / elapsed, 3)


def _window_items(
    start: int,
    fields: dict[bytes, bytes],
    type_filter: str | None,
    coll_filter: str | None,
    position: tuple[int, str, str] | None,
) -> list[tuple[int, str, str, int]]:
    """One window's counters summed over partitions, filtered, past the cursor, sorted."""
    sums: dict[tuple[str, str], int] = {}
    for field, value in fields.items():
        type_, collection, _partition = field.decode().split(SEP)
        if type_filter is not None and type_ != type_filter:
            continue
        if coll_filter is not None and collection != coll_filter:
            continue
        sums[(type_, collection)] = sums.get((type_, collection), 0) + int(value)
    out = [(start, t, c, n) for (t, c), n in sorted(sums.items()) if n]
    if position is not None:
        out = [item for item in out if item[:3] > position]
    return out


def setup(app: web.Application) -> None:
    """Register the analytics routes."""
    app.router.add_get(_PATH, list_counts)
    app.router.add_get(_ACTIVITY_PATH, list_activity)


_INSTANT: dict[str, Any] = {"type": "string", "format": "date-time"}
#: The window and range parameters both analytics routes take.
_RANGE = (
    Param("window", "query", {"type": "string", "enum": list(WINDOWS), "default": "1m"}),
    Param("from", "query", _INSTANT, "first window: the one holding this instant"),
    Param("to", "query", _INSTANT, "windows starting before this instant (default now)"),
)
_COLLECTION = Param("collection", "query", {"type": "string", "minLength": 1, "maxLength": 128})
register(
    Operation(
        "GET", _PATH, "Event counts per tumbling window (reader)", "analytics",
        description="Counts of the tenant's events per window, type and collection (the "
        "first part of a record subject), computed as the events stream by. Closed windows "
        "are exact; the current one is `partial`. Replayed and duplicate events are not "
        "counted; an event arriving later than the grace period after its window closed is "
        "not counted in it. Default range: the last 60 windows.",
        params=(
            TENANT, *_RANGE,
            Param("type", "query", {"type": "string", "minLength": 1, "maxLength": 128}),
            _COLLECTION,
            AFTER, LIMIT,
        ),
        replies=(Reply(200, "a page of window counts, oldest window first", WindowCountPage),),
        errors=TENANT_ERRORS,
    )
)  # fmt: skip
register(
    Operation(
        "GET", _ACTIVITY_PATH, "Activity per window and collection (reader)", "analytics",
        description="Per tumbling window and collection (the first part of a record "
        "subject): the events counted, the distinct records they touched and the events per "
        "second (over the elapsed part of the current, `partial`, window). Same counting "
        "rules and range parameters as /analytics/events. Events without a record subject "
        "are under collection null with 0 records.",
        params=(
            TENANT, *_RANGE, _COLLECTION,
            AFTER, LIMIT,
        ),
        replies=(
            Reply(200, "a page of window activity, oldest window first", WindowActivityPage),
        ),
        errors=TENANT_ERRORS,
    )
)  # fmt: skip

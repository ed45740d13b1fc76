"""``GET /v1/tenants/{t}/analytics/events``: windowed event counts of one tenant.

The analytics processor (src/consumers/analytics) materialises each counter in
a per-tenant Redis hash per window; this route reads the windows of the asked
range from the tenant's index, sums the per-partition counters and pages
through them in (window_start, type, collection) order.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from redis.exceptions import RedisError

from api.openapi import AFTER, LIMIT, TENANT, TENANT_ERRORS, Operation, Param, Reply, register
from consumers.analytics.windows import SEP, WINDOWS, index_key, window_key, window_start
from eventfold.errors import FieldError, Unavailable, ValidationFailed
from eventfold.web import CURSORS, REDIS, authorize_tenant, json_response, query_int

_PATH = "/v1/tenants/{tenant}/analytics/events"
_KIND = "analytics"
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


async def list_counts(request: web.Request) -> web.Response:
    """Window counts of the tenant in ``[from, to)``, oldest window first."""
    _, tenant = await authorize_tenant(request, "reader")
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
    type_filter, coll_filter = _filter(request, "type"), _filter(request, "collection")
    position: tuple[int, str, str] | None = None
    after = request.query.get("after")
    if after:
        raw = request.app[CURSORS].decode(_KIND, after)
        if not (isinstance(raw, list) and len(raw) == 3 and isinstance(raw[0], int)):
            raise _bad("after", "invalid cursor")
        position = (raw[0], str(raw[1]), str(raw[2]))
    lo = window_start(start_from, size)
    if position is not None:
        lo = max(lo, position[0])
    redis = request.app.get(REDIS)
    if redis is None:
        raise Unavailable("analytics need Redis")
    items: list[tuple[int, str, str, int]] = []
    try:
        members = await redis.zrangebyscore(index_key(tenant.id, window), lo, f"({to}")
        starts = [int(s) for s in members if isinstance(s, bytes | str)]
        for i in range(0, len(starts), _CHUNK):
            chunk = starts[i : i + _CHUNK]
            async with redis.pipeline(transaction=False) as pipe:
                for start in chunk:
                    pipe.hgetall(window_key(tenant.id, window, start))
                hashes = await pipe.execute()
            for start, fields in zip(chunk, hashes, strict=True):
                items.extend(_window_items(start, fields, type_filter, coll_filter, position))
            if len(items) > limit:
                break
    except RedisError as exc:
        raise Unavailable("analytics store unavailable") from exc
    page = items[:limit]
    next_cursor = None
    if len(items) > limit:
        last = page[-1]
        next_cursor = request.app[CURSORS].encode(_KIND, [last[0], last[1], last[2]])
    return json_response(
        {
            "items": [
                {
                    "window_start": _iso(start),
                    "window_end": _iso(start + size),
                    "type": type_,
                    "collection": collection or None,
                    "count": count,
                    "partial": start + size > now,
                }
                for start, type_, collection, count in page
            ],
            "next": next_cursor,
        }
    )


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
    """Register the analytics route."""
    app.router.add_get(_PATH, list_counts)


_INSTANT: dict[str, Any] = {"type": "string", "format": "date-time"}
register(
    Operation(
        "GET", _PATH, "Event counts per tumbling window (reader)", "analytics",
        description="Counts of the tenant's events per window, type and collection (the "
        "first part of a record subject), computed as the events stream by. Closed windows "
        "are exact; the current one is `partial`. Replayed and duplicate events are not "
        "counted; an event arriving later than the grace period after its window closed is "
        "not counted in it. Default range: the last 60 windows.",
        params=(
            TENANT,
            Param("window", "query", {"type": "string", "enum": list(WINDOWS), "default": "1m"}),
            Param("from", "query", _INSTANT, "first window: the one holding this instant"),
            Param("to", "query", _INSTANT, "windows starting before this instant (default now)"),
            Param("type", "query", {"type": "string", "minLength": 1, "maxLength": 128}),
            Param("collection", "query", {"type": "string", "minLength": 1, "maxLength": 128}),
            AFTER, LIMIT,
        ),
        replies=(Reply(200, "a page of window counts, oldest window first", WindowCountPage),),
        errors=TENANT_ERRORS,
    )
)  # fmt: skip

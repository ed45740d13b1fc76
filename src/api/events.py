"""The tenant's event history: the envelopes with their status (pending, applied, rejected).

Events of tenant types are served in their type's latest shape (upcast), with
``dataschema`` naming that version.
"""

from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp import web

from eventfold.dedup import pending_event
from eventfold.errors import FieldError, NotFound, ValidationFailed
from eventfold.eventtypes.definitions import EVENT_TYPES
from eventfold.ids import tenant_schema
from eventfold.tenancy import tenant_connection
from eventfold.web import CURSORS, POOL, REDIS, authorize_tenant, json_response, query_int


def _after_a_write(request: web.Request) -> bool:
    """Whether the read carries a consistency token (it must see a version that write added)."""
    return bool(request.headers.get("X-Consistency-Token"))


def _item(row: asyncpg.Record) -> dict[str, Any]:
    item: dict[str, Any] = dict(row["envelope"])
    item["status"] = row["status"]
    if row["reason"] is not None:
        item["reason"] = row["reason"]
    return item


#: ``order`` → (cursor kind, comparison past the cursor, SQL order). Each order has
#: its own cursor kind, so a cursor of one cannot be passed to the other.
ORDERS = {
    "seq": ("events", ">", "ASC"),
    "-seq": ("events-newest", "<", "DESC"),
}


async def list_events(request: web.Request) -> web.Response:
    """``GET /v1/tenants/{t}/events?type=&subject=&after=&limit=&order=``.

    Oldest first by default; ``order=-seq`` lists newest first (the console's
    overview, a record's latest changes).
    """
    _, tenant = await authorize_tenant(request, "reader")
    limit = query_int(request, "limit", 50, 1, 1000)
    order = request.query.get("order", "seq")
    if order not in ORDERS:
        raise ValidationFailed(
            "bad order", errors=[FieldError("/order", "one of: " + ", ".join(ORDERS))]
        )
    kind, past, direction = ORDERS[order]
    params: list[Any] = []
    where: list[str] = []
    for name in ("type", "subject"):
        value = request.query.get(name)
        if value is not None:
            if not 0 < len(value) <= 512 or "\x00" in value:
                raise ValidationFailed(
                    f"bad {name}",
                    errors=[FieldError(f"/{name}", "1 to 512 characters, no U+0000")],
                )
            params.append(value)
            where.append(f"{name} = ${len(params)}")
    after = request.query.get("after")
    if after:
        seq = request.app[CURSORS].decode(kind, after)
        if not isinstance(seq, int):
            raise ValidationFailed("bad cursor", errors=[FieldError("/after", "invalid cursor")])
        params.append(seq)
        where.append(f"seq {past} ${len(params)}")
    params.append(limit + 1)
    sql = (
        f"SELECT seq, envelope, status, reason FROM {tenant_schema(tenant.id)}.events"
        f"{' WHERE ' + ' AND '.join(where) if where else ''}"
        f" ORDER BY seq {direction} LIMIT ${len(params)}"
    )
    async with tenant_connection(request.app[POOL], tenant.id) as conn:
        rows = await conn.fetch(sql, *params)
    page = rows[:limit]
    next_cursor = request.app[CURSORS].encode(kind, page[-1]["seq"]) if len(rows) > limit else None
    items = await request.app[EVENT_TYPES].upcast(
        tenant.id, [_item(r) for r in page], fresh=_after_a_write(request)
    )
    return json_response({"items": items, "next": next_cursor})


async def get_event(request: web.Request) -> web.Response:
    """``GET /v1/tenants/{t}/events/{id}``: one event with its status."""
    _, tenant = await authorize_tenant(request, "reader")
    event_id = request.match_info["id"]
    if not 0 < len(event_id) <= 256 or "\x00" in event_id:
        raise NotFound("no such event")
    async with tenant_connection(request.app[POOL], tenant.id) as conn:
        row = await conn.fetchrow(
            f"SELECT envelope, status, reason FROM {tenant_schema(tenant.id)}.events WHERE id = $1",
            event_id,
        )
    if row is not None:
        [item] = await request.app[EVENT_TYPES].upcast(
            tenant.id, [_item(row)], fresh=_after_a_write(request)
        )
        return json_response(item)
    pending = await pending_event(request.app.get(REDIS), tenant.id, event_id)
    if pending is None:
        raise NotFound(f"no event {event_id}")
    return json_response({**pending, "status": "pending"})

"""The tenant's event history: the envelopes with their status (pending, applied, rejected).

Events of tenant types are served in their type's latest shape (upcast), with
``dataschema`` naming that version.
"""

from __future__ import annotations

from aiohttp import web

from api import models
from eventfold import readmodel
from eventfold.appkeys import CURSORS, EVENT_TYPES, PLACEMENT, REDIS
from eventfold.dedup import pending_event
from eventfold.errors import FieldError, NotFound, ValidationFailed
from eventfold.livefeed import history_item
from eventfold.openapi import (
    AFTER,
    CONSISTENCY,
    LIMIT,
    TENANT,
    TENANT_ERRORS,
    Operation,
    Param,
    Reply,
    register,
)
from eventfold.tenancy import tenant_connection
from eventfold.web import after_a_write, authorize_tenant, json_response, query_int

register(
    Operation(
        "GET", "/v1/tenants/{tenant}/events", "The tenant's event history", "events",
        params=(
            TENANT,
            Param("type", "query", {"type": "string", "minLength": 1, "maxLength": 512}),
            Param("subject", "query", {"type": "string", "minLength": 1, "maxLength": 512}),
            Param("actor", "query", {"type": "string", "minLength": 1, "maxLength": 512},
                  "only events written by this actor (`user:<sub>`, `apikey:<id>`, "
                  "`integration:<id>`, `workflow:<run id>`, `operator:<name>`)"),
            Param("order", "query", {"type": "string", "enum": ["seq", "-seq"], "default": "seq"},
                  "`seq`: oldest first; `-seq`: newest first"),
            AFTER, LIMIT, CONSISTENCY,
        ),
        replies=(Reply(200, "a page of events, oldest first (newest first with "
                       "`order=-seq`)", models.EventPage),),
        errors=TENANT_ERRORS,
    ),
    Operation(
        "GET", "/v1/tenants/{tenant}/events/{id}", "One event with its status", "events",
        params=(
            TENANT,
            Param("id", "path", {"type": "string", "minLength": 1, "maxLength": 256}),
            CONSISTENCY,
        ),
        replies=(Reply(200, "the event", models.EventOut),),
        errors=TENANT_ERRORS,
    ),
)  # fmt: skip


def setup(app: web.Application) -> None:
    """Register the history routes."""
    app.router.add_get("/v1/tenants/{tenant}/events", list_events)
    app.router.add_get("/v1/tenants/{tenant}/events/{id}", get_event)


#: ``order`` → its cursor kind, and whether it lists newest first. Each order has its
#: own cursor kind, so a cursor of one cannot be passed to the other.
ORDERS = {
    "seq": ("events", False),
    "-seq": ("events-newest", True),
}


async def list_events(request: web.Request) -> web.Response:
    """``GET /v1/tenants/{t}/events?type=&subject=&actor=&after=&limit=&order=``.

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
    kind, newest_first = ORDERS[order]
    narrowed: dict[str, str | None] = {}
    for name in ("type", "subject", "actor"):
        value = request.query.get(name)
        if value is not None and (not 0 < len(value) <= 512 or "\x00" in value):
            raise ValidationFailed(
                f"bad {name}",
                errors=[FieldError(f"/{name}", "1 to 512 characters, no U+0000")],
            )
        narrowed[name] = value
    seq: int | None = None
    after = request.query.get("after")
    if after:
        seq = request.app[CURSORS].decode(kind, after)
        if not isinstance(seq, int):
            raise ValidationFailed("bad cursor", errors=[FieldError("/after", "invalid cursor")])
    async with tenant_connection(request.app[PLACEMENT], tenant.id) as conn:
        rows = await readmodel.history_page(
            conn,
            tenant.id,
            event_type=narrowed["type"],
            subject=narrowed["subject"],
            actor=narrowed["actor"],
            after=seq,
            newest_first=newest_first,
            limit=limit + 1,
        )
    page = rows[:limit]
    next_cursor = request.app[CURSORS].encode(kind, page[-1]["seq"]) if len(rows) > limit else None
    items = await request.app[EVENT_TYPES].upcast(
        tenant.id, [history_item(r) for r in page], fresh=after_a_write(request)
    )
    return json_response({"items": items, "next": next_cursor})


async def get_event(request: web.Request) -> web.Response:
    """``GET /v1/tenants/{t}/events/{id}``: one event with its status."""
    _, tenant = await authorize_tenant(request, "reader")
    event_id = request.match_info["id"]
    if not 0 < len(event_id) <= 256 or "\x00" in event_id:
        raise NotFound("no such event")
    async with tenant_connection(request.app[PLACEMENT], tenant.id) as conn:
        row = await readmodel.history_event(conn, tenant.id, event_id)
    if row is not None:
        [item] = await request.app[EVENT_TYPES].upcast(
            tenant.id, [history_item(row)], fresh=after_a_write(request)
        )
        return json_response(item)
    pending = await pending_event(request.app.get(REDIS), tenant.id, event_id)
    if pending is None:
        raise NotFound(f"no event {event_id}")
    return json_response({**pending, "status": "pending"})

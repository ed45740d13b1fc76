"""Dead letters over HTTP (admin): the tenant's dead letters, and their redrive.

The projector sets aside an event it cannot apply, with every later event of the
same record behind it (:mod:`eventfold.deadletters`); ``eventfold dlq`` shows
and redrives them from a shell, these routes from a browser:

- ``GET /v1/tenants/{t}/dead-letters`` lists them, by record key and log
  position, each with its error, the event it waits behind, and its envelope;
- ``POST /v1/tenants/{t}/dead-letters/redrive`` ``{"key"?}`` applies them again
  in order (all of the tenant's, or one record key's), as ``eventfold dlq
  redrive --tenant`` does: what still fails stays a dead letter, with its error.

The redrive's fold is imported when a redrive runs, not when the API starts:
the read API's process stays without the fold and Kafka clients until then.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from eventfold import deadletters
from eventfold.appkeys import CURSORS, PLACEMENT, SETTINGS
from eventfold.cachefill import refresh_after_redrive
from eventfold.envelope import pydantic_errors
from eventfold.errors import FieldError, ValidationFailed
from eventfold.openapi import (
    AFTER,
    BODY_ERRORS,
    LIMIT,
    TENANT,
    TENANT_ERRORS,
    Operation,
    Reply,
    register,
)
from eventfold.web import authorize_tenant, json_response, query_int, read_json

_PATH = "/v1/tenants/{tenant}/dead-letters"
_KIND = "dead-letters"
#: Each record's redrive statement and lock wait, in milliseconds: a request ends in
#: time, and a record that took longer keeps its dead letters for the next redrive.
_REDRIVE_BUDGET_MS = 5_000


class DeadLetterOut(BaseModel):
    """One dead letter."""

    event_id: str | None = Field(description="null when the log held no readable event")
    type: str | None
    key: str = Field(description="what the event is ordered by: its subject, else its id")
    partition: int
    offset: int
    error: str = Field(description="why it could not be applied (or what it waits behind)")
    behind: str | None = Field(description="the id of the event it waits behind; null for "
                               "the event that failed itself")  # fmt: skip
    deferred: bool = Field(description="its tenant was too slow: retried automatically")
    parked_at: datetime
    event: dict[str, Any] | None = Field(description="the CloudEvent as the log holds it")


class DeadLetterPage(BaseModel):
    """A page of dead letters, by key and log position."""

    items: list[DeadLetterOut]
    next: str | None


class DeadLetterRedriveBody(BaseModel):
    """The body of ``POST …/dead-letters/redrive``."""

    model_config = ConfigDict(extra="forbid")

    key: str | None = Field(
        default=None, min_length=1, max_length=512,
        description="one record key (`collection/id`) to redrive; all of the tenant's when absent",
    )  # fmt: skip


class DeadLetterRedrivenKey(BaseModel):
    """What the redrive did for one record key."""

    key: str
    applied: int
    rejected: int
    still_parked: int
    error: str | None = Field(description="why the first dead letter left still fails")


class DeadLetterRedriveOut(BaseModel):
    """What the redrive did, in all and per key."""

    applied: int
    rejected: int
    still_parked: int
    keys: list[DeadLetterRedrivenKey]


register(
    Operation(
        "GET", _PATH, "The tenant's dead letters: events the projector could not apply (admin)",
        "dead-letters",
        description="Events the projector could not apply, and the later events of the "
        "same record waiting behind them, oldest first per record.",
        params=(TENANT, LIMIT, AFTER),
        replies=(Reply(200, "a page of dead letters", DeadLetterPage),),
        errors=TENANT_ERRORS,
    ),
    Operation(
        "POST", _PATH + "/redrive", "Apply the tenant's dead letters again, in order (admin)",
        "dead-letters",
        description="Each record's dead letters are applied oldest first; the first one "
        "that still fails stays a dead letter with everything behind it. Run it once the cause is "
        "fixed; running it again applies nothing twice.",
        params=(TENANT,),
        body=DeadLetterRedriveBody,
        replies=(Reply(200, "what was applied, rejected and is left (`still_parked`)",
                       DeadLetterRedriveOut),),
        errors=BODY_ERRORS,
    ),
)  # fmt: skip


def setup(app: web.Application) -> None:
    """Register the dead-letter routes."""
    app.router.add_get(_PATH, list_dead_letters)
    app.router.add_post(_PATH + "/redrive", redrive_dead_letters)


def _consumer(request: web.Request) -> str:
    """The projector's name in ``eventfold.parked`` (as ``eventfold dlq`` computes it)."""
    return f"{request.app[SETTINGS].consumer_group_prefix}.projector"


def _after(request: web.Request) -> tuple[str, int, int] | None:
    raw = request.query.get("after")
    if not raw:
        return None
    position = request.app[CURSORS].decode(_KIND, raw)
    if (
        not isinstance(position, list)
        or len(position) != 3
        or not isinstance(position[0], str)
        or not all(isinstance(v, int) for v in position[1:])
    ):
        raise ValidationFailed("bad cursor", errors=[FieldError("/after", "invalid cursor")])
    return position[0], position[1], position[2]


def _envelope(raw: bytes) -> dict[str, Any] | None:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None


async def list_dead_letters(request: web.Request) -> web.Response:
    """``{"items": [{"event_id", "type", "key", "error", "behind", "event", …}], "next"}``."""
    _, tenant = await authorize_tenant(request, "admin")
    limit = query_int(request, "limit", 50, 1, 1000)
    after = _after(request)
    async with request.app[PLACEMENT].acquire(tenant.id) as conn:
        rows = await deadletters.list_letters(
            conn, _consumer(request), tenant=tenant.id, limit=limit + 1, after=after
        )
    page = rows[:limit]
    items = [
        {
            "event_id": r.event_id,
            "type": r.event_type,
            "key": r.key,
            "partition": r.partition,
            "offset": r.offset,
            "error": r.error,
            "behind": r.behind,
            "deferred": r.deferred,
            "parked_at": r.parked_at,
            "event": _envelope(r.envelope),
        }
        for r in page
    ]
    nxt = None
    if len(rows) > limit:
        last = page[-1]
        nxt = request.app[CURSORS].encode(_KIND, [last.key, last.partition, last.offset])
    return json_response({"items": items, "next": nxt})


async def redrive_dead_letters(request: web.Request) -> web.Response:
    """``{"applied", "rejected", "still_parked", "keys": [...]}`` of the tenant's redrive."""
    _, tenant = await authorize_tenant(request, "admin")
    try:
        body = DeadLetterRedriveBody.model_validate(await read_json(request))
    except ValidationError as exc:
        raise ValidationFailed("invalid redrive", errors=pydantic_errors(exc)) from None
    from eventfold.projection.redrive import redrive  # deferred: the fold loads on first use

    app = request.app
    pool = await app[PLACEMENT].pool_for(tenant.id)
    report = await redrive(
        pool,
        _consumer(request),
        tenant=tenant.id,
        key=body.key,
        budget_ms=_REDRIVE_BUDGET_MS,
        topic=app[SETTINGS].events_topic,
    )
    if report.applied:
        # A read right after the redrive sees it (the cache processor would within seconds).
        await refresh_after_redrive(app[SETTINGS], pool, report.keys)
    keys = [
        {
            "key": k["key"],
            "applied": k["applied"],
            "rejected": k["rejected"],
            "still_parked": k["still_parked"],
            "error": k["error"],
        }
        for k in report.keys
    ]
    return json_response(
        {
            "applied": report.applied,
            "rejected": report.rejected,
            "still_parked": report.still_parked,
            "keys": keys,
        }
    )

"""``POST /v1/tenants/{t}/erasure``: forget one personal record, in the log too.

The record's data keys are destroyed (:mod:`eventfold.datakeys`) and a
``record.erased`` event is published in the same PostgreSQL transaction: if
the publish fails, the keys stay and the client retries; at the commit every
listening process drops the tenant's keys it held; once the event is in the
log, the projector folds it (the record becomes a tombstone without data, its
history and webhook deliveries lose their data, the cache entry goes), and
every event of the record before it is unreadable wherever it is kept.
"""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from eventfold import datakeys, ids
from eventfold.appkeys import PLACEMENT, PUBLISHER, TENANTS
from eventfold.envelope import pydantic_errors
from eventfold.errors import Conflict, ValidationFailed
from eventfold.openapi import AUTH_ERRORS, IDEMPOTENCY_KEY, TENANT, Operation, Reply, register
from eventfold.projection.tenants import notify_changed
from eventfold.publisher import consistency_token
from eventfold.web import authorize_tenant, json_response, read_json
from producers import commands

_PATH = "/v1/tenants/{tenant}/erasure"


class ErasureBody(BaseModel):
    """The body of ``POST /v1/tenants/{t}/erasure``."""

    model_config = ConfigDict(extra="forbid")

    subject: str = Field(
        min_length=3,
        max_length=512,
        description="the record to forget, `{collection}/{id}`, in a personal collection",
    )


class ErasureAccepted(BaseModel):
    """An erasure accepted: the ``record.erased`` event and how many keys went."""

    subject: str
    event_id: str
    keys_destroyed: int = Field(ge=0)
    consistency_token: str


register(
    Operation(
        "POST", _PATH, "Erase a personal record (admin)", "tenants",
        description="Destroys the record's data keys and publishes `record.erased`: the "
        "record then reads 404, its history items keep type, time and status but no "
        "data, and its events in the log and the archive can no longer be read. Only "
        "records of the tenant's `personal_collections` (their data is encrypted).",
        params=(TENANT, IDEMPOTENCY_KEY),
        body=ErasureBody,
        replies=(Reply(202, "accepted: the keys are destroyed, `record.erased` is published",
                       ErasureAccepted),),
        errors=(*AUTH_ERRORS, 400, 409, 413, 415, 422),
    ),
)  # fmt: skip


def setup(app: web.Application) -> None:
    """Register the erasure route."""
    app.router.add_post(_PATH, erase)


async def erase(request: web.Request) -> web.Response:
    """Destroy a personal record's keys and publish ``record.erased`` (one transaction)."""
    _, tenant = await authorize_tenant(request, "admin")
    try:
        body = ErasureBody.model_validate(await read_json(request))
    except ValidationError as exc:
        raise ValidationFailed("invalid erasure", errors=pydantic_errors(exc)) from None
    collection, _ = ids.split_subject(body.subject)
    if collection not in tenant.personal_collections:
        raise Conflict(
            f"{collection} is not a personal collection of {tenant.id}: its events are not "
            "encrypted, so the log cannot forget them; mark it personal first (PATCH "
            f"/v1/tenants/{tenant.id} with personal_collections) before writing personal data"
        )
    event = commands.gateway_event(
        tenant=tenant.id,
        event_id=commands.command_event_id(
            tenant.id, request.headers.get("Idempotency-Key"), f"erasure {body.subject}"
        ),
        event_type=datakeys.ERASED,
        subject=body.subject,
        data=None,
    )
    async with request.app[PLACEMENT].acquire(tenant.id) as conn, conn.transaction():
        destroyed = await datakeys.destroy(conn, tenant.id, body.subject)
        # At the commit, every listening process reads the tenant again and so drops the
        # keys it held for it (eventfold.datakeys).
        await notify_changed(conn, tenant.id)
        [result] = await request.app[PUBLISHER].publish(tenant.id, [event])
    request.app[TENANTS].forget(tenant.id)
    return json_response(
        {
            "subject": body.subject,
            "event_id": event.id,
            "keys_destroyed": destroyed,
            "consistency_token": consistency_token([result]),
        },
        status=202,
    )

"""The ingest gateway's routes: tenants, raw events and record commands."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from eventfold import actors, datakeys, ids, readmodel
from eventfold.appkeys import PLACEMENT, PUBLISHER, SETTINGS, TENANTS
from eventfold.envelope import CloudEvent, EnvelopeInvalid, parse_event, pydantic_errors, stamp
from eventfold.errors import (
    BadRequest,
    Conflict,
    FieldError,
    PayloadTooLarge,
    PreconditionFailed,
    ValidationFailed,
)
from eventfold.events import validate_data
from eventfold.events.tenant import TenantCreated
from eventfold.eventtypes.names import is_custom
from eventfold.logs import correlation_id
from eventfold.openapi import (
    AUTH_ERRORS,
    BODY_ERRORS,
    COLLECTION,
    IDEMPOTENCY_KEY,
    IF_MATCH,
    RECORD_ID,
    TENANT,
    TENANT_ERRORS,
    Operation,
    Raw,
    Reply,
    register,
)
from eventfold.publisher import Published, consistency_token
from eventfold.replay import REPLAY_ATTRIBUTE
from eventfold.tenancy import DELETED, tenant_connection
from eventfold.web import authenticate, authorize_tenant, json_response, read_json
from producers import commands, custom_events, models
from producers.bodies import CreateRecordBody, events_body

_RECORD = "/v1/tenants/{tenant}/collections/{collection}/records"
_ONE = (TENANT, COLLECTION, RECORD_ID)

register(
    Operation(
        "POST", "/v1/tenants", "Create a tenant (platform-admin)", "tenants",
        body=TenantCreated,
        replies=(Reply(202, "accepted: `tenant.created` is published", models.TenantAccepted),),
        errors=(*AUTH_ERRORS, 400, 409, 413, 415, 422),
    ),
    Operation(
        "POST", "/v1/tenants/{tenant}/events", "Publish CloudEvents (writer)", "events",
        description="One event object, or an array of 1 to 1000 (at most 1 MiB): all or "
        "nothing. `data` must validate against the registered schema of its `type`.",
        params=(TENANT,),
        body=Raw(events_body),
        body_types=("application/json", "application/cloudevents+json"),
        replies=(Reply(202, "accepted: every event is in the log", models.EventsAccepted),),
        errors=BODY_ERRORS,
    ),
    Operation(
        "POST", _RECORD, "Create a record (writer)", "records",
        params=(TENANT, COLLECTION, IF_MATCH, IDEMPOTENCY_KEY),
        body=CreateRecordBody,
        replies=(Reply(202, "accepted: `record.upserted` is published", models.CommandAccepted),),
        errors=(*BODY_ERRORS, 412),
    ),
    Operation(
        "PUT", _RECORD + "/{id}", "Create or replace a record (writer)", "records",
        params=(*_ONE, IF_MATCH, IDEMPOTENCY_KEY),
        body=dict[str, Any],
        replies=(Reply(202, "accepted: `record.upserted` is published", models.CommandAccepted),),
        errors=(*BODY_ERRORS, 412),
    ),
    Operation(
        "PATCH", _RECORD + "/{id}", "Merge-patch a record, RFC 7396 (writer)", "records",
        params=(*_ONE, IF_MATCH, IDEMPOTENCY_KEY),
        body=dict[str, Any],
        body_types=("application/merge-patch+json", "application/json"),
        replies=(Reply(202, "accepted: `record.patched` is published", models.CommandAccepted),),
        errors=(*BODY_ERRORS, 412),
    ),
    Operation(
        "DELETE", _RECORD + "/{id}", "Delete a record (writer)", "records",
        params=(*_ONE, IF_MATCH, IDEMPOTENCY_KEY),
        replies=(Reply(202, "accepted: `record.deleted` is published", models.CommandAccepted),),
        errors=(*TENANT_ERRORS, 412),
    ),
)  # fmt: skip


def setup_routes(app: web.Application) -> None:
    """Register the write routes on ``app``."""
    app.router.add_post("/v1/tenants", create_tenant)
    app.router.add_post("/v1/tenants/{tenant}/events", publish_events)
    app.router.add_post(_RECORD, create_record)
    app.router.add_put(_RECORD + "/{id}", put_record)
    app.router.add_patch(_RECORD + "/{id}", patch_record)
    app.router.add_delete(_RECORD + "/{id}", delete_record)


def _accepted(results: list[Published], extra: dict[str, Any]) -> web.Response:
    return json_response({**extra, "consistency_token": consistency_token(results)}, status=202)


async def create_tenant(request: web.Request) -> web.Response:
    """``POST /v1/tenants`` (platform-admin): publish ``tenant.created``."""
    (await authenticate(request)).require("platform-admin")
    body = await read_json(request)
    try:
        data = TenantCreated.model_validate(body)
    except ValidationError as exc:
        raise ValidationFailed("invalid tenant", errors=pydantic_errors(exc)) from None
    existing = await request.app[TENANTS].get(data.id, fresh=True)
    if existing is not None and existing.status == DELETED:
        raise Conflict(f"tenant {data.id} was deleted: a tenant id is never used again")
    if existing is not None:
        raise Conflict(f"tenant {data.id} exists already")
    # Placed before its first event is published: every server's projector that reads
    # the event finds the entry (eventfold.placement).
    await request.app[PLACEMENT].directory.place(data.id)
    event = commands.gateway_event(
        tenant=data.id,
        event_id=commands.tenant_created_event_id(data.id),
        event_type="tenant.created",
        subject=data.id,
        data=data.model_dump(mode="json"),
    )
    [result] = await request.app[PUBLISHER].publish(data.id, [event])
    if result.duplicate:
        raise Conflict(f"tenant {data.id} exists already (or is being created)")
    return _accepted([result], {"event_id": event.id})


async def publish_events(request: web.Request) -> web.Response:
    """``POST /v1/tenants/{t}/events`` (writer): one event or an all-or-nothing batch."""
    principal, tenant = await authorize_tenant(request, "writer")
    actor = principal.actor
    body = await read_json(request)
    settings = request.app[SETTINGS]
    batch = isinstance(body, list)
    raw_events = body if batch else [body]
    if batch and not raw_events:
        raise ValidationFailed(
            "the batch is empty", errors=[FieldError("/", "send 1 to 1000 events")]
        )
    if len(raw_events) > settings.max_batch_events:
        raise PayloadTooLarge(f"a batch holds at most {settings.max_batch_events} events")
    now = datetime.now(UTC)
    correlation = correlation_id.get()
    events: list[CloudEvent] = []
    errors: list[FieldError] = []
    #: Events of tenant types: (index in ``events``, pointer in the body).
    custom: list[tuple[int, str]] = []
    for i, raw in enumerate(raw_events):
        path = f"/{i}" if batch else ""
        if not isinstance(raw, dict):
            errors.append(FieldError(path or "/", "an event must be a JSON object"))
            continue
        try:
            event = parse_event(raw, path=path)
            if event.tenant is not None and event.tenant != tenant.id:
                raise EnvelopeInvalid(
                    [FieldError(f"{path}/tenant", "differs from the path's tenant")]
                )
            # is_replay(event) in effect: the marker is an extension, so in model_extra
            # (is_replay's getattr fallback raises and catches an AttributeError here).
            if (event.model_extra or {}).get(REPLAY_ATTRIBUTE):
                # Only replay tooling may mark events: a client setting the marker
                # would silence the tenant's webhooks and streams for its event.
                raise EnvelopeInvalid(
                    [FieldError(f"{path}/{REPLAY_ATTRIBUTE}", "is reserved for replay tooling")]
                )
            if datakeys.is_encrypted(event):
                # The gateway encrypts (eventfold.datakeys), and skips what names a key:
                # a client naming one would put a personal record's data in clear.
                raise EnvelopeInvalid(
                    [FieldError(f"{path}/{datakeys.KEY_EXTENSION}", "is set by the server")]
                )
            if is_custom(event.type):
                custom.append((len(events), path))  # validated and stamped below
                events.append(event)
                continue
            validate_data(event, path=path)
        except EnvelopeInvalid as exc:
            errors.extend(exc.errors)
            continue
        events.append(stamp(event, tenant=tenant.id, now=now, correlation=correlation, actor=actor))
    if custom:
        await custom_events.admit_events(
            request,
            tenant.id,
            custom,
            events,
            errors,
            now=now,
            correlation=correlation,
            actor=actor,
        )
    if errors:
        which = "the event is invalid" if not batch else "invalid events; nothing was published"
        raise ValidationFailed(which, errors=errors)
    results = await request.app[PUBLISHER].publish(tenant.id, events, actor=actor)
    return _accepted(results, {"events": [r.as_dict() for r in results]})


def _document(body: Any, where: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ValidationFailed(
            "the record must be a JSON object", errors=[FieldError(where, "must be an object")]
        )
    return body


async def _command(
    request: web.Request,
    *,
    event_type: str,
    record_id: str,
    data: Any,
    expected_version: int | None,
) -> web.Response:
    tenant = request.match_info["tenant"]
    collection = request.match_info["collection"]
    key = request.headers.get("Idempotency-Key")
    event = commands.record_event(
        tenant=tenant,
        event_id=commands.command_event_id(tenant, key, f"{request.method} {request.path}"),
        event_type=event_type,
        collection=collection,
        record_id=record_id,
        data=data,
        expected_version=expected_version,
        correlation=correlation_id.get(),
        actor=actors.resolve(None),
    )
    if expected_version:
        await _refuse_hopeless_condition(request, tenant, collection, record_id, expected_version)
    [result] = await request.app[PUBLISHER].publish(tenant, [event])
    return _accepted([result], {"id": record_id, "event_id": event.id})


async def _refuse_hopeless_condition(
    request: web.Request, tenant: str, collection: str, record_id: str, expected: int
) -> None:
    """412 when ``If-Match`` can never match again, judged from the projection.

    Versions only grow, and a record's live version is either its version or 0
    (deleted): an expected version from 1 up to below the projected one can
    never come back. Anything else (higher, or 0) may still match once pending
    events are applied, so it goes to the log and the projector decides.
    """
    async with tenant_connection(request.app[PLACEMENT], tenant) as conn:
        current = await readmodel.record_version(conn, tenant, collection, record_id)
    if current is not None and expected < current:
        raise PreconditionFailed(
            f'If-Match "{expected}" cannot match: {collection}/{record_id} is at version '
            f"{current} or later",
            headers={"ETag": f'"{current}"'},
        )


async def _authorize_command(request: web.Request) -> tuple[str, str | None]:
    await authorize_tenant(request, "writer")
    collection = ids.check("collection", request.match_info["collection"])
    record_id = request.match_info.get("id")
    if record_id is not None:
        ids.check("id", record_id)
    return collection, record_id


async def create_record(request: web.Request) -> web.Response:
    """``POST …/records`` ``{"id"?, "data"}``: create (a record that exists is rejected)."""
    collection, _ = await _authorize_command(request)
    try:
        body = CreateRecordBody.model_validate(await read_json(request))
    except ValidationError as exc:
        raise ValidationFailed("invalid record", errors=pydantic_errors(exc)) from None
    key = request.headers.get("Idempotency-Key")
    record_id = body.id
    if record_id is None:
        record_id = commands.new_record_id(request.match_info["tenant"], key, collection)
    data = body.data
    expected = commands.parse_if_match(request.headers.get("If-Match"))
    return await _command(
        request,
        event_type="record.upserted",
        record_id=record_id,
        data=data,
        expected_version=0 if expected is None else expected,
    )


async def put_record(request: web.Request) -> web.Response:
    """``PUT …/records/{id}`` (body = the document): create or replace."""
    _, record_id = await _authorize_command(request)
    data = _document(await read_json(request), "/")
    assert record_id is not None
    return await _command(
        request,
        event_type="record.upserted",
        record_id=record_id,
        data=data,
        expected_version=commands.parse_if_match(request.headers.get("If-Match")),
    )


async def patch_record(request: web.Request) -> web.Response:
    """``PATCH …/records/{id}`` (``application/merge-patch+json``): RFC 7396 merge."""
    _, record_id = await _authorize_command(request)
    patch = _document(await read_json(request), "/")
    assert record_id is not None
    return await _command(
        request,
        event_type="record.patched",
        record_id=record_id,
        data=patch,
        expected_version=commands.parse_if_match(request.headers.get("If-Match")),
    )


async def delete_record(request: web.Request) -> web.Response:
    """``DELETE …/records/{id}``: publish ``record.deleted``."""
    _, record_id = await _authorize_command(request)
    if request.can_read_body and await request.read():
        raise BadRequest("DELETE takes no body")
    assert record_id is not None
    return await _command(
        request,
        event_type="record.deleted",
        record_id=record_id,
        data=None,
        expected_version=commands.parse_if_match(request.headers.get("If-Match")),
    )

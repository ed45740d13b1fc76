"""Tenant lifecycle commands (platform-admin): change, suspend, resume and delete a tenant.

Each route publishes one ``tenant.*`` event (subject: the tenant id, so on the
partition of its ``tenant.created``, in order) and answers 202 with the event
id and a consistency token; every processor folds the event
(:mod:`eventfold.projection.tenants` for the read model). ``tenant.deleted``
has a fixed id per tenant: deleting twice is one effect. A deleted tenant's id
is never created again (``POST /v1/tenants`` answers 409).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from eventfold import ids
from eventfold.appkeys import PUBLISHER, TENANTS
from eventfold.envelope import pydantic_errors
from eventfold.errors import BadRequest, FieldError, NotFound, ValidationFailed
from eventfold.events.tenant import TenantDeleted, TenantResumed, TenantSuspended, TenantUpdated
from eventfold.openapi import (
    AUTH_ERRORS,
    IDEMPOTENCY_KEY,
    TENANT,
    Operation,
    Reply,
    register,
)
from eventfold.publisher import consistency_token
from eventfold.tenancy import DELETED, Tenant
from eventfold.web import authenticate, json_response, read_json
from producers import commands, models

_ONE = "/v1/tenants/{tenant}"
_ERRORS = (*AUTH_ERRORS, 400, 404, 413, 415, 422)


class SuspendBody(BaseModel):
    """The body of ``POST /v1/tenants/{t}/suspend``."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(
        min_length=1,
        max_length=500,
        pattern=r"^[^\x00-\x1f\x7f]+$",
        description="shown to the tenant's writers in every 403 while it is suspended",
    )


_ACCEPTED = Reply(202, "accepted: the `tenant.*` event is published", models.TenantAccepted)
register(
    Operation(
        "PATCH", _ONE, "Change a tenant's name, limits or personal collections (platform-admin)",
        "tenants",
        params=(TENANT, IDEMPOTENCY_KEY),
        body=TenantUpdated,
        replies=(_ACCEPTED,),
        errors=_ERRORS,
    ),
    Operation(
        "POST", _ONE + "/suspend", "Suspend a tenant (platform-admin)", "tenants",
        description="Its writes are refused (403 naming the reason); its reads still answer; "
        "its webhooks, syncs and workflow runs pause until it is resumed.",
        params=(TENANT, IDEMPOTENCY_KEY),
        body=SuspendBody,
        replies=(_ACCEPTED,),
        errors=_ERRORS,
    ),
    Operation(
        "POST", _ONE + "/resume", "Resume a suspended tenant (platform-admin)", "tenants",
        params=(TENANT, IDEMPOTENCY_KEY),
        replies=(_ACCEPTED,),
        errors=_ERRORS,
    ),
    Operation(
        "DELETE", _ONE, "Delete a tenant (platform-admin)", "tenants",
        description="Every derived state of the tenant is removed (its schema, cache keys, "
        "streams, webhooks and their deliveries, integrations, workflows, dead letters); "
        "its credentials stop working at once; its id can never be created again.",
        params=(TENANT,),
        replies=(_ACCEPTED,),
        errors=_ERRORS,
    ),
)  # fmt: skip


def setup(app: web.Application) -> None:
    """Register the tenant lifecycle routes."""
    app.router.add_patch(_ONE, update_tenant)
    app.router.add_post(_ONE + "/suspend", suspend_tenant)
    app.router.add_post(_ONE + "/resume", resume_tenant)
    app.router.add_delete(_ONE, delete_tenant)


async def _tenant(request: web.Request) -> Tenant:
    """The path's tenant for a platform admin; 404 when it does not exist or was deleted."""
    (await authenticate(request)).require("platform-admin")
    tenant_id = ids.check("tenant", request.match_info["tenant"])
    tenant = await request.app[TENANTS].get(tenant_id, fresh=True)
    if tenant is None:
        raise NotFound(f"tenant {tenant_id} does not exist")
    if tenant.status == DELETED:
        raise NotFound(f"tenant {tenant_id} was deleted")
    return tenant


async def _publish(
    request: web.Request, tenant: Tenant, event_type: str, data: BaseModel, event_id: str
) -> web.Response:
    event = commands.gateway_event(
        tenant=tenant.id,
        event_id=event_id,
        event_type=event_type,
        subject=tenant.id,
        data=data.model_dump(mode="json", exclude_none=True),
    )
    [result] = await request.app[PUBLISHER].publish(tenant.id, [event])
    # This process sees the change as soon as it is projected, not a TTL later.
    request.app[TENANTS].forget(tenant.id)
    return json_response(
        {"event_id": event.id, "consistency_token": consistency_token([result])}, status=202
    )


def _command_id(request: web.Request, tenant: Tenant) -> str:
    return commands.command_event_id(
        tenant.id, request.headers.get("Idempotency-Key"), f"{request.method} {request.path}"
    )


def _body(model: type[BaseModel], raw: Any, what: str) -> Any:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ValidationFailed(f"invalid {what}", errors=pydantic_errors(exc)) from None


async def update_tenant(request: web.Request) -> web.Response:
    """``PATCH /v1/tenants/{t}`` ``{"name"?, "limits"?, "personal_collections"?}``: publish
    ``tenant.updated``."""
    tenant = await _tenant(request)
    body: TenantUpdated = _body(TenantUpdated, await read_json(request), "tenant change")
    if body.name is None and body.limits is None and body.personal_collections is None:
        raise ValidationFailed(
            "nothing to change",
            errors=[FieldError("/", "send name, limits, personal_collections or several")],
        )
    return await _publish(request, tenant, "tenant.updated", body, _command_id(request, tenant))


async def suspend_tenant(request: web.Request) -> web.Response:
    """``POST /v1/tenants/{t}/suspend`` ``{"reason"}``: publish ``tenant.suspended``."""
    tenant = await _tenant(request)
    body: SuspendBody = _body(SuspendBody, await read_json(request), "suspension")
    data = TenantSuspended(reason=body.reason)
    return await _publish(request, tenant, "tenant.suspended", data, _command_id(request, tenant))


async def resume_tenant(request: web.Request) -> web.Response:
    """``POST /v1/tenants/{t}/resume``: publish ``tenant.resumed``."""
    tenant = await _tenant(request)
    await _no_body(request)
    return await _publish(
        request, tenant, "tenant.resumed", TenantResumed(), _command_id(request, tenant)
    )


async def delete_tenant(request: web.Request) -> web.Response:
    """``DELETE /v1/tenants/{t}``: publish ``tenant.deleted`` (one effect however often sent)."""
    tenant = await _tenant(request)
    await _no_body(request)
    return await _publish(
        request, tenant, "tenant.deleted", TenantDeleted(), f"tenant.deleted:{tenant.id}"
    )


async def _no_body(request: web.Request) -> None:
    if request.can_read_body and await request.read():
        raise BadRequest(f"{request.method} {request.path} takes no body")

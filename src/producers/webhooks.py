"""Webhook subscription commands (admin): subscribe, delete, redrive exhausted deliveries.

``POST /v1/tenants/{t}/webhooks`` ``{"url", "types", "secret"?}`` → 202 ``{"id",
"secret", "consistency_token"}``: the URL is checked against the SSRF rules
(eventfold.egress; 422 when it names a private, loopback or link-local
address, or is not http(s)), the secret (``whsec_``; made when absent) is
sealed and published inside ``webhook.created``: the log never holds it in
plain text. ``DELETE …/webhooks/{id}`` publishes ``webhook.deleted`` (a fixed
event id: deleting twice is one effect). ``POST …/webhooks/{id}/redrive``
``{"since"}`` puts the endpoint's exhausted deliveries since that time back to
pending with a fresh schedule; running it twice redrives nothing more, since
the first run left no exhausted delivery behind (until they fail again).
"""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from eventfold import signing
from eventfold.appkeys import PLACEMENT, PUBLISHER, SETTINGS
from eventfold.egress import AllowList, EgressRefused, check_url
from eventfold.envelope import CloudEvent, pydantic_errors
from eventfold.errors import FieldError, NotFound, ValidationFailed
from eventfold.events.webhook import (
    SECRET_PURPOSE,
    TYPE_FILTER_PATTERN,
    WEBHOOK_ID_PATTERN,
    WebhookCreated,
    WebhookDeleted,
)
from eventfold.openapi import BODY_ERRORS, TENANT, TENANT_ERRORS, Operation, Param, Reply, register
from eventfold.publisher import consistency_token
from eventfold.sealing import keyring
from eventfold.web import authorize_tenant, json_response, read_json
from producers import commands

_HOOKS = "/v1/tenants/{tenant}/webhooks"
_HOOK_ID = re.compile(WEBHOOK_ID_PATTERN)
_HOOK_PARAM = Param("id", "path", {"type": "string", "pattern": WEBHOOK_ID_PATTERN})


class CreateWebhookBody(BaseModel):
    """The body of ``POST …/webhooks``."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=8, max_length=2048, description="an http(s) URL, public")
    types: list[str] = Field(
        min_length=1,
        max_length=50,
        description="event types to send, `*` as wildcard (`record.*`)",
    )
    secret: str | None = Field(
        default=None, description="`whsec_` + base64 (24 to 64 bytes); made when absent"
    )

    @field_validator("types")
    @classmethod
    def _types(cls, value: list[str]) -> list[str]:
        for pattern in value:
            if re.fullmatch(TYPE_FILTER_PATTERN, pattern) is None:
                raise ValueError(f"{pattern[:64]!r} is not an event type or a `*` pattern")
        return sorted(set(value))

    @field_validator("secret")
    @classmethod
    def _secret(cls, value: str | None) -> str | None:
        if value is not None:
            signing.secret_key(value)  # ValueError when it is not a whsec_ secret
        return value


class WebhookCreatedOut(BaseModel):
    """``POST …/webhooks`` accepted: ``webhook.created`` is published."""

    id: str = Field(pattern=WEBHOOK_ID_PATTERN)
    secret: str = Field(description="verify the `webhook-signature` of deliveries with it")
    consistency_token: str


class WebhookDeletedOut(BaseModel):
    """``DELETE …/webhooks/{id}`` accepted: ``webhook.deleted`` is published."""

    id: str
    event_id: str
    consistency_token: str


class RedriveBody(BaseModel):
    """The body of ``POST …/webhooks/{id}/redrive``."""

    model_config = ConfigDict(extra="forbid")

    since: datetime = Field(description="deliveries exhausted at or after this time")


class RedriveOut(BaseModel):
    """How many exhausted deliveries were put back to pending."""

    id: str
    redriven: int


def setup(app: web.Application) -> None:
    """Register the webhook write routes."""
    app.router.add_post(_HOOKS, create_webhook)
    app.router.add_delete(_HOOKS + "/{id}", delete_webhook)
    app.router.add_post(_HOOKS + "/{id}/redrive", redrive_webhook)


register(
    Operation(
        "POST", _HOOKS, "Subscribe a webhook endpoint (admin)", "webhooks",
        params=(TENANT,),
        body=CreateWebhookBody,
        replies=(Reply(202, "accepted: `webhook.created` (secret sealed) is published",
                       WebhookCreatedOut),),
        errors=BODY_ERRORS,
    ),
    Operation(
        "DELETE", _HOOKS + "/{id}", "Delete a webhook endpoint (admin)", "webhooks",
        params=(TENANT, _HOOK_PARAM),
        replies=(Reply(202, "accepted: `webhook.deleted` is published", WebhookDeletedOut),),
        errors=TENANT_ERRORS,
    ),
    Operation(
        "POST", _HOOKS + "/{id}/redrive", "Redrive exhausted deliveries (admin)",
        "webhooks",
        description="Deliveries whose retries ran out since `since` are scheduled again "
        "(attempts restart). Safe to run twice: the second run finds none left exhausted.",
        params=(TENANT, _HOOK_PARAM),
        body=RedriveBody,
        replies=(Reply(200, "the number of deliveries scheduled again", RedriveOut),),
        errors=BODY_ERRORS,
    ),
)  # fmt: skip


def _event(tenant: str, event_id: str, event_type: str, hook_id: str, data: Any) -> CloudEvent:
    return commands.gateway_event(
        tenant=tenant, event_id=event_id, event_type=event_type,
        subject=f"webhooks/{hook_id}", data=data,
    )  # fmt: skip


async def create_webhook(request: web.Request) -> web.Response:
    """``POST /v1/tenants/{t}/webhooks`` (admin): subscribe an endpoint."""
    _, tenant = await authorize_tenant(request, "admin")
    try:
        body = CreateWebhookBody.model_validate(await read_json(request))
    except ValidationError as exc:
        raise ValidationFailed("invalid webhook", errors=pydantic_errors(exc)) from None
    settings = request.app[SETTINGS]
    try:
        check_url(body.url, AllowList.parse(settings.webhook_allow_hosts))
    except EgressRefused as exc:
        refused = [FieldError("/url", str(exc))]
        raise ValidationFailed("refused webhook URL", errors=refused) from None
    secret = body.secret or signing.new_secret()
    hook_id = secrets.token_hex(8)
    sealed = keyring(settings).seal(secret.encode(), purpose=SECRET_PURPOSE)
    data = WebhookCreated(id=hook_id, url=body.url, types=body.types, secret_sealed=sealed)
    event = _event(
        tenant.id, f"webhook.created:{hook_id}", "webhook.created", hook_id, data.model_dump()
    )
    [result] = await request.app[PUBLISHER].publish(tenant.id, [event])
    return json_response(
        {
            "id": hook_id,
            "secret": secret,
            "consistency_token": consistency_token([result]),
        },
        status=202,
        headers={"Cache-Control": "no-store"},
    )


def _hook_id(request: web.Request) -> str:
    hook_id = request.match_info["id"]
    if _HOOK_ID.fullmatch(hook_id) is None:
        raise NotFound(f"no webhook {hook_id[:64]}")
    return hook_id


async def _require_hook(request: web.Request, tenant: str, hook_id: str) -> None:
    async with request.app[PLACEMENT].acquire(tenant) as conn:
        found = await conn.fetchval(
            "SELECT true FROM eventfold.webhooks WHERE id = $1 AND tenant = $2"
            " AND deleted_at IS NULL",
            hook_id,
            tenant,
        )
    if not found:
        raise NotFound(f"no webhook {hook_id} in tenant {tenant}")


async def delete_webhook(request: web.Request) -> web.Response:
    """``DELETE /v1/tenants/{t}/webhooks/{id}`` (admin): stop delivering to it."""
    _, tenant = await authorize_tenant(request, "admin")
    hook_id = _hook_id(request)
    await _require_hook(request, tenant.id, hook_id)
    event = _event(
        tenant.id,
        f"webhook.deleted:{hook_id}",
        "webhook.deleted",
        hook_id,
        WebhookDeleted(id=hook_id).model_dump(),
    )
    [result] = await request.app[PUBLISHER].publish(tenant.id, [event])
    return json_response(
        {
            "id": hook_id,
            "event_id": event.id,
            "consistency_token": consistency_token([result]),
        },
        status=202,
    )


async def redrive_webhook(request: web.Request) -> web.Response:
    """``POST /v1/tenants/{t}/webhooks/{id}/redrive`` (admin): exhausted deliveries back to
    pending."""
    _, tenant = await authorize_tenant(request, "admin")
    hook_id = _hook_id(request)
    try:
        body = RedriveBody.model_validate(await read_json(request))
    except ValidationError as exc:
        raise ValidationFailed("invalid redrive", errors=pydantic_errors(exc)) from None
    await _require_hook(request, tenant.id, hook_id)
    since = body.since if body.since.tzinfo else body.since.replace(tzinfo=UTC)
    async with request.app[PLACEMENT].acquire(tenant.id) as conn:
        # One UPDATE: a concurrent second run waits on the row locks, then finds
        # the rows pending (no longer exhausted) and redrives nothing. Each is marked a
        # head at once: the claim still holds back one behind an earlier pending one.
        count = await conn.fetchval(
            "WITH moved AS (UPDATE eventfold.webhook_deliveries"
            " SET state = 'pending', attempts = 0, next_attempt_at = now(),"
            " lease_until = '-infinity', done_at = NULL, head = true"
            " WHERE webhook_id = $1 AND tenant = $2 AND state = 'dead' AND done_at >= $3"
            " RETURNING 1) SELECT count(*) FROM moved",
            hook_id,
            tenant.id,
            since,
        )
    return json_response({"id": hook_id, "redriven": int(count)})

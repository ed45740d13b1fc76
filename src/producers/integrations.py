"""Integration commands (admin) and the third party's inbound webhook.

Configuration is published as ``integration.*`` events (like API keys), with
the headers (credentials) and the webhook secret sealed by
:mod:`eventfold.sealing` before they reach the log; the answer never carries
the headers. ``POST …/integrations`` → 202 ``{"id", "webhook_secret",
"consistency_token"}``; ``PATCH …/{id}`` (``{"paused": true|false}`` pauses or
resumes, any config field replaces it); ``DELETE …/{id}``; ``POST …/{id}/sync``
asks the runner for a run now (202).

``POST …/{id}/webhook`` is signed by the third party (Standard Webhooks with
the integration's ``webhook_secret``), not authenticated by a token: a bad or
stale signature is 401; the body ``{"items": [...]}`` is handled as a page and
answered 200 only after Kafka acknowledged its events. A ``webhook-id`` seen
before (Redis, 24 h) is answered 200 again without publishing. A bad signature
and an integration that does not exist count as failed authentications of the
client address (:mod:`eventfold.authlimit`); a verified webhook takes a token
of its tenant's rate limit, as the tenant's own requests do.
"""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
import uuid
from typing import Any

import asyncpg
import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from redis.exceptions import RedisError

from eventfold import actors, ids, signing
from eventfold.appkeys import PLACEMENT, PUBLISHER, REDIS, SETTINGS, TENANTS
from eventfold.egress import AllowList, EgressRefused, check_url
from eventfold.envelope import CloudEvent, pydantic_errors
from eventfold.errors import (
    FieldError,
    NotFound,
    ValidationFailed,
)
from eventfold.events.integration import (
    INTEGRATION_ID_PATTERN,
    IntegrationCreated,
    IntegrationDeleted,
    IntegrationUpdated,
    Kind,
    PollConfig,
    headers_purpose,
    secret_purpose,
)
from eventfold.openapi import BODY_ERRORS, TENANT, TENANT_ERRORS, Operation, Param, Reply, register
from eventfold.publisher import consistency_token
from eventfold.sealing import SealError, keyring
from eventfold.syncpages import (
    BadPage,
    PageSpec,
    item_ids,
    load_states,
    page_changes,
    page_items,
    store_states,
)
from eventfold.web import (
    auth_failed,
    authorize_tenant,
    json_response,
    parse_json,
    rate_limit,
    read_body,
    read_json,
)
from producers import commands

log = logging.getLogger("eventfold.integrations")

_BASE = "/v1/tenants/{tenant}/integrations"
_ONE = _BASE + "/{id}"
_ID = re.compile(INTEGRATION_ID_PATTERN)
_HEADER_NAME = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}$"
#: Characters no header value may hold (RFC 9110: controls other than HTAB).
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
#: An integration's headers, as JSON, at most: what HTTP servers take (8-16 KiB), and
#: sealed they must fit ``IntegrationCreated.headers_sealed``.
_MAX_HEADERS_BYTES = 16 * 1024
#: How long a webhook-id is remembered (the Standard Webhooks tolerance is 5 minutes).
_WEBHOOK_DEDUP_SECONDS = 24 * 3600


class CreateIntegrationBody(PollConfig):
    """The body of ``POST …/integrations`` (the generic cursor poller)."""

    model_config = ConfigDict(extra="forbid")

    kind: Kind = Field(description="the connector kind")
    headers: dict[str, str] | None = Field(
        default=None, max_length=32, description="sent with every request; never returned"
    )
    paused: bool = False


class PatchIntegrationBody(BaseModel):
    """The body of ``PATCH …/integrations/{id}``: any subset of the configuration."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(default=None, min_length=1, max_length=2048)
    collection: str | None = None
    interval_seconds: int | None = Field(default=None, ge=1, le=86_400)
    cursor_param: str | None = None
    items_field: str | None = None
    cursor_field: str | None = None
    id_field: str | None = None
    deleted_field: str | None = None
    reconcile_seconds: int | None = None
    reconcile_deletes: bool | None = None
    headers: dict[str, str] | None = Field(
        default=None, max_length=32, description="replaces the headers; {} removes them"
    )
    paused: bool | None = Field(default=None, description="true pauses, false resumes")


class IntegrationCreatedOut(BaseModel):
    """``POST …/integrations`` accepted."""

    id: str = Field(pattern=INTEGRATION_ID_PATTERN)
    webhook_secret: str = Field(description="`whsec_` + base64: signs the inbound webhooks")
    consistency_token: str


class IntegrationAcceptedOut(BaseModel):
    """A change to an integration accepted: its event is published."""

    id: str
    event_id: str
    consistency_token: str


class SyncAcceptedOut(BaseModel):
    """``POST …/sync`` accepted: the runner starts a run soon."""

    id: str


class WebhookAcceptedOut(BaseModel):
    """An inbound webhook applied: its events are acknowledged by Kafka."""

    items: int
    duplicate: bool


_ID_PARAM = Param("id", "path", {"type": "string", "pattern": INTEGRATION_ID_PATTERN})
_WEBHOOK_HEADERS = tuple(
    Param(name, "header", {"type": "string"}, "Standard Webhooks header", required=True)
    for name in ("webhook-id", "webhook-timestamp", "webhook-signature")
)

register(
    Operation(
        "POST", _BASE, "Create an integration (admin)", "integrations",
        params=(TENANT,), body=CreateIntegrationBody,
        replies=(Reply(202, "accepted: `integration.created` (secrets sealed) is published",
                       IntegrationCreatedOut),),
        errors=BODY_ERRORS,
    ),
    Operation(
        "PATCH", _ONE, "Change, pause or resume an integration (admin)", "integrations",
        params=(TENANT, _ID_PARAM), body=PatchIntegrationBody,
        replies=(Reply(202, "accepted: `integration.updated` is published",
                       IntegrationAcceptedOut),),
        errors=BODY_ERRORS,
    ),
    Operation(
        "DELETE", _ONE, "Delete an integration (admin)", "integrations",
        params=(TENANT, _ID_PARAM),
        replies=(Reply(202, "accepted: `integration.deleted` is published",
                       IntegrationAcceptedOut),),
        errors=TENANT_ERRORS,
    ),
    Operation(
        "POST", _ONE + "/sync", "Start a sync run now (admin)", "integrations",
        params=(TENANT, _ID_PARAM), body_required=False,
        replies=(Reply(202, "accepted: the runner starts a run", SyncAcceptedOut),),
        errors=TENANT_ERRORS,
    ),
    Operation(
        "POST", _ONE + "/webhook", "Inbound webhook from the third party (signed)",
        "integrations",
        params=(TENANT, _ID_PARAM, *_WEBHOOK_HEADERS),
        body=dict[str, list[dict[str, Any]]],
        replies=(Reply(200, "the items are published and acknowledged", WebhookAcceptedOut),),
        errors=(400, 401, 404, 413, 422, 429, 503),
        secured=False,
        description="Verified with the integration's `webhook_secret` (Standard Webhooks); "
        "body `{\"items\": [...]}` is handled as one page.",
    ),
)  # fmt: skip


def setup(app: web.Application) -> None:
    """Register the integration write routes and the inbound webhook."""
    app.router.add_post(_BASE, create_integration)
    app.router.add_patch(_ONE, patch_integration)
    app.router.add_delete(_ONE, delete_integration)
    app.router.add_post(_ONE + "/sync", request_sync)
    app.router.add_post(_ONE + "/webhook", inbound_webhook)


def _event(
    tenant: str, event_type: str, integration_id: str, data: Any, event_id: str
) -> CloudEvent:
    return commands.gateway_event(
        tenant=tenant, event_id=event_id, event_type=event_type,
        subject=f"integrations/{integration_id}", data=data,
    )  # fmt: skip


def _check_target(request: web.Request, url: str) -> None:
    try:
        check_url(url, AllowList.parse(request.app[SETTINGS].webhook_allow_hosts))
    except EgressRefused as exc:
        raise ValidationFailed(
            "the integration URL is refused", errors=[FieldError("/url", str(exc))]
        ) from None


def _check_headers(headers: dict[str, str] | None) -> None:
    for name, value in (headers or {}).items():
        if re.fullmatch(_HEADER_NAME, name) is None or _CONTROL.search(value):
            raise ValidationFailed(
                "invalid header", errors=[FieldError(f"/headers/{name[:64]}", "invalid header")]
            )
    if headers and len(orjson.dumps(headers)) > _MAX_HEADERS_BYTES:
        raise ValidationFailed(
            "the headers are too large",
            errors=[FieldError("/headers", f"at most {_MAX_HEADERS_BYTES} bytes in all")],
        )


def _seal_headers(request: web.Request, integration_id: str, headers: dict[str, str]) -> str:
    return keyring(request.app[SETTINGS]).seal(
        orjson.dumps(headers), purpose=headers_purpose(integration_id)
    )


async def create_integration(request: web.Request) -> web.Response:
    """``POST /v1/tenants/{t}/integrations`` (admin): configure a new integration."""
    _, tenant = await authorize_tenant(request, "admin")
    try:
        body = CreateIntegrationBody.model_validate(await read_json(request))
    except ValidationError as exc:
        raise ValidationFailed("invalid integration", errors=pydantic_errors(exc)) from None
    _check_target(request, body.url)
    _check_headers(body.headers)
    integration_id = secrets.token_hex(8)
    webhook_secret = signing.new_secret()
    ring = keyring(request.app[SETTINGS])
    data = IntegrationCreated(
        id=integration_id,
        kind=body.kind,
        config=PollConfig.model_validate(body.model_dump(exclude={"kind", "headers", "paused"})),
        headers_sealed=_seal_headers(request, integration_id, body.headers)
        if body.headers
        else None,
        webhook_secret_sealed=ring.seal(
            webhook_secret.encode(), purpose=secret_purpose(integration_id)
        ),
        paused=body.paused,
    )
    event = _event(
        tenant.id,
        "integration.created",
        integration_id,
        data.model_dump(mode="json"),
        f"integration.created:{integration_id}",
    )
    [result] = await request.app[PUBLISHER].publish(tenant.id, [event])
    return json_response(
        {
            "id": integration_id,
            "webhook_secret": webhook_secret,
            "consistency_token": consistency_token([result]),
        },
        status=202,
        headers={"Cache-Control": "no-store"},
    )


async def _stored(request: web.Request, tenant: str) -> asyncpg.Record:
    integration_id = request.match_info["id"]
    if _ID.fullmatch(integration_id) is None:
        raise NotFound(f"no integration {integration_id[:64]}")
    async with request.app[PLACEMENT].acquire(tenant) as conn:
        row: asyncpg.Record | None = await conn.fetchrow(
            "SELECT id, config, webhook_secret_sealed FROM eventfold.integrations"
            " WHERE id = $1 AND tenant = $2 AND deleted_at IS NULL",
            integration_id,
            tenant,
        )
    if row is None:
        raise NotFound(f"no integration {integration_id} in tenant {tenant}")
    return row


async def patch_integration(request: web.Request) -> web.Response:
    """``PATCH …/integrations/{id}`` (admin): change the config, pause or resume."""
    _, tenant = await authorize_tenant(request, "admin")
    row = await _stored(request, tenant.id)
    try:
        body = PatchIntegrationBody.model_validate(await read_json(request))
    except ValidationError as exc:
        raise ValidationFailed("invalid integration change", errors=pydantic_errors(exc)) from None
    changes = body.model_dump(exclude_unset=True, exclude={"headers", "paused"})
    config: PollConfig | None = None
    if changes:
        try:
            config = PollConfig.model_validate({**row["config"], **changes})
        except ValidationError as exc:
            raise ValidationFailed(
                "invalid integration change", errors=pydantic_errors(exc)
            ) from None
        _check_target(request, config.url)
    headers_sealed: str | None = None
    if body.headers is not None:
        _check_headers(body.headers)
        headers_sealed = _seal_headers(request, row["id"], body.headers) if body.headers else ""
    data = IntegrationUpdated(
        id=row["id"], config=config, headers_sealed=headers_sealed, paused=body.paused
    )
    event = _event(
        tenant.id,
        "integration.updated",
        row["id"],
        data.model_dump(mode="json", exclude_none=True),
        str(uuid.uuid4()),
    )
    [result] = await request.app[PUBLISHER].publish(tenant.id, [event])
    return json_response(
        {"id": row["id"], "event_id": event.id, "consistency_token": consistency_token([result])},
        status=202,
    )


async def delete_integration(request: web.Request) -> web.Response:
    """``DELETE …/integrations/{id}`` (admin): stop syncing it."""
    _, tenant = await authorize_tenant(request, "admin")
    row = await _stored(request, tenant.id)
    event = _event(
        tenant.id,
        "integration.deleted",
        row["id"],
        IntegrationDeleted(id=row["id"]).model_dump(mode="json"),
        f"integration.deleted:{row['id']}",
    )
    [result] = await request.app[PUBLISHER].publish(tenant.id, [event])
    return json_response(
        {"id": row["id"], "event_id": event.id, "consistency_token": consistency_token([result])},
        status=202,
    )


async def request_sync(request: web.Request) -> web.Response:
    """``POST …/integrations/{id}/sync`` (admin): the runner picks it at its next tick.

    A run request is runtime state (like the cursor), not configuration: it is
    a flag on the integration's row rather than an event.
    """
    _, tenant = await authorize_tenant(request, "admin")
    row = await _stored(request, tenant.id)
    async with request.app[PLACEMENT].acquire(tenant.id) as conn:
        await conn.execute(
            "UPDATE eventfold.integrations SET sync_requested = true WHERE id = $1", row["id"]
        )
    return json_response({"id": row["id"]}, status=202)


async def inbound_webhook(request: web.Request) -> web.Response:
    """``POST …/integrations/{id}/webhook``: a signed page of items from the third party."""
    tenant = request.match_info["tenant"]
    try:
        if not ids.is_valid("tenant", tenant):
            raise NotFound("no such integration")
        row = await _stored(request, tenant)
    except NotFound:
        auth_failed(request)  # an unauthenticated lookup that found nothing
        raise
    body = await read_body(request)  # the signature covers the raw bytes
    try:
        secret = keyring(request.app[SETTINGS]).open(
            row["webhook_secret_sealed"], purpose=secret_purpose(row["id"])
        )
    except SealError:
        # Its key was rotated away: nothing can be verified, so nothing is accepted.
        log.error("webhook secret cannot be opened", extra={"integration": row["id"]})
        raise signing.SignatureInvalid("the integration's webhook secret is unusable") from None
    msg_id = signing.verify(secret.decode(), request.headers, body)
    owner = await request.app[TENANTS].get(tenant)
    if owner is not None:
        await rate_limit(request, owner)
    redis = request.app.get(REDIS)
    dedup_key = f"ef:{tenant}:integration-webhook:{row['id']}:{msg_id[:200]}"
    if redis is not None:
        try:
            if await redis.exists(dedup_key):
                return json_response({"items": 0, "duplicate": True})
        except RedisError:
            pass  # the deterministic event ids keep a second delivery harmless
    doc = parse_json(body)
    config = PollConfig.model_validate(row["config"])
    spec = PageSpec(row["id"], config.collection, "items", config.id_field, config.deleted_field)
    try:
        items = page_items(doc, "items")
        ids_ = item_ids(spec, items)
    except BadPage as exc:
        raise ValidationFailed(
            "invalid webhook page", errors=[FieldError("/items", str(exc))]
        ) from None
    pool = await request.app[PLACEMENT].pool_for(tenant)
    async with pool.acquire(timeout=5) as conn:
        known = await load_states(conn, row["id"], ids_)
    changes = page_changes(tenant, spec, items, known)
    if changes.events:
        await request.app[PUBLISHER].publish(
            tenant, changes.events, actor=actors.integration(row["id"])
        )
        async with pool.acquire(timeout=5) as conn, conn.transaction():
            await store_states(conn, row["id"], changes.states)
            await conn.execute(
                "UPDATE eventfold.integrations SET items_synced = items_synced + $2 WHERE id = $1",
                row["id"],
                len(changes.events),
            )
    if redis is not None:
        with contextlib.suppress(RedisError):
            await redis.set(dedup_key, b"1", ex=_WEBHOOK_DEDUP_SECONDS)
    return json_response({"items": len(changes.events), "duplicate": False})

"""Workflow commands: define, replace and delete workflows (admin); cancel runs,
approve and reject approval steps (writer). Each publishes one event.

``POST /v1/tenants/{t}/workflows`` → 202 ``{"id", "version": 1, "consistency_token"}``
(``workflow.created``, a fixed event id: creating twice is one effect; an id
defined before, deleted or not, is a 409). ``PUT …/workflows/{id}`` → 202 with
the next version (``workflow.updated``, id fixed by workflow and version: two
racing replacements of one version are one, the other is rejected by the
projector). ``DELETE …/workflows/{id}`` → 202. An invalid definition is a 422
with a JSON pointer for every error (:mod:`eventfold.workflows.definition`).

``POST …/runs/{run}/cancel`` and ``…/runs/{run}/steps/{step}/approve|reject``
(body ``{"comment"?}``) → 202 ``{"run", "event_id", "consistency_token"}``: the
command is logged (``workflow.run.cancel_requested``, ``workflow.step.approved``,
``workflow.step.rejected``, ids fixed by run and step: a second click is the same
event) and the processor acts on it. A run that has finished, or a step that is
not an approval waiting, is a 409; send the ``X-Consistency-Token`` of a write
the run depends on to have the check wait for it.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from eventfold.appkeys import PLACEMENT, PUBLISHER, SETTINGS
from eventfold.egress import AllowList
from eventfold.envelope import pydantic_errors
from eventfold.errors import Conflict, FieldError, NotFound, ValidationFailed
from eventfold.events.workflow import RunCommand, WorkflowDeleted, WorkflowSaved
from eventfold.eventtypes.definitions import type_exists
from eventfold.eventtypes.names import REGISTRATION_ROUTE, is_custom
from eventfold.openapi import BODY_ERRORS, TENANT, Operation, Param, Reply, register
from eventfold.placement import pool_of
from eventfold.publisher import consistency_token
from eventfold.sealing import keyring
from eventfold.tenancy import tenant_connection
from eventfold.web import (
    authorize_tenant,
    json_response,
    parse_json,
    read_body,
    wait_for_consistency,
)
from eventfold.workflows import reads
from eventfold.workflows.definition import (
    HEADERS_PURPOSE,
    STEP_ID_PATTERN,
    WORKFLOW_ID_PATTERN,
    Definition,
    parse,
    seal_headers,
)
from eventfold.workflows.ids import RUN_ID_PATTERN
from producers import commands

_FLOWS = "/v1/tenants/{tenant}/workflows"
_RUN = "/v1/tenants/{tenant}/runs/{run}"
_WORKFLOW_ID = re.compile(WORKFLOW_ID_PATTERN)
_RUN_ID = re.compile(RUN_ID_PATTERN)
_STEP_ID = re.compile(STEP_ID_PATTERN)
_ID = Param("id", "path", {"type": "string", "pattern": WORKFLOW_ID_PATTERN})
_RUN_PARAM = Param("run", "path", {"type": "string", "pattern": RUN_ID_PATTERN})
_STEP_PARAM = Param("step", "path", {"type": "string", "pattern": STEP_ID_PATTERN})


class WorkflowAccepted(BaseModel):
    """A definition was accepted: its event is published."""

    id: str
    version: int
    consistency_token: str


class WorkflowDeletedOut(BaseModel):
    """``DELETE …/workflows/{id}`` accepted."""

    id: str
    event_id: str
    consistency_token: str


class CommandBody(BaseModel):
    """The body of cancel, approve and reject (optional)."""

    model_config = ConfigDict(extra="forbid")

    comment: str | None = Field(default=None, max_length=2000)


class CommandAccepted(BaseModel):
    """A command to a run was logged; the processor acts on it."""

    run: str
    event_id: str
    consistency_token: str


def setup(app: web.Application) -> None:
    """Register the workflow write routes."""
    app.router.add_post(_FLOWS, create_workflow)
    app.router.add_put(_FLOWS + "/{id}", replace_workflow)
    app.router.add_delete(_FLOWS + "/{id}", delete_workflow)
    app.router.add_post(_RUN + "/cancel", cancel_run)
    app.router.add_post(_RUN + "/steps/{step}/approve", approve_step)
    app.router.add_post(_RUN + "/steps/{step}/reject", reject_step)


register(
    Operation(
        "POST", _FLOWS, "Define a workflow (admin)", "workflows",
        description="An invalid definition is a 422 whose `errors[].path` are JSON pointers "
        "into it. An id defined before (even deleted) is a 409.",
        params=(TENANT,), body=Definition,
        replies=(Reply(202, "accepted: `workflow.created` is published", WorkflowAccepted),),
        errors=(*BODY_ERRORS, 409),
    ),
    Operation(
        "PUT", _FLOWS + "/{id}", "Replace a workflow: a new version (admin)", "workflows",
        description="Running runs finish on the version they started with.",
        params=(TENANT, _ID), body=Definition,
        replies=(Reply(202, "accepted: `workflow.updated` is published", WorkflowAccepted),),
        errors=BODY_ERRORS,
    ),
    Operation(
        "DELETE", _FLOWS + "/{id}", "Delete a workflow (admin)", "workflows",
        params=(TENANT, _ID),
        replies=(Reply(202, "accepted: `workflow.deleted` is published", WorkflowDeletedOut),),
        errors=BODY_ERRORS,
    ),
    Operation(
        "POST", _RUN + "/cancel", "Cancel a run that has not finished (writer)", "workflows",
        params=(TENANT, _RUN_PARAM), body=CommandBody,
        replies=(Reply(202, "accepted: the processor cancels the run", CommandAccepted),),
        errors=(*BODY_ERRORS, 409),
    ),
    Operation(
        "POST", _RUN + "/steps/{step}/approve", "Approve a waiting approval step (writer)",
        "workflows", params=(TENANT, _RUN_PARAM, _STEP_PARAM), body=CommandBody,
        replies=(Reply(202, "accepted: the step succeeds, the run goes on", CommandAccepted),),
        errors=(*BODY_ERRORS, 409),
    ),
    Operation(
        "POST", _RUN + "/steps/{step}/reject", "Reject a waiting approval step (writer)",
        "workflows", params=(TENANT, _RUN_PARAM, _STEP_PARAM), body=CommandBody,
        replies=(Reply(202, "accepted: the step and its run fail", CommandAccepted),),
        errors=(*BODY_ERRORS, 409),
    ),
)  # fmt: skip


async def _definition(request: web.Request, tenant: str, body: Any) -> Definition:
    """The definition in ``body``, its headers sealed; every error in one 422, an
    unregistered tenant type named as a trigger among them."""
    settings = request.app[SETTINGS]
    unknown = await _unregistered_types(request, tenant, body)
    try:
        definition = parse(body, AllowList.parse(settings.webhook_allow_hosts))
    except ValidationFailed as exc:
        raise ValidationFailed(exc.detail, errors=[*exc.errors, *unknown]) from None
    if unknown:
        raise ValidationFailed("invalid workflow definition", errors=unknown)
    ring = keyring(settings)
    return seal_headers(definition, lambda raw: ring.seal(raw, purpose=HEADERS_PURPOSE))


async def _unregistered_types(request: web.Request, tenant: str, body: Any) -> list[FieldError]:
    """An error per trigger type that is a tenant type this tenant has not registered
    (a registration just made is seen once its consistency token is waited for)."""
    trigger = body.get("trigger") if isinstance(body, dict) else None
    types = trigger.get("types") if isinstance(trigger, dict) else None
    errors: list[FieldError] = []
    for i, name in enumerate(types if isinstance(types, list) else []):
        registered = not (isinstance(name, str) and is_custom(name)) or await type_exists(
            await pool_of(request.app[PLACEMENT], tenant), tenant, name
        )
        if not registered:
            errors.append(
                FieldError(
                    f"/trigger/types/{i}",
                    f"no event type {name} in this tenant: register it first"
                    f" ({REGISTRATION_ROUTE})",
                )
            )
    return errors


def _path_id(request: web.Request) -> str:
    workflow = request.match_info["id"]
    if _WORKFLOW_ID.fullmatch(workflow) is None:
        raise NotFound(f"no workflow {workflow[:64]}")
    return workflow


async def _state(request: web.Request, tenant: str, workflow: str) -> tuple[int, bool] | None:
    async with tenant_connection(request.app[PLACEMENT], tenant) as conn:
        return await reads.workflow_state(conn, tenant, workflow)


async def _publish_saved(
    request: web.Request, tenant: str, event_id: str, kind: str, version: int, d: Definition
) -> web.Response:
    data = WorkflowSaved(version=version, definition=d).model_dump(mode="json", by_alias=True)
    event = commands.gateway_event(
        tenant=tenant, event_id=event_id, event_type=kind, subject=f"workflows/{d.id}", data=data
    )
    [result] = await request.app[PUBLISHER].publish(tenant, [event])
    return json_response(
        {"id": d.id, "version": version, "consistency_token": consistency_token([result])},
        status=202,
    )


async def create_workflow(request: web.Request) -> web.Response:
    """``POST /v1/tenants/{t}/workflows`` (admin): define a workflow (version 1)."""
    _, tenant = await authorize_tenant(request, "admin")
    body = parse_json(await read_body(request))
    if isinstance(body, dict) and "id" not in body:
        body = {**body, "id": f"wf-{uuid.uuid4().hex[:12]}"}
    await wait_for_consistency(request, tenant.id)
    definition = await _definition(request, tenant.id, body)
    if await _state(request, tenant.id, definition.id) is not None:
        raise Conflict(f"workflow {definition.id} exists (or existed): choose another id")
    return await _publish_saved(
        request, tenant.id, f"workflow.created:{definition.id}", "workflow.created", 1, definition
    )


async def replace_workflow(request: web.Request) -> web.Response:
    """``PUT /v1/tenants/{t}/workflows/{id}`` (admin): a new version of the definition."""
    _, tenant = await authorize_tenant(request, "admin")
    workflow = _path_id(request)
    body = parse_json(await read_body(request))
    if isinstance(body, dict) and body.setdefault("id", workflow) != workflow:
        raise ValidationFailed(
            "invalid workflow definition",
            errors=[FieldError("/id", "must be the id in the path (or absent)")],
        )
    await wait_for_consistency(request, tenant.id)
    definition = await _definition(request, tenant.id, body)
    state = await _state(request, tenant.id, workflow)
    if state is None or state[1]:
        raise NotFound(f"no workflow {workflow} in tenant {tenant.id}")
    version = state[0] + 1
    return await _publish_saved(
        request, tenant.id, f"workflow.updated:{workflow}:v{version}", "workflow.updated",
        version, definition,
    )  # fmt: skip


async def delete_workflow(request: web.Request) -> web.Response:
    """``DELETE /v1/tenants/{t}/workflows/{id}`` (admin): no run starts any more."""
    _, tenant = await authorize_tenant(request, "admin")
    workflow = _path_id(request)
    await wait_for_consistency(request, tenant.id)
    state = await _state(request, tenant.id, workflow)
    if state is None or state[1]:
        raise NotFound(f"no workflow {workflow} in tenant {tenant.id}")
    event = commands.gateway_event(
        tenant=tenant.id, event_id=f"workflow.deleted:{workflow}", event_type="workflow.deleted",
        subject=f"workflows/{workflow}", data=WorkflowDeleted(id=workflow).model_dump(),
    )  # fmt: skip
    [result] = await request.app[PUBLISHER].publish(tenant.id, [event])
    return json_response(
        {"id": workflow, "event_id": event.id, "consistency_token": consistency_token([result])},
        status=202,
    )


async def _command_body(request: web.Request) -> CommandBody:
    raw = await read_body(request)
    try:
        return CommandBody.model_validate(parse_json(raw) if raw.strip() else {})
    except ValidationError as exc:
        raise ValidationFailed("invalid command", errors=pydantic_errors(exc)) from None


async def _command(request: web.Request, kind: str, step: str | None) -> web.Response:
    principal, tenant = await authorize_tenant(request, "writer")
    run = request.match_info["run"]
    if _RUN_ID.fullmatch(run) is None:
        raise NotFound(f"no run {run[:64]}")
    if step is not None and _STEP_ID.fullmatch(step) is None:
        raise NotFound(f"no step {step[:64]} in run {run}")
    body = await _command_body(request)
    await wait_for_consistency(request, tenant.id)
    async with tenant_connection(request.app[PLACEMENT], tenant.id) as conn:
        doc = await reads.get_run(conn, tenant.id, run)
    if doc is None:
        raise NotFound(f"no run {run} in tenant {tenant.id}")
    if doc["finished_at"] is not None:
        raise Conflict(f"run {run} has {doc['status']} already")
    if step is not None:
        found = next((s for s in doc["steps"] if s["id"] == step), None)
        if found is None:
            raise NotFound(f"no step {step} in run {run}")
        if found["kind"] != "approval" or found["status"] != "waiting":
            raise Conflict(f"step {step} is not an approval waiting (it is {found['status']})")
    verb = {"cancel": "cancel", "approve": "approved", "reject": "rejected"}[kind]
    event_type = {
        "cancel": "workflow.run.cancel_requested",
        "approve": "workflow.step.approved",
        "reject": "workflow.step.rejected",
    }[kind]
    event_id = f"{run}:{verb}" if step is None else f"{run}:{step}:{verb}"
    data = RunCommand(run=run, step=step, comment=body.comment, by=principal.subject)
    event = commands.gateway_event(
        tenant=tenant.id, event_id=event_id, event_type=event_type, subject=f"runs/{run}",
        data=data.model_dump(exclude_none=True),
    )  # fmt: skip
    [result] = await request.app[PUBLISHER].publish(tenant.id, [event])
    return json_response(
        {"run": run, "event_id": event_id, "consistency_token": consistency_token([result])},
        status=202,
    )


async def cancel_run(request: web.Request) -> web.Response:
    """``POST /v1/tenants/{t}/runs/{run}/cancel`` (writer)."""
    return await _command(request, "cancel", None)


async def approve_step(request: web.Request) -> web.Response:
    """``POST /v1/tenants/{t}/runs/{run}/steps/{step}/approve`` (writer)."""
    return await _command(request, "approve", request.match_info["step"])


async def reject_step(request: web.Request) -> web.Response:
    """``POST /v1/tenants/{t}/runs/{run}/steps/{step}/reject`` (writer)."""
    return await _command(request, "reject", request.match_info["step"])

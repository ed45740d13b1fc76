"""Workflow reads (reader): definitions, runs of a workflow (newest first), one run.

``GET /v1/tenants/{t}/workflows`` and ``…/workflows/{id}`` serve the definition
with its ``version``; ``…/workflows/{id}/runs`` and ``GET /v1/tenants/{t}/runs/{run}``
serve ``{"id", "workflow", "workflow_version", "status", "trigger_event", "reason",
"started_at", "finished_at", "steps": [{"id", "kind", "status", "attempts",
"output", "error", "started_at", "finished_at"}]}``, as folded from the run's
``workflow.*`` events. Each honours ``X-Consistency-Token``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aiohttp import web
from pydantic import BaseModel, Field

from eventfold.appkeys import CURSORS, PLACEMENT
from eventfold.errors import FieldError, NotFound, ValidationFailed
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
from eventfold.web import (
    after_cursor,
    authorize_tenant,
    json_response,
    query_int,
    wait_for_consistency,
)
from eventfold.workflows import reads
from eventfold.workflows.definition import WORKFLOW_ID_PATTERN
from eventfold.workflows.ids import RUN_ID_PATTERN

_FLOWS = "/v1/tenants/{tenant}/workflows"
_ID = Param("id", "path", {"type": "string", "pattern": WORKFLOW_ID_PATTERN})
_RUN = Param("run", "path", {"type": "string", "pattern": RUN_ID_PATTERN})


class StepOut(BaseModel):
    """One step of a run."""

    id: str
    kind: str
    status: str = Field(
        description="pending, running, waiting, succeeded, failed, skipped, cancelled"
    )
    attempts: int
    output: Any = None
    error: str | None
    started_at: datetime | None
    finished_at: datetime | None


class RunOut(BaseModel):
    """A run and its steps."""

    id: str
    workflow: str
    workflow_version: int
    status: str = Field(description="running, waiting, succeeded, failed, cancelled")
    trigger_event: str
    reason: str | None
    started_at: datetime
    finished_at: datetime | None
    steps: list[StepOut]


class RunPage(BaseModel):
    """A page of runs, newest first."""

    items: list[RunOut]
    next: str | None


class WorkflowOut(BaseModel):
    """A workflow definition with its version."""

    id: str
    name: str
    enabled: bool
    version: int
    trigger: dict[str, Any]
    steps: list[dict[str, Any]]
    created_at: datetime
    updated_at: datetime


class WorkflowPage(BaseModel):
    """A page of workflows, by id."""

    items: list[WorkflowOut]
    next: str | None


register(
    Operation(
        "GET", _FLOWS, "List workflows", "workflows",
        params=(TENANT, LIMIT, AFTER, CONSISTENCY),
        replies=(Reply(200, "a page of workflows (deleted ones left out)", WorkflowPage),),
        errors=TENANT_ERRORS,
    ),
    Operation(
        "GET", _FLOWS + "/{id}", "One workflow", "workflows",
        params=(TENANT, _ID, CONSISTENCY),
        replies=(Reply(200, "the definition and its version", WorkflowOut),),
        errors=TENANT_ERRORS,
    ),
    Operation(
        "GET", _FLOWS + "/{id}/runs", "A workflow's runs, newest first", "workflows",
        params=(TENANT, _ID, LIMIT, AFTER, CONSISTENCY),
        replies=(Reply(200, "a page of runs with their steps", RunPage),),
        errors=TENANT_ERRORS,
    ),
    Operation(
        "GET", "/v1/tenants/{tenant}/runs/{run}", "One run with its steps", "workflows",
        params=(TENANT, _RUN, CONSISTENCY),
        replies=(Reply(200, "the run", RunOut),),
        errors=TENANT_ERRORS,
    ),
)  # fmt: skip


def setup(app: web.Application) -> None:
    """Register the workflow read routes."""
    app.router.add_get(_FLOWS, list_workflows)
    app.router.add_get(_FLOWS + "/{id}", get_workflow)
    app.router.add_get(_FLOWS + "/{id}/runs", list_runs)
    app.router.add_get("/v1/tenants/{tenant}/runs/{run}", get_run)


async def list_workflows(request: web.Request) -> web.Response:
    """``{"items": [workflow, ...], "next"}`` by id."""
    _, tenant = await authorize_tenant(request, "reader")
    limit = query_int(request, "limit", 50, 1, 1000)
    after = after_cursor(request, "workflows", "")
    await wait_for_consistency(request, tenant.id)
    async with tenant_connection(request.app[PLACEMENT], tenant.id) as conn:
        items = await reads.list_workflows(conn, tenant.id, after, limit + 1)
    nxt = (
        request.app[CURSORS].encode("workflows", items[limit - 1]["id"])
        if len(items) > limit
        else None
    )
    return json_response({"items": items[:limit], "next": nxt})


async def get_workflow(request: web.Request) -> web.Response:
    """One live workflow."""
    _, tenant = await authorize_tenant(request, "reader")
    workflow = request.match_info["id"]
    await wait_for_consistency(request, tenant.id)
    async with tenant_connection(request.app[PLACEMENT], tenant.id) as conn:
        doc = await reads.get_workflow(conn, tenant.id, workflow)
    if doc is None:
        raise NotFound(f"no workflow {workflow[:64]} in tenant {tenant.id}")
    return json_response(doc)


async def list_runs(request: web.Request) -> web.Response:
    """``{"items": [run, ...], "next"}``, newest first."""
    _, tenant = await authorize_tenant(request, "reader")
    workflow = request.match_info["id"]
    limit = query_int(request, "limit", 50, 1, 1000)
    position = after_cursor(request, "runs", "")
    after: tuple[datetime, str] | None = None
    if position:
        started, _, last_id = position.partition("|")
        try:
            after = (datetime.fromisoformat(started), last_id)
        except ValueError:
            raise ValidationFailed(
                "bad cursor", errors=[FieldError("/after", "invalid cursor")]
            ) from None
    await wait_for_consistency(request, tenant.id)
    async with tenant_connection(request.app[PLACEMENT], tenant.id) as conn:
        if after is None and await reads.workflow_state(conn, tenant.id, workflow) is None:
            raise NotFound(f"no workflow {workflow[:64]} in tenant {tenant.id}")
        items = await reads.list_runs(conn, tenant.id, workflow, after, limit + 1)
    nxt = None
    if len(items) > limit:
        last = items[limit - 1]
        nxt = request.app[CURSORS].encode("runs", f"{last['started_at'].isoformat()}|{last['id']}")
    return json_response({"items": items[:limit], "next": nxt})


async def get_run(request: web.Request) -> web.Response:
    """One run with its steps."""
    _, tenant = await authorize_tenant(request, "reader")
    run = request.match_info["run"]
    await wait_for_consistency(request, tenant.id)
    async with tenant_connection(request.app[PLACEMENT], tenant.id) as conn:
        doc = await reads.get_run(conn, tenant.id, run)
    if doc is None:
        raise NotFound(f"no run {run[:64]} in tenant {tenant.id}")
    return json_response(doc)

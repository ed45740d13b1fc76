"""Reads of the workflow tables, shared by the API, the gateway's checks and the CLI.

Each takes a connection that may read the tenant's schema (the API's is
:func:`eventfold.tenancy.tenant_connection`, as the tenant's role). A schema
from before workflows has no such tables until its first workflow
(:mod:`.tables`): it reads as having none.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from eventfold.ids import tenant_schema
from eventfold.workflows import tables
from eventfold.workflows.definition import served

_RUN_COLUMNS = (
    "id, workflow, workflow_version, status, trigger_event, reason, started_at, finished_at"
)


def workflow_doc(row: asyncpg.Record) -> dict[str, Any]:
    """A workflow as served: its definition with ``version`` and times."""
    return {
        **served(dict(row["definition"])),
        "version": row["version"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }


#: Tenant schemas known to have the workflow tables (once they do, they keep them).
_PRESENT: set[str] = set()


async def _ready(conn: asyncpg.Connection, tenant: str) -> bool:
    schema = tenant_schema(tenant)
    if schema in _PRESENT:
        return True
    if await tables.present(conn, schema):
        _PRESENT.add(schema)
        return True
    return False


async def list_workflows(
    conn: asyncpg.Connection, tenant: str, after: str, limit: int
) -> list[dict[str, Any]]:
    """Live workflows by id, after ``after``, at most ``limit``."""
    if not await _ready(conn, tenant):
        return []
    rows = await conn.fetch(
        f"SELECT id, version, definition, created_at, updated_at FROM {tenant_schema(tenant)}"
        ".workflows WHERE deleted_at IS NULL AND id > $1 ORDER BY id LIMIT $2",
        after,
        limit,
    )
    return [workflow_doc(r) for r in rows]


async def get_workflow(
    conn: asyncpg.Connection, tenant: str, workflow: str
) -> dict[str, Any] | None:
    """One live workflow, or None."""
    if not await _ready(conn, tenant):
        return None
    row = await conn.fetchrow(
        f"SELECT id, version, definition, created_at, updated_at FROM {tenant_schema(tenant)}"
        ".workflows WHERE id = $1 AND deleted_at IS NULL",
        workflow,
    )
    return workflow_doc(row) if row is not None else None


async def workflow_state(
    conn: asyncpg.Connection, tenant: str, workflow: str
) -> tuple[int, bool] | None:
    """``(version, deleted)`` of a workflow ever defined, or None."""
    if not await _ready(conn, tenant):
        return None
    row = await conn.fetchrow(
        f"SELECT version, deleted_at IS NOT NULL AS deleted FROM {tenant_schema(tenant)}"
        ".workflows WHERE id = $1",
        workflow,
    )
    return (int(row["version"]), bool(row["deleted"])) if row is not None else None


async def _steps(conn: asyncpg.Connection, tenant: str, runs: list[str]) -> dict[str, list[Any]]:
    rows = await conn.fetch(
        f"SELECT run, id, kind, status, attempts, output, error, started_at, finished_at"
        f" FROM {tenant_schema(tenant)}.run_steps WHERE run = ANY($1::text[])"
        " ORDER BY run, position",
        runs,
    )
    out: dict[str, list[Any]] = {r: [] for r in runs}
    for r in rows:
        out[r["run"]].append({k: v for k, v in r.items() if k != "run"})
    return out


async def list_runs(
    conn: asyncpg.Connection,
    tenant: str,
    workflow: str | None,
    after: tuple[datetime, str] | None,
    limit: int,
) -> list[dict[str, Any]]:
    """Runs, newest first (of one workflow, or all), each with its steps."""
    if not await _ready(conn, tenant):
        return []
    s = tenant_schema(tenant)
    args: list[Any] = [limit]
    where = []
    if workflow is not None:
        args.append(workflow)
        where.append(f"workflow = ${len(args)}")
    if after is not None:
        args += [after[0], after[1]]
        where.append(f"(started_at, id) < (${len(args) - 1}, ${len(args)})")
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    rows = await conn.fetch(
        f"SELECT {_RUN_COLUMNS} FROM {s}.runs {clause} ORDER BY started_at DESC, id DESC LIMIT $1",
        *args,
    )
    steps = await _steps(conn, tenant, [r["id"] for r in rows])
    return [{**dict(r), "steps": steps[r["id"]]} for r in rows]


async def get_run(conn: asyncpg.Connection, tenant: str, run: str) -> dict[str, Any] | None:
    """One run with its steps, or None."""
    if not await _ready(conn, tenant):
        return None
    row = await conn.fetchrow(
        f"SELECT {_RUN_COLUMNS} FROM {tenant_schema(tenant)}.runs WHERE id = $1", run
    )
    if row is None:
        return None
    steps = await _steps(conn, tenant, [run])
    return {**dict(row), "steps": steps[run]}

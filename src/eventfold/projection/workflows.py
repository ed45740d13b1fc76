"""Projection of ``workflow.*`` events, and the workflow processor's inbox.

Definitions fold into the tenant's ``workflows`` (the current version) and
``workflow_versions`` (every version: a run finishes on the one it started
with); a run's events fold into ``runs`` and ``run_steps``. All are tenant
tables (:mod:`eventfold.workflows.tables`): a replay rebuilds them from the log,
``eventfold verify`` compares them.

The inbox (``eventfold.workflow_inbox``) is how the processor learns what to
do, exactly once. :func:`enqueue_many` runs inside the batch transaction
that applies record events: for each applied one whose record, as it stands
right after that event, satisfies an enabled workflow's trigger, it writes a
row (the event and that record). The commands a person gives a run (approve,
reject, cancel) are written there by their handlers the same way. So a row
exists if and only if the event was applied, whatever crashes: the batch
commits the row, the history row and the checkpoint together; a redelivered
batch is skipped by its checkpoint and a re-sent event by its id. A rebuild
(``eventfold replay``) writes no row: it folds into a shadow schema (a
:class:`~eventfold.readmodel.Target` with ``shadow`` set); events carrying the
replay marker write none either. A workflow created after an event was applied
is not in the workflows table that event's batch reads, so it starts no run.
Every row names the topic its event came from (``Target.topic``): a workflows
processor serves the inbox of its own log.

The handlers are listed in :data:`eventfold.projection.handlers.HANDLERS`; the
batch calls :func:`begin_batch` and :func:`end_runs` around each tenant's fold, and
:func:`enqueue_many` once its tenants' records are saved.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import asyncpg
from pydantic import BaseModel, ValidationError

from eventfold.db import WORKFLOW_CHANNEL
from eventfold.envelope import CloudEvent
from eventfold.events.workflow import (
    COMMANDS,
    RunCommand,
    RunFinished,
    RunStarted,
    StepCancelled,
    StepFailed,
    StepRetrying,
    StepSkipped,
    StepStarted,
    StepSucceeded,
    StepWaiting,
    WorkflowDeleted,
    WorkflowSaved,
)
from eventfold.fold import APPLIED, Outcome, Record
from eventfold.projection import runfold
from eventfold.readmodel import Target
from eventfold.replay import is_replay
from eventfold.tenancy import tenant_role_ddl
from eventfold.workflows import tables
from eventfold.workflows.conditions import holds

#: Live tenant schemas known to have the workflow tables (they keep them once they do).
_WITH_TABLES: set[str] = set()
#: An applied record event and the record as it stands right after it.
Change = tuple[CloudEvent, tuple[str, str], Record | None]


M = TypeVar("M", bound=BaseModel)


def _parse(model: type[M], ev: CloudEvent) -> M | Outcome:
    try:
        return model.model_validate(ev.data)
    except ValidationError as exc:
        return Outcome("rejected", f"invalid {ev.type} data: {exc.error_count()} errors")


# -- definitions --------------------------------------------------------------


async def workflow_saved(
    conn: asyncpg.Connection, target: Target, ev: CloudEvent, at: datetime
) -> Outcome:
    """A new workflow (version 1), or the next version of a live one."""
    data = _parse(WorkflowSaved, ev)
    if isinstance(data, Outcome):
        return data
    s, d = target.schema, data.definition
    if not await tables.present(conn, s):
        # A tenant schema from before workflows: its tables come with its first one.
        await conn.execute(tables.tenant_ddl(s) + tenant_role_ddl(target.tenant, s))
    doc = d.document()
    current = await conn.fetchrow(
        f"SELECT version, deleted_at FROM {s}.workflows WHERE id = $1", d.id
    )
    if ev.type == "workflow.created":
        if current is not None or data.version != 1:
            return Outcome("rejected", f"workflow {d.id} exists already")
        await conn.execute(
            f"INSERT INTO {s}.workflows (id, version, name, enabled, definition, created_at,"
            " updated_at) VALUES ($1, 1, $2, $3, $4, $5, $5)",
            d.id, d.name, d.enabled, doc, at,
        )  # fmt: skip
    else:
        if current is None or current["deleted_at"] is not None:
            return Outcome("rejected", f"no workflow {d.id}")
        if data.version != current["version"] + 1:
            return Outcome(
                "rejected",
                f"workflow {d.id} is at version {current['version']}, not {data.version - 1}",
            )
        await conn.execute(
            f"UPDATE {s}.workflows SET version = $2, name = $3, enabled = $4, definition = $5,"
            " updated_at = $6 WHERE id = $1",
            d.id, data.version, d.name, d.enabled, doc, at,
        )  # fmt: skip
    await conn.execute(
        f"INSERT INTO {s}.workflow_versions (id, version, definition, created_at)"
        " VALUES ($1, $2, $3, $4)",
        d.id, data.version, doc, at,
    )  # fmt: skip
    return APPLIED


async def workflow_deleted(
    conn: asyncpg.Connection, target: Target, ev: CloudEvent, at: datetime
) -> Outcome:
    """No run starts any more (running runs finish on their version)."""
    data = _parse(WorkflowDeleted, ev)
    if isinstance(data, Outcome):
        return data
    done = await conn.fetchval(
        f"UPDATE {target.schema}.workflows SET deleted_at = $2, updated_at = $2"
        " WHERE id = $1 AND deleted_at IS NULL RETURNING true",
        data.id,
        at,
    )
    return APPLIED if done else Outcome("rejected", f"no workflow {data.id}")


# -- runs ---------------------------------------------------------------------


async def run_started(
    conn: asyncpg.Connection, target: Target, ev: CloudEvent, at: datetime
) -> Outcome:
    """A run and its pending steps."""
    data = _parse(RunStarted, ev)
    if isinstance(data, Outcome):
        return data
    row = {
        "id": data.run, "workflow": data.workflow, "workflow_version": data.workflow_version,
        "trigger_event": data.trigger_event, "depth": data.depth, "started_at": data.at,
    }  # fmt: skip
    steps = [(step.id, step.kind) for step in data.steps]
    if not await runfold.fold_run(conn, target, data.run, lambda f: runfold.start(f, row, steps)):
        return Outcome("rejected", f"run {data.run} exists already")
    return APPLIED


#: The step events, folded by :func:`step_changed`.
STEP_TYPES = (
    "workflow.step.started",
    "workflow.step.waiting",
    "workflow.step.retrying",
    "workflow.step.succeeded",
    "workflow.step.failed",
    "workflow.step.skipped",
    "workflow.step.cancelled",
)

_RUN_STATUS = {"workflow.step.started": "running", "workflow.step.waiting": "waiting",
               "workflow.step.succeeded": "running"}  # fmt: skip


#: Per step event: the columns of its step it sets.
_STEP_CHANGES: dict[str, Callable[[Any], dict[str, Any]]] = {
    "workflow.step.started": lambda d: {"status": "running", "attempts": 1, "started_at": d.at},
    "workflow.step.waiting": lambda d: {"status": "waiting", "attempts": 1, "started_at": d.at},
    "workflow.step.retrying": lambda d: {"attempts": d.attempts, "error": d.error},
    "workflow.step.succeeded": lambda d: {"status": "succeeded", "attempts": d.attempts,
                                          "output": d.output, "error": None, "finished_at": d.at},
    "workflow.step.failed": lambda d: {"status": "failed", "attempts": d.attempts,
                                       "error": d.error, "finished_at": d.at},
    "workflow.step.skipped": lambda d: {"status": "skipped", "finished_at": d.at},
    "workflow.step.cancelled": lambda d: {"status": "cancelled", "finished_at": d.at},
}  # fmt: skip


async def step_changed(
    conn: asyncpg.Connection, target: Target, ev: CloudEvent, at: datetime
) -> Outcome:
    """A step's status, attempts, output or error; the run's status follows its step."""
    models: dict[str, type[BaseModel]] = {
        "workflow.step.started": StepStarted,
        "workflow.step.waiting": StepWaiting,
        "workflow.step.retrying": StepRetrying,
        "workflow.step.succeeded": StepSucceeded,
        "workflow.step.failed": StepFailed,
        "workflow.step.skipped": StepSkipped,
        "workflow.step.cancelled": StepCancelled,
    }
    data: Any = _parse(models[ev.type], ev)
    if isinstance(data, Outcome):
        return data
    run, step = data.run, data.step
    changes, status = _STEP_CHANGES[ev.type](data), _RUN_STATUS.get(ev.type)
    found = await runfold.fold_run(
        conn, target, run, lambda f: runfold.change_step(f, run, step, changes, status)
    )
    if not found:
        return Outcome("rejected", f"no step {step} in run {run}")
    return APPLIED


async def run_finished(
    conn: asyncpg.Connection, target: Target, ev: CloudEvent, at: datetime
) -> Outcome:
    """A run's end: its status, reason and time."""
    data = _parse(RunFinished, ev)
    if isinstance(data, Outcome):
        return data
    status = ev.type.rsplit(".", 1)[1]
    done = await runfold.fold_run(
        conn, target, data.run, lambda f: runfold.finish(f, data.run, status, data.reason, data.at)
    )
    return APPLIED if done else Outcome("rejected", f"run {data.run} is not running")


async def run_command(
    conn: asyncpg.Connection, target: Target, ev: CloudEvent, at: datetime
) -> Outcome:
    """A person's command to a run: handed to the processor through the inbox."""
    data = _parse(RunCommand, ev)
    if isinstance(data, Outcome):
        return data
    if not target.shadow and not is_replay(ev):
        tenant = target.tenant
        await conn.execute(
            "INSERT INTO eventfold.workflow_inbox (key, tenant, topic, kind, run, step, event)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (key) DO NOTHING",
            f"{tenant}/{ev.id}", tenant, target.topic, COMMANDS[ev.type], data.run,
            data.step, ev.to_dict(),
        )  # fmt: skip
        await conn.execute("SELECT pg_notify($1, $2)", WORKFLOW_CHANNEL, target.topic)
    return APPLIED


# -- triggers -----------------------------------------------------------------


async def begin_batch(
    conn: asyncpg.Connection, target: Target, events: Sequence[CloudEvent | None]
) -> None:
    """Before one tenant's events of a batch are folded: read the runs they name."""
    await runfold.begin(conn, target, events)


async def end_runs(conn: asyncpg.Connection, target: Target) -> None:
    """After one tenant's events of a batch are folded, in its transaction: write the
    runs they changed (the batch hands its triggers over with :func:`enqueue_many`)."""
    await runfold.flush(conn, target)


async def enqueue_many(
    conn: asyncpg.Connection, changes: Sequence[tuple[Target, Sequence[Change]]]
) -> None:
    """Write an inbox row per (enabled workflow, applied event) whose trigger matches,
    for each tenant's ``changes``: their workflows read in one statement, the rows (and
    the processors' wake-up) written in another.

    Runs in the batch transaction, after the records are saved; nothing in a
    rebuild or for a replayed event (see the module docstring).
    """
    wanted: list[tuple[Target, Sequence[Change]]] = []
    for target, tenant_changes in changes:
        if not tenant_changes or target.shadow:
            continue
        if target.schema not in _WITH_TABLES:
            if not await tables.present(conn, target.schema):
                continue  # a schema from before workflows, none defined since
            _WITH_TABLES.add(target.schema)
        wanted.append((target, tenant_changes))
    if not wanted:
        return
    defined: dict[int, list[asyncpg.Record]] = {}
    for row in await conn.fetch(
        " UNION ALL ".join(
            f"SELECT {k} AS k, id, version, definition->'trigger' AS trigger"
            f" FROM {target.schema}.workflows WHERE enabled AND deleted_at IS NULL"
            for k, (target, _) in enumerate(wanted)
        )
    ):
        defined.setdefault(row["k"], []).append(row)
    rows: list[dict[str, Any]] = []
    for k, (target, tenant_changes) in enumerate(wanted):
        if k in defined:
            rows += _matches(target, tenant_changes, defined[k])
    if rows:
        topics = sorted({r["topic"] for r in rows})
        await conn.execute(_HAND_OVER_TRIGGERS, rows, WORKFLOW_CHANNEL, topics)


def _matches(
    target: Target, changes: Sequence[Change], workflows: Sequence[asyncpg.Record]
) -> list[dict[str, Any]]:
    """The inbox rows of ``changes`` (one tenant's) that start one of its ``workflows``."""
    rows: list[dict[str, Any]] = []
    tenant, topic = target.tenant, target.topic
    for ev, (collection, record_id), record in changes:
        if is_replay(ev):
            continue
        doc = {
            "id": record_id,
            "collection": collection,
            "version": record.version if record is not None else None,
            "data": record.data if record is not None else None,
        }
        for wf in workflows:
            trigger = wf["trigger"]
            if (
                ev.type in trigger["types"]
                and collection == trigger["collection"]
                and holds(trigger.get("when") or {}, doc, data="/data")
            ):
                rows.append(
                    {"key": f"{tenant}/trigger/{wf['id']}/{ev.id}", "tenant": tenant,
                     "topic": topic, "workflow": wf["id"], "version": wf["version"],
                     "event": ev.to_dict(), "record": doc}
                )  # fmt: skip
    return rows


# The rows and the processors' wake-up in one round trip (the data-modifying CTE runs
# whatever the SELECT reads); inbox ids follow the rows' order.
_HAND_OVER_TRIGGERS = """
WITH handed AS (
    INSERT INTO eventfold.workflow_inbox (key, tenant, topic, kind, workflow, version, event,
        record)
    SELECT b.key, b.tenant, b.topic, 'trigger', b.workflow, b.version, b.event, b.record
    FROM ROWS FROM (jsonb_to_recordset($1::jsonb)
        AS (key text, tenant text, topic text, workflow text, version integer, event jsonb,
            record jsonb))
        WITH ORDINALITY AS b(key, tenant, topic, workflow, version, event, record, n)
    ORDER BY b.n
    ON CONFLICT (key) DO NOTHING
)
SELECT pg_notify($2, t) FROM unnest($3::text[]) AS t
"""

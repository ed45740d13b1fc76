"""The fold of a run's events into ``runs`` and ``run_steps``, a batch at a time.

A run logs about ten events (started, each step's start and end, its end). Folded
one statement each, the projector spent a round trip to PostgreSQL per event,
which bounded runs per second. Here the batch reads the runs its events name
once (:func:`begin`), each handler folds its event in memory and decides its
outcome from that state (:func:`fold_run`), and :func:`flush` writes the changed rows in one
statement before the batch saves its checkpoint: a run's two tables are read together
and written together, one round trip each way. A handler called
outside a batch (no :func:`begin` for its tenant) reads and writes its run itself.

The fold lives for one :func:`~eventfold.projection.batch.fold_tenant` call (one
tenant's events, or one event in careful mode): a savepoint rolled back for it
discards it, since the next call begins a fresh one. It is held in a context
variable because the handlers' signature (:data:`~eventfold.projection.handlers.EventHandler`)
has no place for it; it caches rows of its :class:`~eventfold.readmodel.Target`
(the schema is passed explicitly to every statement, nothing is redirected), and
a handler of another target folds alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from eventfold.envelope import CloudEvent
from eventfold.readmodel import Target

#: The event types folded here (a run's own log).
RUN_TYPES = frozenset({
    "workflow.run.started", "workflow.run.succeeded", "workflow.run.failed",
    "workflow.run.cancelled", "workflow.step.started", "workflow.step.waiting",
    "workflow.step.retrying", "workflow.step.succeeded", "workflow.step.failed",
    "workflow.step.skipped", "workflow.step.cancelled",
})  # fmt: skip
RUN_COLUMNS = (
    "id", "workflow", "workflow_version", "status", "trigger_event", "depth", "reason",
    "started_at", "finished_at",
)  # fmt: skip
STEP_COLUMNS = (
    "run", "position", "id", "kind", "status", "attempts", "output", "error", "started_at",
    "finished_at",
)  # fmt: skip
#: Each column's type, for the arrays :func:`flush` writes from.
_RUN_TYPES = ("text", "text", "int", "text", "text", "int", "text", "timestamptz", "timestamptz")
_STEP_TYPES = (
    "text", "int", "text", "text", "text", "int", "jsonb", "text", "timestamptz", "timestamptz"
)  # fmt: skip
#: A run's steps as they are read with it (``output`` as text: inside an anonymous
#: record jsonb comes in the binary format the pool's codec does not read).
_STEP_FIELDS = (
    "position", "id", "kind", "status", "attempts", "output::text", "error", "started_at",
    "finished_at",
)  # fmt: skip


def _load_sql(schema: str) -> str:
    runs = ", ".join(f"r.{c}" for c in RUN_COLUMNS)
    steps = ", ".join(f"s.{c}" for c in _STEP_FIELDS)
    return (
        f"SELECT {runs}, array(SELECT ({steps}) FROM {schema}.run_steps s"
        f" WHERE s.run = r.id ORDER BY s.position) AS steps"
        f" FROM {schema}.runs r WHERE r.id = ANY($1::text[])"
    )


def _flush_sql(schema: str) -> str:
    def source(types: tuple[str, ...], first: int) -> str:
        arrays = ", ".join(f"${first + i}::{t}[]" for i, t in enumerate(types))
        return f"SELECT * FROM unnest({arrays})"

    return (
        f"WITH run_rows AS (INSERT INTO {schema}.runs ({', '.join(RUN_COLUMNS)})"
        f" {source(_RUN_TYPES, 1)}"
        " ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status,"
        " reason = EXCLUDED.reason, finished_at = EXCLUDED.finished_at),"
        f" step_rows AS (INSERT INTO {schema}.run_steps ({', '.join(STEP_COLUMNS)})"
        f" {source(_STEP_TYPES, len(_RUN_TYPES) + 1)}"
        " ON CONFLICT (run, position) DO UPDATE SET"
        " status = EXCLUDED.status, attempts = EXCLUDED.attempts, output = EXCLUDED.output,"
        " error = EXCLUDED.error, started_at = EXCLUDED.started_at,"
        " finished_at = EXCLUDED.finished_at)"
        " SELECT 1"
    )


@dataclass(slots=True)
class Fold:
    """The runs one batch of one tenant touches, as they stand after its events so far."""

    target: Target
    runs: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    steps: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    dirty_runs: set[str] = field(default_factory=set)
    dirty_steps: set[tuple[str, int]] = field(default_factory=set)

    def step(self, run: str, step_id: str) -> dict[str, Any] | None:
        """The step row ``step_id`` of ``run`` (loaded), or None."""
        return next((s for s in self.steps.get(run, ()) if s["id"] == step_id), None)


_CURRENT: ContextVar[Fold | None] = ContextVar("workflow_run_fold", default=None)


async def _load(conn: asyncpg.Connection, fold: Fold, runs: Iterable[str]) -> None:
    wanted = [r for r in dict.fromkeys(runs) if r not in fold.runs]
    if not wanted:
        return
    for run in wanted:
        fold.runs[run], fold.steps[run] = None, []
    for row in await conn.fetch(_load_sql(fold.target.schema), wanted):
        run = row["id"]
        fold.runs[run] = {c: row[c] for c in RUN_COLUMNS}
        fold.steps[run] = [
            {"run": run, "position": position, "id": step_id, "kind": kind, "status": status,
             "attempts": attempts, "output": orjson.loads(output) if output is not None else None,
             "error": error, "started_at": started_at, "finished_at": finished_at}
            for position, step_id, kind, status, attempts, output, error, started_at, finished_at
            in row["steps"]
        ]  # fmt: skip


def _run_of(ev: CloudEvent) -> str | None:
    subject = ev.subject or ""
    return subject[5:] if subject.startswith("runs/") else None


async def begin(
    conn: asyncpg.Connection, target: Target, events: Iterable[CloudEvent | None]
) -> None:
    """Start the fold of one tenant's events: read every run they name, in two queries."""
    runs = [r for ev in events if ev is not None and ev.type in RUN_TYPES and (r := _run_of(ev))]
    if not runs:
        _CURRENT.set(None)
        return
    fold = Fold(target)
    await _load(conn, fold, runs)
    _CURRENT.set(fold)


async def _open_run(conn: asyncpg.Connection, target: Target, run: str) -> tuple[Fold, bool]:
    """The fold holding ``run`` (loaded), and whether the caller must :func:`flush` it
    itself (no batch fold of this target is open)."""
    fold = _CURRENT.get()
    alone = fold is None or fold.target != target
    if alone:
        fold = Fold(target)
    assert fold is not None
    await _load(conn, fold, [run])
    return fold, alone


async def fold_run(
    conn: asyncpg.Connection, target: Target, run: str, change: Callable[[Fold], bool]
) -> bool:
    """Apply ``change`` to the fold holding ``run`` (the batch's, or one written at once
    when no batch of this target is open); ``change``'s answer (whether it applied)."""
    fold, alone = await _open_run(conn, target, run)
    applied = change(fold)
    if alone:
        await flush(conn, target, fold)
    return applied


async def flush(conn: asyncpg.Connection, target: Target, fold: Fold | None = None) -> None:
    """Write the rows the fold changed (one statement) and close it."""
    if fold is None:
        fold = _CURRENT.get()
        _CURRENT.set(None)
        if fold is None or fold.target != target:
            return
    runs = [r for r in (fold.runs[r] for r in sorted(fold.dirty_runs)) if r is not None]
    steps = [fold.steps[run][pos] for run, pos in sorted(fold.dirty_steps)]
    if runs or steps:
        await conn.execute(
            _flush_sql(target.schema),
            *([r[c] for r in runs] for c in RUN_COLUMNS),
            *([st[c] for st in steps] for c in STEP_COLUMNS),
        )
    fold.dirty_runs.clear()
    fold.dirty_steps.clear()


def start(fold: Fold, row: dict[str, Any], steps: list[tuple[str, str]]) -> bool:
    """Fold ``workflow.run.started``; False when the run exists already."""
    run = row["id"]
    if fold.runs.get(run) is not None:
        return False
    fold.runs[run] = {**row, "status": "running", "reason": None, "finished_at": None}
    fold.steps[run] = [
        {"run": run, "position": i, "id": step_id, "kind": kind, "status": "pending",
         "attempts": 0, "output": None, "error": None, "started_at": None, "finished_at": None}
        for i, (step_id, kind) in enumerate(steps)
    ]  # fmt: skip
    fold.dirty_runs.add(run)
    fold.dirty_steps.update((run, i) for i in range(len(steps)))
    return True


def change_step(
    fold: Fold, run: str, step_id: str, changes: dict[str, Any], run_status: str | None
) -> bool:
    """Fold a step event (and the run status it implies); False when there is no such step."""
    step = fold.step(run, step_id)
    if step is None:
        return False
    step.update(changes)
    fold.dirty_steps.add((run, int(step["position"])))
    row = fold.runs.get(run)
    if run_status is not None and row is not None and row["finished_at"] is None:
        row["status"] = run_status
        fold.dirty_runs.add(run)
    return True


def finish(fold: Fold, run: str, status: str, reason: str | None, at: datetime) -> bool:
    """Fold a run's end; False when the run is unknown or has ended already."""
    row = fold.runs.get(run)
    if row is None or row["finished_at"] is not None:
        return False
    row.update(status=status, reason=reason, finished_at=at)
    fold.dirty_runs.add(run)
    return True

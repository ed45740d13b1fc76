"""A run's state and its transitions, as pure functions.

Every transition takes the run's state and what happened (a start, an
effect's result, a timer, a signal) and returns the new state with the events
that log it (:class:`Emit`, ids from :mod:`.ids`). The processor persists the
state and those events in one transaction and publishes the events before it
does anything else for the run; a replay folds the same events into the read
model and never calls these functions.

Statuses. Run: ``running``, ``waiting`` (a delay or an approval), ``succeeded``,
``failed``, ``cancelled``. Step: ``pending``, ``running``, ``waiting``,
``succeeded``, ``failed``, ``skipped``, ``cancelled``. A step whose ``if`` does
not hold is skipped; a failed step fails the run and the steps after it are
skipped; a cancelled run cancels its current step and skips the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, Literal

from eventfold.workflows import ids
from eventfold.workflows.conditions import holds
from eventfold.workflows.context import render

#: A chain of runs starting runs stops here: the run that would be deeper fails.
MAX_DEPTH = 8
#: Kinds whose step performs an effect (retried per ``retry``).
EFFECT_KINDS = ("http", "record", "email")
FINISHED = ("succeeded", "failed", "cancelled")
#: Keys of a step definition that are not rendered from the context.
_CONTROL = ("id", "kind", "if", "retry")

Signal = Literal["approve", "reject", "cancel"]


@dataclass(slots=True)
class StepState:
    """One step's progress."""

    id: str
    kind: str
    status: str = "pending"
    attempts: int = 0
    output: Any = None
    error: str | None = None
    started_at: float | None = None
    finished_at: float | None = None


@dataclass(slots=True)
class RunState:
    """Everything the processor needs to go on with a run after a restart."""

    id: str
    tenant: str
    workflow: str
    version: int
    depth: int
    trigger_event: str
    steps: list[dict[str, Any]]
    context: dict[str, Any]
    progress: list[StepState]
    status: str = "running"
    index: int = 0
    #: When the processor must act next (epoch seconds); None: on a signal only.
    wake_at: float | None = None
    started_at: float = 0.0
    finished_at: float | None = None
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The state as stored (JSON). Shallow: the context is shared, not copied (it
        is serialised as it is; ``dataclasses.asdict`` deep-copied it on every step)."""
        doc = {name: getattr(self, name) for name in _RUN_FIELDS}
        doc["progress"] = [{n: getattr(p, n) for n in _STEP_FIELDS} for p in self.progress]
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> RunState:
        """The state stored by :meth:`to_json`."""
        progress = [StepState(**p) for p in doc["progress"]]
        return cls(**{**doc, "progress": progress})

    @property
    def finished(self) -> bool:
        """Whether the run has ended (nothing more will happen to it)."""
        return self.status in FINISHED

    @property
    def current(self) -> StepState | None:
        """The step the run is at, None once past the last."""
        return self.progress[self.index] if self.index < len(self.progress) else None


_RUN_FIELDS = tuple(f.name for f in fields(RunState))
_STEP_FIELDS = tuple(f.name for f in fields(StepState))


@dataclass(frozen=True, slots=True)
class Emit:
    """An event a transition logs (type, fixed id, data); subject ``runs/<run id>``."""

    type: str
    id: str
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Effect:
    """An effect to perform now: the step's definition rendered from the context."""

    run: str
    step: str
    kind: str
    attempt: int
    spec: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Result:
    """What an effect came to: ``ok`` with ``output``, or an error, retriable or not."""

    ok: bool
    output: Any = None
    error: str | None = None
    retriable: bool = False


@dataclass(slots=True)
class Transition:
    """The new state and the events logging the change."""

    state: RunState
    events: list[Emit] = field(default_factory=list)


def iso(at: float) -> str:
    """An epoch time as RFC 3339 UTC."""
    return datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")


def start(
    *,
    run: str,
    tenant: str,
    workflow: str,
    version: int,
    steps: list[dict[str, Any]],
    trigger: dict[str, Any],
    record: dict[str, Any] | None,
    depth: int,
    now: float,
) -> Transition:
    """A new run of ``workflow`` (its definition's ``steps``) started by ``trigger``."""
    state = RunState(
        id=run,
        tenant=tenant,
        workflow=workflow,
        version=version,
        depth=depth,
        trigger_event=str(trigger.get("id", "")),
        steps=steps,
        context={"trigger": trigger, "record": record, "steps": {}},
        progress=[StepState(id=s["id"], kind=s["kind"]) for s in steps],
        started_at=now,
        wake_at=now,
    )
    t = Transition(state)
    t.events.append(
        Emit(
            "workflow.run.started",
            ids.event_id(run, "started"),
            {
                "run": run,
                "workflow": workflow,
                "workflow_version": version,
                "trigger_event": state.trigger_event,
                "depth": depth,
                "steps": [{"id": s["id"], "kind": s["kind"]} for s in steps],
                "at": iso(now),
            },
        )
    )
    if depth > MAX_DEPTH:
        reason = (
            f"loop protection: this run would be number {depth} of a chain of runs"
            f" starting runs, more than {MAX_DEPTH}"
        )
        return _finish(t, "failed", now, reason)
    return _advance(t, now)


def next_effect(state: RunState, now: float) -> Effect | None:
    """The effect to perform now, if the run is at an effect step whose time has come."""
    step = state.current
    if (
        state.status != "running"
        or step is None
        or step.status != "running"
        or step.kind not in EFFECT_KINDS
        or (state.wake_at is not None and state.wake_at > now)
    ):
        return None
    spec = state.steps[state.index]
    rendered = {k: render(v, state.context) for k, v in spec.items() if k not in _CONTROL}
    return Effect(state.id, step.id, step.kind, step.attempts, rendered)


def timer_due(state: RunState, now: float) -> bool:
    """Whether a delay has passed or an approval timed out."""
    return state.status == "waiting" and state.wake_at is not None and state.wake_at <= now


def on_result(state: RunState, result: Result, now: float) -> Transition:
    """Record an effect's result: the step succeeds, is retried later, or fails the run."""
    t = Transition(state)
    step = state.current
    assert step is not None
    assert step.status == "running"
    if result.ok:
        return _succeed(t, step, result.output, now)
    retry = state.steps[state.index].get("retry") or {}
    max_attempts = int(retry.get("max_attempts", 3))
    if result.retriable and step.attempts < max_attempts:
        pause = float(retry.get("backoff_seconds", 1.0)) * 2 ** (step.attempts - 1)
        state.wake_at = now + pause
        step.error = result.error
        t.events.append(
            Emit(
                "workflow.step.retrying",
                ids.event_id(state.id, step.id, "retrying", step.attempts),
                {
                    "run": state.id,
                    "step": step.id,
                    "attempts": step.attempts,
                    "error": result.error or "",
                    "retry_at": iso(state.wake_at),
                    "at": iso(now),
                },
            )
        )
        step.attempts += 1
        return t
    return _fail(t, step, result.error or "failed", now)


def on_timer(state: RunState, now: float) -> Transition:
    """A delay has passed (the step succeeds) or an approval timed out (it fails)."""
    t = Transition(state)
    step = state.current
    assert step is not None
    assert step.status == "waiting"
    if step.kind == "delay":
        return _succeed(t, step, None, now)
    return _fail(t, step, "approval timed out", now)


def on_signal(
    state: RunState, signal: Signal, step_id: str | None, comment: str | None, now: float
) -> Transition | None:
    """Apply approve / reject / cancel; None when it does not apply (any more)."""
    if state.finished:
        return None
    t = Transition(state)
    if signal == "cancel":
        return _finish(t, "cancelled", now, comment or "cancelled")
    step = state.current
    if step is None or step.id != step_id or step.kind != "approval" or step.status != "waiting":
        return None
    if signal == "approve":
        return _succeed(t, step, {"approved": True, "comment": comment}, now)
    return _fail(t, step, f"rejected{': ' + comment if comment else ''}", now)


def _succeed(t: Transition, step: StepState, output: Any, now: float) -> Transition:
    state = t.state
    step.status, step.output, step.error, step.finished_at = "succeeded", output, None, now
    state.context["steps"][step.id] = {"output": output}
    t.events.append(
        Emit(
            "workflow.step.succeeded",
            ids.event_id(state.id, step.id, "succeeded"),
            {
                "run": state.id,
                "step": step.id,
                "attempts": step.attempts,
                "output": output,
                "at": iso(now),
            },
        )
    )
    state.index += 1
    return _advance(t, now)


def _fail(t: Transition, step: StepState, error: str, now: float) -> Transition:
    step.status, step.error, step.finished_at = "failed", error, now
    t.events.append(
        Emit(
            "workflow.step.failed",
            ids.event_id(t.state.id, step.id, "failed"),
            {
                "run": t.state.id,
                "step": step.id,
                "attempts": step.attempts,
                "error": error,
                "at": iso(now),
            },
        )
    )
    return _finish(t, "failed", now, f"step {step.id} failed: {error}")


def _advance(t: Transition, now: float) -> Transition:
    """Start the next step whose ``if`` holds (skipping the others), or end the run."""
    state = t.state
    while state.index < len(state.steps):
        spec, step = state.steps[state.index], state.progress[state.index]
        condition = spec.get("if")
        if condition and not holds(condition, state.context, data=None):
            step.status, step.finished_at = "skipped", now
            t.events.append(_skipped(state.id, step.id, "its if condition does not hold", now))
            state.index += 1
            continue
        step.started_at, step.attempts = now, 1
        if step.kind in EFFECT_KINDS:
            step.status, state.status, state.wake_at = "running", "running", now
            t.events.append(
                Emit(
                    "workflow.step.started",
                    ids.event_id(state.id, step.id, "started"),
                    {"run": state.id, "step": step.id, "kind": step.kind, "at": iso(now)},
                )
            )
            return t
        step.status, state.status = "waiting", "waiting"
        if step.kind == "delay":
            state.wake_at = now + float(spec.get("seconds", 0))
        else:
            timeout = spec.get("timeout_seconds")
            state.wake_at = now + float(timeout) if timeout else None
        t.events.append(
            Emit(
                "workflow.step.waiting",
                ids.event_id(state.id, step.id, "waiting"),
                {
                    "run": state.id,
                    "step": step.id,
                    "kind": step.kind,
                    "until": iso(state.wake_at) if state.wake_at is not None else None,
                    "at": iso(now),
                },
            )
        )
        return t
    return _finish(t, "succeeded", now, None)


def _skipped(run: str, step: str, reason: str, now: float) -> Emit:
    return Emit(
        "workflow.step.skipped",
        ids.event_id(run, step, "skipped"),
        {"run": run, "step": step, "reason": reason, "at": iso(now)},
    )


def _finish(t: Transition, status: str, now: float, reason: str | None) -> Transition:
    state = t.state
    for step in state.progress:
        if status == "cancelled" and step.status in ("running", "waiting"):
            step.status, step.finished_at = "cancelled", now
            t.events.append(
                Emit(
                    "workflow.step.cancelled",
                    ids.event_id(state.id, step.id, "cancelled"),
                    {"run": state.id, "step": step.id, "at": iso(now)},
                )
            )
        elif step.status == "pending":
            step.status, step.finished_at = "skipped", now
            t.events.append(_skipped(state.id, step.id, f"the run {status}", now))
    state.status, state.finished_at, state.reason, state.wake_at = status, now, reason, None
    t.events.append(
        Emit(
            f"workflow.run.{status}",
            ids.event_id(state.id, status),
            {"run": state.id, "reason": reason, "at": iso(now)},
        )
    )
    return t

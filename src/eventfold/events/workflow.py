"""Data models of workflow events.

Definitions (``subject`` = ``workflows/{id}``): ``workflow.created`` and
``workflow.updated`` carry the whole definition and its version,
``workflow.deleted`` the id. Runs (``subject`` = ``runs/{run id}``, so one
run's events stay in order on one partition): the processor logs every change
of a run or a step (``workflow.run.*``, ``workflow.step.*``); the gateway logs
the commands a person gives a run (``workflow.run.cancel_requested``,
``workflow.step.approved`` / ``rejected``), which the processor then acts on.
All are written by the gateway or the processor alone (``publishable=False``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from eventfold.workflows.definition import STEP_ID_PATTERN, WORKFLOW_ID_PATTERN, Definition
from eventfold.workflows.ids import RUN_ID_PATTERN


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WorkflowSaved(_Event):
    """``workflow.created`` / ``workflow.updated``: a definition and its version."""

    version: int = Field(ge=1)
    definition: Definition


class WorkflowDeleted(_Event):
    """``workflow.deleted``: no run starts any more; running runs finish."""

    id: str = Field(pattern=WORKFLOW_ID_PATTERN)


class _RunEvent(_Event):
    run: str = Field(pattern=RUN_ID_PATTERN)
    at: datetime


class StepRef(_Event):
    """A step as a run lists it."""

    id: str = Field(pattern=STEP_ID_PATTERN)
    kind: str


class RunStarted(_RunEvent):
    """``workflow.run.started``."""

    workflow: str = Field(pattern=WORKFLOW_ID_PATTERN)
    workflow_version: int = Field(ge=1)
    trigger_event: str
    depth: int = Field(ge=1)
    steps: list[StepRef]


class RunFinished(_RunEvent):
    """``workflow.run.succeeded`` / ``failed`` / ``cancelled``, with the reason."""

    reason: str | None = None


class _StepEvent(_RunEvent):
    step: str = Field(pattern=STEP_ID_PATTERN)


class StepStarted(_StepEvent):
    """``workflow.step.started``: an effect step runs (its first attempt)."""

    kind: str


class StepWaiting(_StepEvent):
    """``workflow.step.waiting``: a delay until ``until``, or an approval (timeout ``until``)."""

    kind: str
    until: datetime | None = None


class StepRetrying(_StepEvent):
    """``workflow.step.retrying``: attempt ``attempts`` failed; the next at ``retry_at``."""

    attempts: int = Field(ge=1)
    error: str
    retry_at: datetime


class StepSucceeded(_StepEvent):
    """``workflow.step.succeeded`` with the step's output."""

    attempts: int = Field(ge=0)
    output: Any = None


class StepFailed(_StepEvent):
    """``workflow.step.failed``."""

    attempts: int = Field(ge=0)
    error: str


class StepSkipped(_StepEvent):
    """``workflow.step.skipped``: its ``if`` did not hold, or the run ended before it."""

    reason: str


class StepCancelled(_StepEvent):
    """``workflow.step.cancelled``: the run was cancelled while at this step."""


class RunCommand(_Event):
    """``workflow.run.cancel_requested`` / ``workflow.step.approved`` / ``rejected``."""

    run: str = Field(pattern=RUN_ID_PATTERN)
    step: str | None = Field(default=None, pattern=STEP_ID_PATTERN)
    comment: str | None = Field(default=None, max_length=2000)
    by: str | None = Field(default=None, max_length=300)


#: Commands by event type, as the processor acts on them.
COMMANDS: dict[str, Literal["approve", "reject", "cancel"]] = {
    "workflow.run.cancel_requested": "cancel",
    "workflow.step.approved": "approve",
    "workflow.step.rejected": "reject",
}


#: Every workflow type: its data model, subject rule and description (the registry's entries).
WORKFLOW_TYPES: dict[str, tuple[type[BaseModel], str, str]] = {
    "workflow.created": (WorkflowSaved, "workflow", "A workflow was defined (version 1)."),
    "workflow.updated": (WorkflowSaved, "workflow", "A workflow's definition was replaced."),
    "workflow.deleted": (WorkflowDeleted, "workflow", "A workflow was deleted."),
    "workflow.run.started": (RunStarted, "run", "A run started; its steps are pending."),
    "workflow.run.succeeded": (RunFinished, "run", "Every step of a run succeeded or was skipped."),
    "workflow.run.failed": (RunFinished, "run", "A run failed; reason says why."),
    "workflow.run.cancelled": (RunFinished, "run", "A run was cancelled."),
    "workflow.run.cancel_requested": (RunCommand, "run", "Someone asked to cancel a run."),
    "workflow.step.started": (StepStarted, "run", "An effect step started its first attempt."),
    "workflow.step.waiting": (StepWaiting, "run", "A step waits for a timer or an approval."),
    "workflow.step.retrying": (StepRetrying, "run", "An attempt failed; another follows later."),
    "workflow.step.succeeded": (StepSucceeded, "run", "A step succeeded, with its output."),
    "workflow.step.failed": (StepFailed, "run", "A step failed; its run fails."),
    "workflow.step.skipped": (StepSkipped, "run", "A step was skipped."),
    "workflow.step.cancelled": (StepCancelled, "run", "A step was cancelled with its run."),
    "workflow.step.approved": (RunCommand, "run", "Someone approved a waiting approval step."),
    "workflow.step.rejected": (RunCommand, "run", "Someone rejected a waiting approval step."),
}

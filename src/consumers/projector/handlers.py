"""Projections of event types beyond ``tenant.created`` and ``record.*``.

A module owning an event type (API keys, webhooks, integrations, …) registers
an async handler for it with :func:`handles`; the batch calls it inside the
batch transaction, so its writes commit atomically with the checkpoints.
A handler returns the :class:`~consumers.projector.fold.Outcome` recorded in
the tenant's event history. Add the module's import at the bottom of this file.

A handler that keeps state in a platform table (schema ``eventfold``) names
it through :func:`consumers.projector.platform.table` and registers it in
:data:`consumers.projector.platform.TABLES`, so a rebuild folds into a copy
of it and gives every event the outcome it got live.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from datetime import datetime

import asyncpg

from consumers.projector.fold import Outcome
from eventfold.envelope import CloudEvent

EventHandler = Callable[[asyncpg.Connection, str, CloudEvent, datetime], Awaitable[Outcome]]

#: The topic the batch being applied comes from (set by the batch): a handler
#: may record it, e.g. so the sync runner serves only integrations of its log.
PROJECTED_TOPIC: ContextVar[str] = ContextVar("projected_topic", default="")

#: Event type → its projection handler.
HANDLERS: dict[str, EventHandler] = {}


def handles(*event_types: str) -> Callable[[EventHandler], EventHandler]:
    """Register the decorated coroutine as the projection of ``event_types``."""

    def register(handler: EventHandler) -> EventHandler:
        for name in event_types:
            if name in HANDLERS:
                raise ValueError(f"{name} has a handler already")
            HANDLERS[name] = handler
        return handler

    return register


# Handler modules (each registers itself on import):
from consumers.projector import apikeys, integrations, webhooks, workflows  # noqa: E402, F401

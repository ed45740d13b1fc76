"""Projections of event types beyond ``tenant.created`` and ``record.*``: one registry.

A module owning an event type (the tenant lifecycle, API keys, webhooks,
integrations, tenant event types, workflows) defines an async handler for it;
:data:`HANDLERS` below maps each type to its handler, built here, in one
place (no registration by import side effect). The batch calls a handler
inside the batch transaction, so its writes commit atomically with the checkpoints, and records the
:class:`~eventfold.fold.Outcome` it returns in the tenant's event history. To
add a type: its handler in a module of this package, and its line below.

A handler that keeps state in a platform table (schema ``eventfold``) names
it through :func:`eventfold.projection.platform.table` and registers it in
:data:`eventfold.projection.platform.TABLES`, so a rebuild folds into a copy
of it and gives every event the outcome it got live.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime

import asyncpg

from eventfold.envelope import CloudEvent
from eventfold.events.workflow import COMMANDS
from eventfold.fold import Outcome
from eventfold.projection import apikeys, eventtypes, integrations, tenants, webhooks, workflows
from eventfold.readmodel import Target

EventHandler = Callable[[asyncpg.Connection, Target, CloudEvent, datetime], Awaitable[Outcome]]

#: Event type → its projection handler.
HANDLERS: dict[str, EventHandler] = {
    "tenant.updated": tenants.tenant_updated,
    "tenant.suspended": tenants.tenant_suspended,
    "tenant.resumed": tenants.tenant_resumed,
    "tenant.deleted": tenants.tenant_deleted,
    "apikey.created": apikeys.key_created,
    "apikey.revoked": apikeys.key_revoked,
    "webhook.created": webhooks.webhook_created,
    "webhook.deleted": webhooks.webhook_deleted,
    "integration.created": integrations.integration_created,
    "integration.updated": integrations.integration_updated,
    "integration.deleted": integrations.integration_deleted,
    "eventtype.registered": eventtypes.version_added,
    "eventtype.version_added": eventtypes.version_added,
    "workflow.created": workflows.workflow_saved,
    "workflow.updated": workflows.workflow_saved,
    "workflow.deleted": workflows.workflow_deleted,
    "workflow.run.started": workflows.run_started,
    **dict.fromkeys(workflows.STEP_TYPES, workflows.step_changed),
    "workflow.run.succeeded": workflows.run_finished,
    "workflow.run.failed": workflows.run_finished,
    "workflow.run.cancelled": workflows.run_finished,
    **dict.fromkeys(COMMANDS, workflows.run_command),
}

"""The CLI's audit trail: a ``tenant.operator_action`` event per tenant an operator acted on.

``eventfold replay``, ``verify`` and ``dlq redrive`` change (or compare) a
tenant's projection without going through the gateway, so nothing in the log
would say who did it. After such a command, one event per tenant it touched
records the action and its figures, with the ``actor`` ``operator:<name>``: the
``--operator`` given to ``eventfold``, or the OS user. It lands in the tenant's
history like any other event (``GET …/events?actor=operator:<name>``).
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from eventfold import actors
from eventfold.envelope import CloudEvent
from eventfold.errors import RetriableError
from eventfold.events.tenant import OperatorAction
from eventfold.metrics import Metrics
from eventfold.settings import Settings

SOURCE = "eventfold/cli"


def events(
    action: str, details: Mapping[str, dict[str, Any]], *, operator: str
) -> list[CloudEvent]:
    """One ``tenant.operator_action`` per tenant of ``details`` (tenant → its figures)."""
    now = datetime.now(UTC)
    return [
        CloudEvent(
            specversion="1.0",
            id=str(uuid.uuid4()),
            source=SOURCE,
            type="tenant.operator_action",
            subject=tenant,
            time=now,
            datacontenttype="application/json",
            data=OperatorAction.model_validate({"action": action, "details": figures}).model_dump(
                mode="json"
            ),
            tenant=tenant,
            actor=operator,
        )
        for tenant, figures in details.items()
    ]


async def record(
    settings: Settings, action: str, details: Mapping[str, dict[str, Any]], *, operator: str
) -> None:
    """Publish the audit events of ``action`` (acknowledged by Kafka before this returns).

    A log that cannot be reached fails the command's audit, not the command: the
    action is done already, so it is said on stderr and the exit status stays.
    """
    if not details:
        return
    # deferred: every CLI process builds the parser (which imports this module); only
    # the commands that audit need Kafka's producer
    from consumers.runtime.kafka import start_publisher

    stop = asyncio.Event()
    try:
        publisher = await asyncio.wait_for(
            start_publisher(settings, Metrics(), stop, client_id="eventfold-cli-audit"), 30
        )
    except (TimeoutError, OSError) as exc:
        print(f"eventfold: the action was not audited: {exc!r}", file=sys.stderr)
        return
    try:
        for event in events(action, details, operator=operator):
            await publisher.publish(str(event.tenant), [event], actor=operator)
    except RetriableError as exc:
        print(f"eventfold: the action was not audited: {exc}", file=sys.stderr)
    finally:
        await publisher.stop()


def operator_of(name: str | None) -> str:
    """The ``actor`` of a CLI action: ``operator:<--operator>``, else the OS user."""
    return actors.operator(name)

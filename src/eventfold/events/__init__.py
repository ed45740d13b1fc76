"""The schema registry: every event type Eventfold knows, its data model and version.

Each type's JSON Schema is exported to ``schemas/<type>/v<version>.json``
(``eventfold schemas export``); a test keeps those files in step with the
models here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from eventfold.envelope import CloudEvent, EnvelopeInvalid, pydantic_errors
from eventfold.errors import FieldError
from eventfold.events.apikey import ApiKeyCreated, ApiKeyRevoked
from eventfold.events.eventtype import EventTypeVersion
from eventfold.events.integration import (
    IntegrationCreated,
    IntegrationDeleted,
    IntegrationUpdated,
)
from eventfold.events.record import RecordDeleted, RecordErased, RecordPatched, RecordUpserted
from eventfold.events.tenant import (
    OperatorAction,
    TenantCreated,
    TenantDeleted,
    TenantResumed,
    TenantSuspended,
    TenantUpdated,
)
from eventfold.events.webhook import WebhookCreated, WebhookDeleted
from eventfold.events.workflow import WORKFLOW_TYPES
from eventfold.ids import is_valid

SubjectRule = Literal[
    "record", "tenant", "apikey", "integration", "webhook", "eventtype", "workflow", "run"
]


@dataclass(frozen=True, slots=True)
class EventType:
    """A registered event type: its name, schema version and data model."""

    name: str
    version: int
    model: type[BaseModel]
    subject: SubjectRule
    description: str
    #: False for types only the gateway itself may write (they grant credentials):
    #: the raw events route refuses them.
    publishable: bool = True

    def json_schema(self) -> dict[str, Any]:
        """The JSON Schema (2020-12) of this type's ``data``."""
        schema = self.model.model_json_schema()
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"https://eventfold.dev/schemas/{self.name}/v{self.version}.json"
        schema["title"] = self.name
        schema["description"] = self.description
        return schema


REGISTRY: dict[str, EventType] = {
    t.name: t
    for t in (
        EventType(
            "tenant.created", 1, TenantCreated, "tenant",
            "A tenant was created; its projection schema is made when this is applied.",
        ),
        EventType(
            "tenant.updated", 1, TenantUpdated, "tenant",
            "A platform admin changed the tenant's name or limits.",
            publishable=False,
        ),
        EventType(
            "tenant.suspended", 1, TenantSuspended, "tenant",
            "A platform admin suspended the tenant: writes refused, reads answer, webhooks,"
            " syncs and runs pause.",
            publishable=False,
        ),
        EventType(
            "tenant.resumed", 1, TenantResumed, "tenant",
            "A platform admin resumed a suspended tenant.",
            publishable=False,
        ),
        EventType(
            "tenant.deleted", 1, TenantDeleted, "tenant",
            "A platform admin deleted the tenant: every derived state goes, its credentials"
            " stop, its id is never reused.",
            publishable=False,
        ),
        EventType(
            "tenant.operator_action", 1, OperatorAction, "tenant",
            "An operator acted on the tenant from the CLI (a replay, a verify, a dead-letter"
            " redrive); the actor names the operator.",
            publishable=False,
        ),
        EventType(
            "record.upserted", 1, RecordUpserted, "record",
            "A record was created or replaced; data is the whole document.",
        ),
        EventType(
            "record.patched", 1, RecordPatched, "record",
            "A record was changed by an RFC 7396 merge patch; data is the patch.",
        ),
        EventType(
            "record.deleted", 1, RecordDeleted, "record",
            "A record was deleted; data is absent or an empty object.",
        ),
        EventType(
            "record.erased", 1, RecordErased, "record",
            "A tenant admin erased a personal record: its data keys are destroyed, so its"
            " events in the log and the archive are unreadable; the record reads 404 and its"
            " history keeps no data.",
            publishable=False,
        ),
        EventType(
            "apikey.created", 1, ApiKeyCreated, "apikey",
            "An API key was created; data carries the hash of its secret, never the key.",
            publishable=False,
        ),
        EventType(
            "apikey.revoked", 1, ApiKeyRevoked, "apikey",
            "An API key was revoked; requests with it are refused from now on.",
            publishable=False,
        ),
        EventType(
            "integration.created", 1, IntegrationCreated, "integration",
            "An integration was configured; its credentials are sealed (AES-GCM).",
            publishable=False,
        ),
        EventType(
            "integration.updated", 1, IntegrationUpdated, "integration",
            "An integration's configuration or pause flag changed; credentials sealed.",
            publishable=False,
        ),
        EventType(
            "integration.deleted", 1, IntegrationDeleted, "integration",
            "An integration was removed; it syncs no more.",
            publishable=False,
        ),
        EventType(
            "webhook.created", 1, WebhookCreated, "webhook",
            "A webhook endpoint was subscribed; data carries its secret sealed, never plain.",
            publishable=False,
        ),
        EventType(
            "webhook.deleted", 1, WebhookDeleted, "webhook",
            "A webhook endpoint was removed; nothing more is delivered to it.",
            publishable=False,
        ),
        EventType(
            "eventtype.registered", 1, EventTypeVersion, "eventtype",
            "A tenant registered an event type; data is its version 1 (schema, compatibility,"
            " projection).",
            publishable=False,
        ),
        EventType(
            "eventtype.version_added", 1, EventTypeVersion, "eventtype",
            "A tenant added a version to an event type, checked compatible with the one before.",
            publishable=False,
        ),
    )
}  # fmt: skip
REGISTRY.update(
    (name, EventType(name, 1, model, subject, description, publishable=False))  # type: ignore[arg-type]
    for name, (model, subject, description) in WORKFLOW_TYPES.items()
)


def lookup(type_name: str) -> EventType | None:
    """The registered type called ``type_name``, if any."""
    return REGISTRY.get(type_name)


def validate_data(event: CloudEvent, *, path: str = "") -> None:
    """Check ``event.data`` (and its subject) against its registered type.

    Raises :class:`EnvelopeInvalid` with JSON pointers under ``path``.
    """
    etype = REGISTRY.get(event.type)
    if etype is None:
        known = ", ".join(sorted(REGISTRY))
        raise EnvelopeInvalid([FieldError(f"{path}/type", f"unknown event type; known: {known}")])
    if not etype.publishable:
        raise EnvelopeInvalid(
            [FieldError(f"{path}/type", "this type is written by its own API routes only")]
        )
    errors: list[FieldError] = []
    if etype.subject == "record":
        collection, sep, record_id = (event.subject or "").partition("/")
        if not sep or not is_valid("collection", collection) or not is_valid("id", record_id):
            errors.append(
                FieldError(f"{path}/subject", "must be {collection}/{id} with valid identifiers")
            )
    try:
        etype.model.model_validate(event.data)
    except ValidationError as exc:
        errors.extend(pydantic_errors(exc, prefix=f"{path}/data"))
    if errors:
        raise EnvelopeInvalid(errors)

"""Request bodies of the write routes: the record body model, and the events body's schema.

The handlers validate events with :class:`~eventfold.envelope.CloudEvent` and their
``data`` with the type's model (:data:`eventfold.events.REGISTRY`);
:func:`events_body` says both in the OpenAPI document.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from eventfold import ids
from eventfold.envelope import CloudEvent
from eventfold.events import REGISTRY
from eventfold.openapi import REF, component_schema


class CreateRecordBody(BaseModel):
    """The body of ``POST …/records``: an optional record id and the document."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(
        default=None,
        pattern=f"^{ids.RECORD_ID.pattern}$",
        description="generated when absent (stable under the same Idempotency-Key)",
    )
    data: dict[str, Any] = Field(description="the whole document")


def events_body(schemas: dict[str, Any]) -> dict[str, Any]:
    """The schema of ``POST …/events``: one event or a batch, each a CloudEvent whose
    ``data`` fits its registered type (types only the gateway writes left out)."""
    envelope = component_schema(CloudEvent, "validation", schemas)
    variants = []
    for etype in REGISTRY.values():
        if not getattr(etype, "publishable", True):  # types only the gateway writes
            continue
        props: dict[str, Any] = {
            "type": {"const": etype.name},
            "data": component_schema(etype.model, "validation", schemas),
        }
        required = ["type"]
        if etype.subject == "record":
            record = f"{ids.COLLECTION.pattern}/{ids.RECORD_ID.pattern}"
            props["subject"] = {"type": "string", "pattern": f"^{record}$"}
            required.append("subject")
        variants.append(
            {
                "title": etype.name,
                "allOf": [envelope, {"type": "object", "properties": props, "required": required}],
                # CloudEvents extension attributes: lower-case names, scalar values.
                "propertyNames": {"pattern": "^[a-z0-9]{1,20}$"},
            }
        )
    one = {"oneOf": variants}
    schemas["EventIn"] = one
    ref = {"$ref": REF.format(model="EventIn")}
    return {"anyOf": [ref, {"type": "array", "items": ref, "minItems": 1, "maxItems": 1000}]}

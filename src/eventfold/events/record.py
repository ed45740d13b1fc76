"""Data models of the generic record events (``subject`` = ``{collection}/{id}``)."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import ConfigDict, RootModel, field_validator


class RecordUpserted(RootModel[dict[str, Any]]):
    """``record.upserted``: the whole document, a JSON object."""


class RecordPatched(RootModel[dict[str, Any]]):
    """``record.patched``: an RFC 7396 merge patch, a JSON object."""


def _no_properties(schema: dict[str, Any]) -> None:
    # The model refuses a non-empty object; the published schema must say so too.
    for branch in schema.get("anyOf", []):
        if branch.get("type") == "object":
            branch["maxProperties"] = 0


class _NoData(RootModel[dict[str, Any] | None]):
    """An event with no data (absent, null or an empty object)."""

    model_config = ConfigDict(json_schema_extra=_no_properties)
    #: The event type, for the error message.
    event_type: ClassVar[str]

    @field_validator("root")
    @classmethod
    def _empty(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value:
            raise ValueError(f"{cls.event_type} carries no data")
        return value


class RecordDeleted(_NoData):
    """``record.deleted``: no data (absent, null or an empty object)."""

    event_type = "record.deleted"


class RecordErased(_NoData):
    """``record.erased``: no data; the record's data keys are destroyed (crypto-shredding)."""

    event_type = "record.erased"

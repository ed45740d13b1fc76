"""Data models of the generic record events (``subject`` = ``{collection}/{id}``)."""

from __future__ import annotations

from typing import Any

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


class RecordDeleted(RootModel[dict[str, Any] | None]):
    """``record.deleted``: no data (absent, null or an empty object)."""

    model_config = ConfigDict(json_schema_extra=_no_properties)

    @field_validator("root")
    @classmethod
    def _empty(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value:
            raise ValueError("record.deleted carries no data")
        return value


class RecordErased(RootModel[dict[str, Any] | None]):
    """``record.erased``: no data; the record's data keys are destroyed (crypto-shredding)."""

    model_config = ConfigDict(json_schema_extra=_no_properties)

    @field_validator("root")
    @classmethod
    def _empty(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value:
            raise ValueError("record.erased carries no data")
        return value

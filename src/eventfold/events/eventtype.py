"""Data of tenant event type events (``subject`` = ``event-types/{type}``).

``eventtype.registered`` carries version 1 of a type, ``eventtype.version_added``
each later version. Written by the gateway alone (``publishable=False``), after
it checked the schema and its compatibility with the version before.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from eventfold.eventtypes.compat import Mode
from eventfold.eventtypes.names import MAX_TYPE_NAME, TYPE_NAME_RULE
from eventfold.eventtypes.projection import Projection
from eventfold.eventtypes.upcast import Steps


class EventTypeVersion(BaseModel):
    """One version of a tenant's event type: its schema and how it evolves and folds."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    type: str = Field(pattern=TYPE_NAME_RULE, max_length=MAX_TYPE_NAME)
    version: int = Field(ge=1, le=1_000_000)
    schema_: Any = Field(alias="schema", description="the JSON Schema (2020-12) of data")
    compatibility: Mode = Field(description="checked against the version before")
    projection: Projection | None = Field(
        default=None, description="how events of this version fold into a record"
    )
    upcast: Steps = Field(
        default_factory=list, description="how data of the version before is lifted to this one"
    )

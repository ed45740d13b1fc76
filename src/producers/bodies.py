"""Request bodies of the write routes that are not events themselves.

Kept apart from :mod:`producers.routes` so the OpenAPI document (built in every
API process) can describe them without importing the publisher and aiokafka.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from eventfold import ids


class CreateRecordBody(BaseModel):
    """The body of ``POST …/records``: an optional record id and the document."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(
        default=None,
        pattern=f"^{ids.RECORD_ID.pattern}$",
        description="generated when absent (stable under the same Idempotency-Key)",
    )
    data: dict[str, Any] = Field(description="the whole document")

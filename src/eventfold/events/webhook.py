"""Data models of webhook subscription events (``subject`` = ``webhooks/{id}``).

The log never holds a webhook secret in plain text: ``webhook.created`` carries
it sealed (AES-GCM, purpose :data:`SECRET_PURPOSE`, see eventfold.sealing).
Written by the gateway alone (``publishable=False``).
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field

#: A webhook id: 16 lowercase hex digits.
WEBHOOK_ID_PATTERN = r"^[0-9a-f]{16}$"
#: The sealing purpose of webhook secrets (a sealed value opens under this purpose only).
SECRET_PURPOSE = "webhook.secret"  # noqa: S105 - a label, not a secret
#: An event type filter: a type, or a pattern with ``*`` wildcards (``record.*``).
TYPE_FILTER_PATTERN = r"^[a-z*][a-z0-9_.*-]{0,127}$"


class WebhookCreated(BaseModel):
    """``webhook.created``: an endpoint, its type filters and its sealed secret."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=WEBHOOK_ID_PATTERN)
    url: str = Field(min_length=8, max_length=2048)
    types: list[str] = Field(min_length=1, max_length=50)
    secret_sealed: str = Field(min_length=1, max_length=1000)


class WebhookDeleted(BaseModel):
    """``webhook.deleted``: nothing more is delivered to the endpoint ``id``."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=WEBHOOK_ID_PATTERN)


def type_matches(filters: list[str], event_type: str) -> bool:
    """True when ``event_type`` matches one of ``filters`` (``*`` matches any run of characters)."""
    for pattern in filters:
        regex = ".*".join(re.escape(part) for part in pattern.split("*"))
        if re.fullmatch(regex, event_type):
            return True
    return False

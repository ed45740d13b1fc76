"""Webhook type filters and subscription bodies (pure)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from eventfold.events.webhook import type_matches
from eventfold.signing import new_secret
from producers.webhooks import CreateWebhookBody


@pytest.mark.parametrize(
    ("filters", "event_type", "expected"),
    [
        (["record.*"], "record.upserted", True),
        (["record.*"], "recordx.upserted", False),
        (["record.deleted"], "record.upserted", False),
        (["*"], "tenant.created", True),
        (["record.up*", "tenant.created"], "tenant.created", True),
        (["record.*"], "webhook.created", False),
        (["record.upserted"], "record.upserted.v2", False),
    ],
)
def test_type_matches(filters: list[str], event_type: str, expected: bool) -> None:
    assert type_matches(filters, event_type) is expected


def test_body_takes_a_whsec_secret_and_dedupes_types() -> None:
    secret = new_secret()
    body = CreateWebhookBody.model_validate(
        {"url": "https://example.com/h", "types": ["record.*", "record.*"], "secret": secret}
    )
    assert body.types == ["record.*"]
    assert body.secret == secret


@pytest.mark.parametrize(
    "doc",
    [
        {"url": "https://example.com/h", "types": []},
        {"url": "https://example.com/h", "types": ["Record.*"]},
        {"url": "https://example.com/h", "types": ["record.*"], "secret": "not-a-secret"},
        {"url": "https://example.com/h", "types": ["record.*"], "extra": 1},
    ],
)
def test_bad_bodies_are_refused(doc: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        CreateWebhookBody.model_validate(doc)

"""One page of third-party items → ``record.*`` events with deterministic ids.

The event id is a UUIDv5 of the integration id, the item id and a hash of the
item's content: a page fetched twice (a retry, a re-served page, a crash
before the cursor was stored, the same item in a webhook and a poll) yields
the same ids, which the publisher and the projector apply once.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from eventfold.envelope import CloudEvent
from eventfold.errors import PermanentError
from eventfold.ids import is_valid

#: Namespace of integration event ids (a fixed random UUID).
_NAMESPACE = uuid.UUID("6f1c8d8e-3a0b-4f55-9a57-1b0e0d6c2f41")
SOURCE_PREFIX = "eventfold/integrations/"


class BadPage(PermanentError):
    """The third party's page is not what the configuration describes."""


@dataclass(frozen=True, slots=True)
class PageSpec:
    """How items are read from a page (the integration's field names)."""

    integration_id: str
    collection: str
    items_field: str = "items"
    id_field: str = "id"
    deleted_field: str | None = None


def event_id(integration_id: str, item_id: str, kind: str, item: Any) -> str:
    """The deterministic event id of one item's state."""
    digest = hashlib.sha256(orjson.dumps(item, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return str(uuid.uuid5(_NAMESPACE, f"{integration_id}\n{item_id}\n{kind}\n{digest}"))


def page_items(body: Any, field: str) -> list[Any]:
    """The item list of a decoded page; :class:`BadPage` when it is not there."""
    if not isinstance(body, Mapping):
        raise BadPage("the page is not a JSON object")
    items = body.get(field)
    if not isinstance(items, list):
        raise BadPage(f"the page has no list {field!r}")
    return items


def page_events(tenant: str, spec: PageSpec, items: Sequence[Any]) -> list[CloudEvent]:
    """The events of a page's items, in page order; :class:`BadPage` on a bad item."""
    now = datetime.now(UTC)
    events: list[CloudEvent] = []
    for n, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise BadPage(f"item {n} is not an object")
        raw_id = item.get(spec.id_field)
        item_id = str(raw_id) if isinstance(raw_id, (str, int)) else ""
        if not is_valid("id", item_id):
            raise BadPage(f"item {n} has no valid {spec.id_field!r}")
        deleted = spec.deleted_field is not None and item.get(spec.deleted_field) is True
        kind = "record.deleted" if deleted else "record.upserted"
        events.append(
            CloudEvent(
                specversion="1.0",
                id=event_id(spec.integration_id, item_id, kind, item),
                source=SOURCE_PREFIX + spec.integration_id,
                type=kind,
                subject=f"{spec.collection}/{item_id}",
                time=now,
                datacontenttype="application/json",
                data={} if deleted else dict(item),
                tenant=tenant,
            )
        )
    return events


def seen_ids(events: Sequence[CloudEvent]) -> list[str]:
    """The record ids a page's events name (for reconciliation)."""
    return [(ev.subject or "").partition("/")[2] for ev in events]

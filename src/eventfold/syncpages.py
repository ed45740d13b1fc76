"""One page of third-party items → ``record.*`` events with deterministic ids.

Each integration remembers, per item, a change counter and the hash of what
it last published (``eventfold.integration_items``). An item whose content
is unchanged publishes nothing; a changed one gets the next counter, and its
event id is a UUIDv5 of integration id, item id, counter and content hash.
A page fetched twice (a retry, a re-served page, a crash before the cursor
and item states were stored, the same item in a webhook and a poll) yields
the same ids, which the publisher and the projector apply once; an item that
changes A → B → A yields three distinct events.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

from eventfold.envelope import CloudEvent
from eventfold.errors import PermanentError
from eventfold.ids import is_valid

#: Namespace of integration event ids (a fixed random UUID).
_NAMESPACE = uuid.UUID("6f1c8d8e-3a0b-4f55-9a57-1b0e0d6c2f41")
SOURCE_PREFIX = "eventfold/integrations/"
#: The stored hash of an item that is deleted.
DELETED = "deleted"

#: item id → (change counter, content hash) as last published.
ItemStates = dict[str, tuple[int, str]]


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


@dataclass(slots=True)
class PageChanges:
    """What a page changes: the events to publish and the item states to store after."""

    events: list[CloudEvent] = field(default_factory=list)
    states: ItemStates = field(default_factory=dict)
    seen: list[str] = field(default_factory=list)


def content_hash(item: Any) -> str:
    """SHA-256 of the item's canonical JSON (sorted keys)."""
    return hashlib.sha256(orjson.dumps(item, option=orjson.OPT_SORT_KEYS)).hexdigest()


def event_id(integration_id: str, item_id: str, seq: int, digest: str) -> str:
    """The deterministic event id of one item's ``seq``-th change to ``digest``."""
    return str(uuid.uuid5(_NAMESPACE, f"{integration_id}\n{item_id}\n{seq}\n{digest}"))


def page_items(body: Any, field_name: str) -> list[Any]:
    """The item list of a decoded page; :class:`BadPage` when it is not there."""
    if not isinstance(body, Mapping):
        raise BadPage("the page is not a JSON object")
    items = body.get(field_name)
    if not isinstance(items, list):
        raise BadPage(f"the page has no list {field_name!r}")
    return items


def item_ids(spec: PageSpec, items: Sequence[Any]) -> list[str]:
    """The valid ids of a page's items, in order; :class:`BadPage` on a bad item."""
    out: list[str] = []
    for n, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise BadPage(f"item {n} is not an object")
        raw_id = item.get(spec.id_field)
        item_id = str(raw_id) if isinstance(raw_id, (str, int)) else ""
        if not is_valid("id", item_id):
            raise BadPage(f"item {n} has no valid {spec.id_field!r}")
        out.append(item_id)
    return out


def record_event(
    tenant: str, spec: PageSpec, item_id: str, kind: str, data: Any, seq: int, digest: str
) -> CloudEvent:
    """One ``record.*`` event of the integration."""
    return CloudEvent(
        specversion="1.0",
        id=event_id(spec.integration_id, item_id, seq, digest),
        source=SOURCE_PREFIX + spec.integration_id,
        type=kind,
        subject=f"{spec.collection}/{item_id}",
        time=datetime.now(UTC),
        datacontenttype="application/json",
        data=data,
        tenant=tenant,
    )


def page_changes(
    tenant: str, spec: PageSpec, items: Sequence[Any], known: Mapping[str, tuple[int, str]]
) -> PageChanges:
    """The events of a page's changed items, in page order (later duplicates win)."""
    ids = item_ids(spec, items)
    out = PageChanges()
    current = dict(known)
    for item_id, item in zip(ids, items, strict=True):
        out.seen.append(item_id)
        deleted = spec.deleted_field is not None and item.get(spec.deleted_field) is True
        digest = DELETED if deleted else content_hash(item)
        seq, last = current.get(item_id, (0, DELETED))
        if digest == last:
            continue  # unchanged (or still deleted): nothing to publish
        seq += 1
        kind = "record.deleted" if deleted else "record.upserted"
        data: Any = {} if deleted else dict(item)
        out.events.append(record_event(tenant, spec, item_id, kind, data, seq, digest))
        current[item_id] = out.states[item_id] = (seq, digest)
    return out


async def load_states(
    conn: asyncpg.Connection, integration_id: str, ids: Iterable[str]
) -> ItemStates:
    """The stored states of ``ids`` (absent ids were never published)."""
    rows = await conn.fetch(
        "SELECT item_id, seq, hash FROM eventfold.integration_items"
        " WHERE integration = $1 AND item_id = ANY($2::text[])",
        integration_id,
        list(set(ids)),
    )
    return {r["item_id"]: (r["seq"], r["hash"]) for r in rows}


async def store_states(conn: asyncpg.Connection, integration_id: str, states: ItemStates) -> None:
    """Store published item states; a counter never goes back (a late writer loses)."""
    if not states:
        return
    await conn.executemany(
        "INSERT INTO eventfold.integration_items (integration, item_id, seq, hash)"
        " VALUES ($1, $2, $3, $4) ON CONFLICT (integration, item_id) DO UPDATE"
        " SET seq = EXCLUDED.seq, hash = EXCLUDED.hash"
        " WHERE eventfold.integration_items.seq < EXCLUDED.seq",
        [(integration_id, item_id, seq, digest) for item_id, (seq, digest) in states.items()],
    )

"""The live feed's format: a tenant's applied events on Redis pub/sub, framed for SSE.

The projector publishes each committed batch's applied events on the tenant's
channel (:func:`channel`), one message per tenant and batch: a JSON array of
items ``{"seq", "type", "data"}`` (:func:`payloads`); every API process
subscribes (``api/stream_hub.py``) and writes each item as an SSE frame whose
id is ``seq`` (the event's place in the tenant's history) and whose data is
the event as the history shows it (:func:`history_item`). Both sides follow
this module, so neither knows the other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson


def channel(tenant: str) -> str:
    """The Redis pub/sub channel carrying ``tenant``'s applied events."""
    return f"ef:{tenant}:stream"


def history_item(row: Mapping[str, Any]) -> dict[str, Any]:
    """A history row as clients see it: the envelope plus ``status`` (and ``reason``)."""
    envelope = row["envelope"]
    item: dict[str, Any] = dict(orjson.loads(envelope) if isinstance(envelope, str) else envelope)
    item["status"] = row["status"]
    if row["reason"] is not None:
        item["reason"] = row["reason"]
    return item


def message(seq: int, item: dict[str, Any]) -> bytes:
    """The pub/sub payload: the history ``seq`` (the SSE id), the type, and the SSE data."""
    return orjson.dumps({"seq": seq, "type": item.get("type"), "data": orjson.dumps(item).decode()})


#: Events per pub/sub message: bounded so a message stays far below the output
#: buffer limits Redis sets for pub/sub clients.
MESSAGE_EVENTS = 200


@dataclass(frozen=True, slots=True)
class LiveEvent:
    """An applied event as the batch wrote it to the tenant's history."""

    tenant: str
    seq: int
    type: str
    #: The envelope as JSON text, as stored in the history.
    envelope: str
    #: Whether the envelope has a ``status`` extension attribute of its own.
    has_status: bool = False


def live_message(event: LiveEvent) -> bytes:
    """:func:`message` of an applied event, spliced from its envelope text.

    The SSE data is the envelope plus ``"status": "applied"``: appending the
    member to the JSON text saves parsing and re-serialising every envelope.
    An envelope with a ``status`` extension of its own goes the long way (the
    history's status wins, as on replay).
    """
    text = event.envelope.rstrip()
    if text.endswith("}") and not event.has_status:
        body = text[:-1].rstrip()
        data = body + (',"status":"applied"}' if body != "{" else '"status":"applied"}')
        return orjson.dumps({"seq": event.seq, "type": event.type, "data": data})
    item = dict(orjson.loads(text))
    item["status"] = "applied"
    return message(event.seq, item)


def payloads(events: Sequence[LiveEvent]) -> list[tuple[str, bytes]]:
    """``(tenant, message)`` pairs: a JSON array of :func:`live_message` items per message.

    One message per tenant per batch (per :data:`MESSAGE_EVENTS`) instead of one
    per event: the Redis commands, not the bytes, were the publish's cost.
    Events keep their order within each tenant, the only order a stream sees.
    """
    by_tenant: dict[str, list[bytes]] = {}
    for event in events:
        by_tenant.setdefault(event.tenant, []).append(live_message(event))
    return [
        (tenant, b"[" + b",".join(items[i : i + MESSAGE_EVENTS]) + b"]")
        for tenant, items in by_tenant.items()
        for i in range(0, len(items), MESSAGE_EVENTS)
    ]

"""Record commands and tenant creation turned into events (no I/O here)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from eventfold.envelope import CloudEvent
from eventfold.errors import BadRequest
from eventfold.logs import correlation_id

SOURCE = "eventfold/api"
#: Namespace for ids derived from an Idempotency-Key (same key → same event).
_IDEMPOTENCY_NS = uuid.UUID("6f0c9a52-52a4-4c35-9f76-4bb0cb1f7a1e")


def check_idempotency_key(value: str | None) -> str | None:
    """``Idempotency-Key`` as sent (None when absent); 400 unless 1 to 255 characters of text.

    aiohttp hands header bytes that are not UTF-8 over as surrogate escapes, which
    no id can be derived from (they cannot be encoded again): refused here.
    """
    if value is None:
        return None
    if not 1 <= len(value) <= 255:
        raise BadRequest("Idempotency-Key must be 1 to 255 characters")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise BadRequest("Idempotency-Key must be UTF-8 text") from None
    return value


def command_event_id(tenant: str, idempotency_key: str | None, scope: str) -> str:
    """The event id of a command: derived from ``Idempotency-Key`` when given.

    ``scope`` (method and path) keeps one key reused on two different routes
    from colliding.
    """
    if check_idempotency_key(idempotency_key) is None:
        return str(uuid.uuid4())
    return str(uuid.uuid5(_IDEMPOTENCY_NS, f"{tenant}\x00{scope}\x00{idempotency_key}"))


def new_record_id(tenant: str, idempotency_key: str | None, collection: str) -> str:
    """A record id for ``POST …/records`` without one (stable under the same key)."""
    if check_idempotency_key(idempotency_key) is None:
        return str(uuid.uuid4())
    return str(
        uuid.uuid5(_IDEMPOTENCY_NS, f"{tenant}\x00record\x00{collection}\x00{idempotency_key}")
    )


def tenant_created_event_id(tenant: str) -> str:
    """A tenant's creation event id is fixed, so creating it twice is one effect."""
    return f"tenant.created:{tenant}"


def parse_if_match(value: str | None) -> int | None:
    """``If-Match: "<version>"`` as the expected version; 400 when malformed."""
    if value is None:
        return None
    tag = value.strip()
    if tag.startswith("W/"):
        raise BadRequest("If-Match needs a strong ETag")
    tag = tag.strip('"')
    # isascii: str.isdigit() also accepts "²" or "٣", which int() refuses or misreads.
    if not (tag.isascii() and tag.isdigit()) or len(tag) > 18:
        raise BadRequest('If-Match must be a record version ETag such as "3"')
    return int(tag)


def gateway_event(
    *, tenant: str, event_id: str, event_type: str, subject: str, data: Any
) -> CloudEvent:
    """An envelope the gateway writes itself (tenants, API keys, webhooks, integrations)."""
    return CloudEvent(
        specversion="1.0",
        id=event_id,
        source=SOURCE,
        type=event_type,
        subject=subject,
        time=datetime.now(UTC),
        datacontenttype="application/json",
        data=data,
        tenant=tenant,
        correlationid=correlation_id.get(),
    )


def record_event(
    *,
    tenant: str,
    event_id: str,
    event_type: str,
    collection: str,
    record_id: str,
    data: Any,
    expected_version: int | None,
    correlation: str | None,
    actor: str,
) -> CloudEvent:
    """A stamped ``record.*`` envelope for a command, written by ``actor``."""
    return CloudEvent(
        specversion="1.0",
        id=event_id,
        source=SOURCE,
        type=event_type,
        subject=f"{collection}/{record_id}",
        time=datetime.now(UTC),
        datacontenttype="application/json",
        data=data,
        tenant=tenant,
        correlationid=correlation,
        expectedversion=expected_version,
        actor=actor,
    )

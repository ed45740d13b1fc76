"""Events of tenant types in a published batch: validated per version, stamped for the fold."""

from __future__ import annotations

from datetime import datetime

from aiohttp import web

from eventfold.appkeys import EVENT_TYPES
from eventfold.envelope import CloudEvent, EnvelopeInvalid, stamp
from eventfold.errors import FieldError
from eventfold.eventtypes import ingest
from eventfold.web import after_a_write


async def admit_events(
    request: web.Request,
    tenant: str,
    pending: list[tuple[int, str]],
    events: list[CloudEvent],
    errors: list[FieldError],
    *,
    now: datetime,
    correlation: str | None,
    actor: str,
) -> None:
    """Validate the batch's events of tenant types (``events[i]`` at body pointer ``path``
    for each ``(i, path)`` of ``pending``, not stamped yet) and stamp them, for the
    fold too, in place (one copy of each event, as for the built-in types).

    Each type is looked up once per batch; a request carrying a consistency
    token (say, the registration's) reads the versions afresh after its wait.
    """
    fresh = after_a_write(request)
    wanted = {events[i].type for i, _ in pending}
    found = await request.app[EVENT_TYPES].histories(tenant, wanted, fresh=fresh)
    for i, path in pending:
        event = events[i]
        history = found.get(event.type)
        try:
            if history is None:
                raise ingest.unregistered(event.type, tenant, path)
            extra = ingest.admission(event, history, tenant, path=path)
            events[i] = stamp(
                event, tenant=tenant, now=now, correlation=correlation, extra=extra, actor=actor
            )
        except EnvelopeInvalid as exc:
            errors.extend(exc.errors)

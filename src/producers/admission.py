"""Events of tenant types in a published batch: validated per version, stamped for the fold."""

from __future__ import annotations

from aiohttp import web

from eventfold.envelope import CloudEvent, EnvelopeInvalid
from eventfold.errors import FieldError
from eventfold.eventtypes import ingest
from eventfold.eventtypes.definitions import EVENT_TYPES


async def admit_events(
    request: web.Request,
    tenant: str,
    pending: list[tuple[int, str]],
    events: list[CloudEvent],
    errors: list[FieldError],
) -> None:
    """Validate the batch's events of tenant types (``events[i]`` at body pointer ``path``
    for each ``(i, path)`` of ``pending``) and stamp them for the fold, in place.

    Each type is looked up once per batch; a request carrying a consistency
    token (say, the registration's) reads the versions afresh after its wait.
    """
    fresh = bool(request.headers.get("X-Consistency-Token"))
    wanted = {events[i].type for i, _ in pending}
    found = await request.app[EVENT_TYPES].histories(tenant, wanted, fresh=fresh)
    for i, path in pending:
        event = events[i]
        history = found.get(event.type)
        try:
            if history is None:
                raise ingest.unregistered(event.type, tenant, path)
            events[i] = ingest.admit(event, history, tenant, path=path)
        except EnvelopeInvalid as exc:
            errors.extend(exc.errors)

"""The read API's part of an aiohttp application: its routes."""

from __future__ import annotations

from aiohttp import web

from api import (
    analytics,
    apidocs,
    apikeys,
    collections,
    console,
    deadletters,
    events,
    hotkeys,
    integrations,
    processors,
    records,
    stream,
    tenants,
    webhooks,
)

_RECORDS = "/v1/tenants/{tenant}/collections/{collection}/records"


def setup(app: web.Application) -> None:
    """Register the read routes (the shared resources come from :mod:`eventfold.bootstrap`)."""
    tenants.setup(app)
    collections.setup(app)
    app.router.add_get(_RECORDS, records.list_records)
    app.router.add_get(_RECORDS + "/{id}", records.get_record)
    app.router.add_get("/v1/tenants/{tenant}/events", events.list_events)
    app.router.add_get("/v1/tenants/{tenant}/events/{id}", events.get_event)
    apikeys.setup(app)
    app.router.add_get("/v1/tenants/{tenant}/hot-keys", hotkeys.list_hot_keys)
    stream.setup(app)
    integrations.setup(app)
    webhooks.setup(app)
    analytics.setup(app)
    deadletters.setup(app)
    processors.setup(app)
    console.setup(app)
    apidocs.setup(app)

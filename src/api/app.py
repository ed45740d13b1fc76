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
    eventtypes,
    hotkeys,
    integrations,
    processors,
    records,
    stream,
    tenants,
    webhooks,
    workflows,
)


def setup(app: web.Application) -> None:
    """Register the read routes; each module adds its own and documents them (the shared
    resources are put under :mod:`eventfold.appkeys` by the bootstrap)."""
    tenants.setup(app)
    collections.setup(app)
    records.setup(app)
    events.setup(app)
    apikeys.setup(app)
    hotkeys.setup(app)
    stream.setup(app)
    integrations.setup(app)
    webhooks.setup(app)
    eventtypes.setup(app)
    workflows.setup(app)
    analytics.setup(app)
    deadletters.setup(app)
    processors.setup(app)
    console.setup(app)
    apidocs.setup(app)

"""The ingest gateway's part of an aiohttp application: the publisher and write routes."""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from eventfold.appkeys import (
    HEALTH,
    LOG_END,
    METRICS,
    PLACEMENT,
    PUBLISHER,
    REDIS,
    SEND_POLICY,
    SETTINGS,
    TENANTS,
)
from eventfold.backoff import Backoff, retrying
from eventfold.datakeys import Sealer
from eventfold.faults import is_retriable
from eventfold.kafka import INGEST_REQUEST_TIMEOUT_MS, make_producer
from eventfold.publisher import Publisher
from eventfold.sealing import keyring
from producers import (
    apikeys,
    erasure,
    eventtypes,
    integrations,
    routes,
    tenants,
    webhooks,
    workflows,
)

log = logging.getLogger("eventfold.ingest")


def setup(app: web.Application) -> None:
    """Register the write routes and the publisher's lifetime."""
    routes.setup_routes(app)
    tenants.setup(app)
    apikeys.setup(app)
    erasure.setup(app)
    eventtypes.setup(app)
    integrations.setup(app)
    webhooks.setup(app)
    workflows.setup(app)
    app.cleanup_ctx.append(_publisher_ctx)


async def _publisher_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    factory = functools.partial(
        make_producer, settings, request_timeout_ms=INGEST_REQUEST_TIMEOUT_MS
    )
    publisher = Publisher(
        factory,
        app.get(REDIS),
        app[METRICS],
        topic=settings.events_topic,
        policy=app.get(SEND_POLICY),
        on_acked=app[LOG_END].saw if LOG_END in app else None,
        sealer=Sealer(app[PLACEMENT], app[TENANTS], keyring(settings)),
    )
    await retrying(
        publisher.start,
        retry_on=is_retriable,
        backoff=Backoff(0.5, 5.0),
        what="kafka not reachable",
        attempts=30,
    )
    app[PUBLISHER] = publisher
    app[HEALTH].add("kafka", publisher.check, critical=True)
    try:
        yield
    finally:
        await publisher.stop()

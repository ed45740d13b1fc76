"""The ingest gateway's part of an aiohttp application: the publisher and write routes."""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections.abc import AsyncIterator

from aiohttp import web

from eventfold.faults import is_retriable
from eventfold.health import HEALTH
from eventfold.kafka import INGEST_REQUEST_TIMEOUT_MS, make_producer
from eventfold.web import LOG_END, METRICS, REDIS, SETTINGS
from producers import apikeys, integrations, routes, webhooks, workflows
from producers.publisher import Publisher, SendPolicy

log = logging.getLogger("eventfold.ingest")
#: Overrides the publisher's deadlines and retries (tests set it before startup).
SEND_POLICY = web.AppKey("send_policy", SendPolicy)


def setup(app: web.Application) -> None:
    """Register the write routes and the publisher's lifetime."""
    routes.setup_routes(app)
    apikeys.setup(app)
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
    )
    delay = 0.5
    for attempt in range(1, 31):
        try:
            await publisher.start()
            break
        except Exception as exc:
            if attempt == 30 or not is_retriable(exc):
                raise
            log.warning("kafka not reachable, retrying", extra={"error": repr(exc)})
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))  # noqa: S311
            delay = min(delay * 2, 5.0)
    app[routes.PUBLISHER] = publisher
    app[HEALTH].add("kafka", publisher.check, critical=True)
    try:
        yield
    finally:
        await publisher.stop()

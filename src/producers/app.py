"""The ingest gateway's part of an aiohttp application: the producer and write routes."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator

from aiohttp import web
from aiokafka.errors import KafkaError

from eventfold.health import HEALTH
from eventfold.kafka import make_producer
from eventfold.web import METRICS, REDIS, SETTINGS
from producers import routes
from producers.publisher import Publisher

log = logging.getLogger("eventfold.ingest")
PRODUCER_READY = web.AppKey("producer_ready", asyncio.Event)


def setup(app: web.Application) -> None:
    """Register the write routes and the Kafka producer's lifetime."""
    routes.setup_routes(app)
    app.cleanup_ctx.append(_producer_ctx)


async def _producer_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    producer = make_producer(settings)
    delay = 0.5
    for attempt in range(1, 31):
        try:
            await producer.start()
            break
        except KafkaError as exc:
            if attempt == 30:
                raise
            log.warning("kafka not reachable, retrying", extra={"error": repr(exc)})
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))  # noqa: S311
            delay = min(delay * 2, 5.0)
    app[routes.PUBLISHER] = Publisher(
        producer, app.get(REDIS), app[METRICS], topic=settings.events_topic
    )
    app[HEALTH].add("kafka", producer.client.fetch_all_metadata, critical=True)
    try:
        yield
    finally:
        await producer.stop()

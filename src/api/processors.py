"""``GET /v1/processors`` (platform-admin): how far behind the log each stream processor is.

Each processor keeps its position where its derived state is: the projector
and the archiver in ``eventfold.checkpoints`` (PostgreSQL, committed with
their state), the cache and analytics processors as their Kafka consumer
group's committed offsets. The lag of a partition is the log's end minus that
position (the log's start when there is none yet). The notifier and the sync
runner do not read the log by position; they report their ``backlog`` instead:
webhook deliveries pending, integrations due to sync; so does the workflows
processor: triggers and commands not yet taken, and runs due but not yet driven.

The Kafka clients are opened on the first call and kept (this route is polled
by the console); the read API's process starts without them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

import asyncpg
from aiohttp import web
from pydantic import BaseModel, Field

from eventfold.appkeys import PLACEMENT, SETTINGS
from eventfold.db import fetch_checkpoints
from eventfold.openapi import AUTH_ERRORS, Operation, Reply, register
from eventfold.placement import PER_SERVER_PROCESSORS, server_group
from eventfold.settings import HOME_SERVER, Settings
from eventfold.web import authenticate, json_response

_PATH = "/v1/processors"
#: One answer's Kafka round trips, together.
_KAFKA_SECONDS = 5.0

Store = Literal["postgres", "kafka"]


@dataclass(frozen=True, slots=True)
class Source:
    """Where one processor keeps its position in the log (None: it keeps none)."""

    name: str
    store: Store | None
    #: The checkpoint consumer name or Kafka group, after the group prefix.
    suffix: str = ""

    def group(self, settings: Settings) -> str:
        """The consumer name (checkpoints) or consumer group (Kafka) of this processor."""
        return f"{settings.consumer_group_prefix}{self.suffix}" if self.suffix else ""


#: Every processor of ``entrypoints.registry``; tests/unit/test_processor_positions.py
#: checks these names against the processors' own.
SOURCES = (
    Source("projector", "postgres", ".projector"),
    Source("cache", "kafka", ".cache"),
    Source("archiver", "postgres", ".archiver"),
    Source("sync", None),
    Source("notifier", None),
    Source("analytics", "kafka", "-analytics"),
    Source("workflows", None),
)


class PartitionLag(BaseModel):
    """One partition of the events topic."""

    partition: int
    position: int | None = Field(description="the next offset the processor reads; null: none")
    end: int = Field(description="the log's end offset")
    lag: int


class ProcessorOut(BaseModel):
    """One processor's position and lag."""

    name: str
    group: str | None = Field(description="its checkpoint name or Kafka consumer group")
    store: Store | None = Field(description="where its position is kept")
    lag: int | None = Field(description="events behind the log's end, all partitions")
    partitions: list[PartitionLag]
    backlog: int | None = Field(
        description="work waiting outside the log: pending webhook deliveries (notifier), "
        "integrations due to sync (sync), triggers and due runs not yet taken (workflows)"
    )


class ProcessorPage(BaseModel):
    """Every processor (one page)."""

    items: list[ProcessorOut]
    next: None


register(
    Operation(
        "GET", _PATH, "Stream processors' positions and lag (platform-admin)", "operations",
        description="For each processor: its position per partition of the events topic "
        "and how many events it is behind the end of the log; for those that do not read "
        "the log by position, their backlog.",
        replies=(Reply(200, "every processor", ProcessorPage),),
        errors=AUTH_ERRORS,
    )
)  # fmt: skip


class _Kafka:
    """A consumer without a group (for log offsets) and an admin client (for group offsets)."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.consumer: Any = None
        self.admin: Any = None

    async def open(self, settings: Settings) -> None:
        # deferred: the read API's process starts without Kafka clients (module docstring)
        from aiokafka import AIOKafkaConsumer
        from aiokafka.admin import AIOKafkaAdminClient

        if self.consumer is None:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=settings.kafka_bootstrap,
                client_id="eventfold-api-lag",
                enable_auto_commit=False,
                isolation_level="read_committed",
            )
            await consumer.start()
            self.consumer = consumer
        if self.admin is None:
            admin = AIOKafkaAdminClient(
                bootstrap_servers=settings.kafka_bootstrap, client_id="eventfold-api-lag"
            )
            await admin.start()
            self.admin = admin

    async def close(self) -> None:
        consumer, admin, self.consumer, self.admin = self.consumer, self.admin, None, None
        for client, stop in ((consumer, "stop"), (admin, "close")):
            if client is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(getattr(client, stop)(), 5)


_KAFKA = web.AppKey("processor_lag_kafka", _Kafka)


def setup(app: web.Application) -> None:
    """Register the route and the lifetime of its Kafka clients."""
    app.router.add_get(_PATH, list_processors)
    app.cleanup_ctx.append(_kafka_ctx)


async def _kafka_ctx(app: web.Application) -> AsyncIterator[None]:
    kafka = _Kafka()
    app[_KAFKA] = kafka
    try:
        yield
    finally:
        await kafka.close()


@dataclass(frozen=True, slots=True)
class _Log:
    """The events topic's offsets, and the Kafka groups' committed positions."""

    start: dict[int, int]
    end: dict[int, int]
    groups: dict[str, dict[int, int]]


async def _read_log(kafka: _Kafka, settings: Settings, groups: list[str]) -> _Log:
    from aiokafka import TopicPartition  # deferred: as in _Kafka.open

    async with kafka.lock:
        try:
            async with asyncio.timeout(_KAFKA_SECONDS):
                await kafka.open(settings)
                topic = settings.events_topic
                [described] = await kafka.admin.describe_topics([topic])
                partitions = sorted(p["partition"] for p in described.get("partitions", ()))
                tps = [TopicPartition(topic, p) for p in partitions]
                start = await kafka.consumer.beginning_offsets(tps) if tps else {}
                end = await kafka.consumer.end_offsets(tps) if tps else {}
                committed: dict[str, dict[int, int]] = {}
                for group in groups:
                    offsets = await kafka.admin.list_consumer_group_offsets(group)
                    committed[group] = {
                        tp.partition: meta.offset
                        for tp, meta in offsets.items()
                        if tp.topic == topic and meta.offset >= 0
                    }
        except BaseException:
            await kafka.close()  # the next call connects afresh
            raise
    return _Log(
        {tp.partition: o for tp, o in start.items()},
        {tp.partition: o for tp, o in end.items()},
        committed,
    )


async def _backlog(conn: asyncpg.Connection, name: str) -> int | None:
    if name == "notifier":
        pending: int = await conn.fetchval(
            "SELECT count(*) FROM eventfold.webhook_deliveries WHERE state = 'pending'"
        )
        return pending
    if name == "sync":
        due: int = await conn.fetchval(
            "SELECT count(*) FROM eventfold.integrations WHERE deleted_at IS NULL"
            " AND NOT paused AND (sync_requested OR next_run_at <= now())"
        )
        return due
    if name == "workflows":
        waiting: int = await conn.fetchval(
            "SELECT (SELECT count(*) FROM eventfold.workflow_inbox)"
            " + (SELECT count(*) FROM eventfold.workflow_runs"
            "    WHERE wake_at <= now() AND lease_until < now())"
        )
        return waiting
    return None


def _partitions(log: _Log, positions: dict[int, int]) -> list[dict[str, Any]]:
    out = []
    for partition, end in sorted(log.end.items()):
        position = positions.get(partition)
        behind = end - (position if position is not None else log.start.get(partition, 0))
        out.append({"partition": partition, "position": position, "end": end,
                    "lag": max(0, behind)})  # fmt: skip
    return out


async def list_processors(request: web.Request) -> web.Response:
    """``{"items": [{"name", "group", "store", "lag", "partitions", "backlog"}], "next": null}``."""
    (await authenticate(request)).require("platform-admin")
    settings = request.app[SETTINGS]
    # Each processor working on one database server's tenants is listed once per server
    # (``projector@b``: its checkpoints and backlog are that server's).
    instances = [
        (source, server, settings.on_server(server))
        for server in request.app[PLACEMENT].pools
        for source in SOURCES
        if server == HOME_SERVER or source.name in PER_SERVER_PROCESSORS
    ]
    kafka_groups = [_group(s, scoped) for s, _, scoped in instances if s.store == "kafka"]
    log = await _read_log(request.app[_KAFKA], settings, kafka_groups)
    items = []
    for source, server, scoped in instances:
        group = _group(source, scoped)
        positions: dict[int, int] = {}
        async with request.app[PLACEMENT].pools[server].acquire(timeout=5) as conn:
            if source.store == "postgres":
                positions = await fetch_checkpoints(conn, group, settings.events_topic)
            elif source.store == "kafka":
                positions = log.groups.get(group, {})
            backlog = await _backlog(conn, source.name)
        partitions = _partitions(log, positions) if source.store else []
        items.append(
            {
                "name": source.name if server == HOME_SERVER else f"{source.name}@{server}",
                "group": group or None,
                "store": source.store,
                "lag": sum(p["lag"] for p in partitions) if source.store else None,
                "partitions": partitions,
                "backlog": backlog,
            }
        )
    return json_response({"items": items, "next": None})


def _group(source: Source, scoped: Settings) -> str:
    """The source's checkpoint name (the same on every server) or its Kafka group (one
    per server)."""
    group = source.group(scoped)
    return server_group(group, scoped) if source.store == "kafka" and group else group

"""Every stream processor by name: what ``eventfold process NAME`` and ``eventfold run`` start.

A processor is built from the settings, the PostgreSQL pool and the metrics
object, and runs until its stop event is set (or, in burst mode, until it has
caught up). To add one: a package under ``src/consumers/`` and an entry here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

import asyncpg

from eventfold.metrics import Metrics
from eventfold.settings import Settings


class Processor(Protocol):
    """What the supervisor needs of a processor."""

    async def run(self, stop: asyncio.Event | None = None, *, burst: bool = False) -> None:
        """Consume until ``stop`` is set, or until caught up in ``burst`` mode."""

    def is_ready(self) -> bool:
        """Whether it does its job now (``/health/ready``): a Kafka processor holds its
        partitions and consumes; false before its first assignment, during a rebalance
        and once stopped."""


ProcessorFactory = Callable[[Settings, asyncpg.Pool, Metrics], Processor]


def _projector(settings: Settings, pool: asyncpg.Pool, metrics: Metrics) -> Processor:
    from consumers.projector.processor import Projector

    return Projector(settings, pool, metrics)


def _cache(settings: Settings, pool: asyncpg.Pool, metrics: Metrics) -> Processor:
    from consumers.cache.processor import CacheProcessor

    return CacheProcessor(settings, pool, metrics)


def _archiver(settings: Settings, pool: asyncpg.Pool, metrics: Metrics) -> Processor:
    from consumers.archiver.processor import Archiver

    return Archiver(settings, pool, metrics)


def _sync(settings: Settings, pool: asyncpg.Pool, metrics: Metrics) -> Processor:
    from consumers.sync.runner import SyncRunner

    return SyncRunner(settings, pool, metrics)


def _notifier(settings: Settings, pool: asyncpg.Pool, metrics: Metrics) -> Processor:
    from consumers.notifier.processor import Notifier

    return Notifier(settings, pool, metrics)


def _analytics(settings: Settings, pool: asyncpg.Pool, metrics: Metrics) -> Processor:
    from consumers.analytics.processor import Analytics

    return Analytics(settings, pool, metrics)


def _workflows(settings: Settings, pool: asyncpg.Pool, metrics: Metrics) -> Processor:
    from consumers.workflows.processor import WorkflowProcessor

    return WorkflowProcessor(settings, pool, metrics)


PROCESSORS: dict[str, ProcessorFactory] = {
    "projector": _projector,
    "cache": _cache,
    "archiver": _archiver,
    "sync": _sync,
    "notifier": _notifier,
    "analytics": _analytics,
    "workflows": _workflows,
}

"""Every stream processor by name: what ``eventfold process NAME`` and ``eventfold run`` start.

A processor is built from the settings, the PostgreSQL pool and the metrics
object, and runs until its stop event is set (or, in burst mode, until it has
caught up), under :func:`consumers.runtime.runner.supervise`. To add one: a
package under ``src/consumers/`` and an entry here.

Each factory imports its processor when it is called, not with this module: a
process imports only what it runs (the read API neither aiokafka nor faust,
``eventfold process sync`` no faust), and building the CLI's parser costs
nothing.
"""

from __future__ import annotations

import asyncpg

from consumers.runtime.runner import Processor, ProcessorFactory
from eventfold.metrics import Metrics
from eventfold.placement import PER_SERVER_PROCESSORS
from eventfold.settings import HOME_SERVER, Settings


def _projector(settings: Settings, pool: asyncpg.Pool, metrics: Metrics) -> Processor:
    # deferred: start-up cost (module docstring)
    from consumers.projector.processor import Projector

    return Projector(settings, pool, metrics)


def _cache(settings: Settings, pool: asyncpg.Pool, metrics: Metrics) -> Processor:
    # deferred: start-up cost (module docstring)
    from consumers.cache.processor import CacheProcessor

    return CacheProcessor(settings, pool, metrics)


def _archiver(settings: Settings, pool: asyncpg.Pool, metrics: Metrics) -> Processor:
    # deferred: start-up cost (module docstring)
    from consumers.archiver.processor import Archiver

    return Archiver(settings, pool, metrics)


def _sync(settings: Settings, pool: asyncpg.Pool, metrics: Metrics) -> Processor:
    # deferred: start-up cost (module docstring)
    from consumers.sync.runner import SyncRunner

    return SyncRunner(settings, pool, metrics)


def _notifier(settings: Settings, pool: asyncpg.Pool, metrics: Metrics) -> Processor:
    # deferred: start-up cost (module docstring)
    from consumers.notifier.processor import Notifier

    return Notifier(settings, pool, metrics)


def _analytics(settings: Settings, pool: asyncpg.Pool, metrics: Metrics) -> Processor:
    # deferred: start-up cost (module docstring)
    from consumers.analytics.processor import Analytics

    return Analytics(settings, pool, metrics)


def _workflows(settings: Settings, pool: asyncpg.Pool, metrics: Metrics) -> Processor:
    # deferred: start-up cost (module docstring)
    from consumers.workflows.processor import WorkflowProcessor

    return WorkflowProcessor(settings, pool, metrics)


def instances(name: str, settings: Settings) -> list[tuple[str, str]]:
    """``(label, server)`` of each instance of processor ``name`` a process runs: the
    label is ``name`` on ``main``, ``name@server`` elsewhere."""
    servers = list(settings.server_urls) if name in PER_SERVER_PROCESSORS else [HOME_SERVER]
    return [(name if s == HOME_SERVER else f"{name}@{s}", s) for s in servers]


PROCESSORS: dict[str, ProcessorFactory] = {
    "projector": _projector,
    "cache": _cache,
    "archiver": _archiver,
    "sync": _sync,
    "notifier": _notifier,
    "analytics": _analytics,
    "workflows": _workflows,
}

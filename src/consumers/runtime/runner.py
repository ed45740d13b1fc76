"""Running a stream processor: build it, run it, restart it with backoff, say whether it works.

Every processor (``eventfold run`` starts them all, ``eventfold process NAME``
one) runs under :func:`supervise`: a failure restarts it with a jittered
backoff (:class:`eventfold.backoff.Backoff`, reset after a healthy run), a
dependency that is away is a warning and an outright bug an exception log;
``stop`` ends it, and in burst mode its own return (caught up) does.
:class:`Supervised` is the readiness check ``/health/ready`` asks: the
supervisor runs, and the current instance does its job (``is_ready``: a Kafka
processor holds its assignment as a static group member, see
:mod:`consumers.runtime.kafka` and :mod:`consumers.runtime.membership`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Protocol

import asyncpg

from eventfold.backoff import Backoff
from eventfold.faults import is_retriable
from eventfold.metrics import Metrics
from eventfold.settings import Settings

log = logging.getLogger("eventfold")

#: A processor that ran this long before failing starts its backoff afresh.
HEALTHY_RUN_SECONDS = 60.0
#: How long a stopping processor is given to finish its batch and close its clients.
STOP_SECONDS = 15.0


class Processor(Protocol):
    """What the supervisor needs of a processor."""

    async def run(self, stop: asyncio.Event | None = None, *, burst: bool = False) -> None:
        """Consume until ``stop`` is set, or until caught up in ``burst`` mode."""

    def is_ready(self) -> bool:
        """Whether it does its job now (``/health/ready``): a Kafka processor holds its
        partitions and consumes; false before its first assignment, during a rebalance
        and once stopped."""


#: How a processor is built: from the settings, the PostgreSQL pool and the metrics.
ProcessorFactory = Callable[[Settings, asyncpg.Pool, Metrics], Processor]


class NotConsuming(RuntimeError):
    """A processor that is not doing its job yet (or any more): no assignment, rebalancing."""


async def supervise(
    name: str,
    factory: ProcessorFactory,
    settings: Settings,
    pool: asyncpg.Pool,
    metrics: Metrics,
    stop: asyncio.Event,
    *,
    burst: bool = False,
    on_start: Callable[[Processor], None] | None = None,
) -> None:
    """Run processor ``name`` (built by ``factory``) until ``stop``, restarting it with
    backoff if it fails.

    ``on_start`` is handed each instance as it starts (a restart makes a new one).
    """
    backoff = Backoff(1.0, 30.0)
    # The gauge reads the running instance's own readiness at scrape time, so the
    # metric and /health/ready never disagree; stopped or failed, it is 0.
    ready = metrics.processor_ready.labels(name)
    ready.set_function(lambda: 0.0)
    while not stop.is_set():
        started = time.monotonic()
        try:
            processor = factory(settings, pool, metrics)
            ready.set_function(lambda p=processor: float(p.is_ready()))  # type: ignore[misc]
            if on_start is not None:
                on_start(processor)
            await processor.run(stop, burst=burst)
            ready.set_function(lambda: 0.0)
            return
        except Exception as exc:
            ready.set_function(lambda: 0.0)
            if stop.is_set() and is_retriable(exc):
                # Stopping while a dependency is away (a write cut short): nothing to restart.
                log.warning(
                    "processor stopped while a dependency was away",
                    extra={"processor": name, "error": repr(exc)},
                )
                return
            if time.monotonic() - started > HEALTHY_RUN_SECONDS:
                backoff.reset()  # it ran well for a while: this is a new incident
            if is_retriable(exc):
                log.warning(
                    "processor lost a dependency, restarting",
                    extra={"processor": name, "error": repr(exc), "delay": backoff.current},
                )
            else:
                log.exception("processor failed, restarting", extra={"processor": name})
            await backoff.sleep(stop)


class Supervised:
    """One processor under :func:`supervise` in a task of its own, and its readiness."""

    def __init__(
        self,
        name: str,
        factory: ProcessorFactory,
        settings: Settings,
        pool: asyncpg.Pool,
        metrics: Metrics,
        *,
        burst: bool = False,
    ) -> None:
        self.name = name
        self.stop = asyncio.Event()
        self._current: Processor | None = None
        self.task = asyncio.create_task(
            supervise(
                name,
                factory,
                settings,
                pool,
                metrics,
                self.stop,
                burst=burst,
                on_start=self._started,
            ),
            name=name,
        )

    def _started(self, processor: Processor) -> None:
        self._current = processor

    async def check(self) -> None:
        """The readiness check: the supervisor runs, and its current instance does its job."""
        if self.task.done():
            raise RuntimeError("processor stopped")
        if self._current is None or not self._current.is_ready():
            raise NotConsuming("processor not consuming")

    async def close(self) -> None:
        """Stop the processor and wait for it: at most :data:`STOP_SECONDS`, then it is
        cancelled, with a warning naming it.

        A processor waiting on a dependency that is away (a Kafka producer waiting for
        metadata after an outage) may not see ``stop`` for a while; the process must
        still end, and cleanly: the other parts' cleanups run after this one.
        """
        self.stop.set()
        try:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self.task, STOP_SECONDS)
        except TimeoutError:
            log.warning(
                "processor did not stop in time, cancelled",
                extra={"processor": self.name, "seconds": STOP_SECONDS},
            )

"""Group commit: the writes many callers ask for in one event-loop pass share one round trip.

Hundreds of workflow runs in flight each write a transition (or let go of their
lease) every few milliseconds, and concurrent requests each need their records'
data keys made (:mod:`eventfold.datakeys`). Sent one by one, each write takes a
pooled connection and a round trip of its own, and the pool (shared with the
projector and the API in ``eventfold run``) queues them: the callers wait on
each other and the projector waits on them. Here every write submitted during one pass of the
event loop is queued and the queue goes out, at the end of that pass, as one
statement; a write submitted while a statement is under way joins the next
one. Nothing waits for a batch to fill: a lone write goes out at once.

Each caller still gets its own answer (its run's new ``rev``, or None when the
fence by ``rev`` refused it), and only once the statement has committed: a run
goes on to its next effect after its own transition is in PostgreSQL, as when
it wrote alone. A batch that fails is tried again write by write (nothing of a
failed statement was committed), so one write's trouble, or a deadlock with
another statement, fails only the writes that fail on their own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Generic, TypeVar

log = logging.getLogger("eventfold.groupcommit")

T = TypeVar("T")
R = TypeVar("R")

#: Writes in one statement at most (a burst beyond it goes out as several).
MAX_BATCH = 256
#: Statements under way at once (one connection each).
MAX_IN_FLIGHT = 4


class Batcher(Generic[T, R]):
    """Queues items and writes each event-loop pass's queue with one call of ``many``.

    ``many`` answers each item in order (an exception for an item that failed on
    its own); when it raises, each item is written alone with ``one``, or, without
    ``one``, fails with that error. Items with the same ``key`` go in different
    batches. ``name`` names the batches' tasks and log lines.
    """

    def __init__(
        self,
        many: Callable[[Sequence[T]], Awaitable[Sequence[R | BaseException]]],
        one: Callable[[T], Awaitable[R]] | None,
        key: Callable[[T], Hashable] | None = None,
        *,
        max_batch: int = MAX_BATCH,
        max_in_flight: int = MAX_IN_FLIGHT,
        name: str = "group-commit",
    ) -> None:
        self._name = name
        self._many = many
        self._one = one
        self._key = key
        self._max_batch = max_batch
        self._slots = asyncio.Semaphore(max_in_flight)
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._scheduled = False
        #: Batches under way (a reference, so their tasks are not collected mid-way).
        self._running: set[asyncio.Task[None]] = set()

    async def submit(self, item: T) -> R:
        """Queue ``item``; its answer once the statement that wrote it has committed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        # Read here, so an answer whose caller was cancelled is not reported as lost.
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._queue.append((item, future))
        if not self._scheduled:
            # call_soon runs after the callbacks already ready in this pass, so every
            # run woken in the same pass joins this batch.
            self._scheduled = True
            loop.call_soon(self._start)
        # Shielded: a cancelled caller leaves its write to the batch, which may commit it
        # (as a statement sent alone may commit after its caller was cancelled).
        return await asyncio.shield(future)

    async def close(self) -> None:
        """Wait for the batches under way and those queued (the caller bounds the wait)."""
        while self._running or self._queue:
            if self._queue and not self._scheduled:
                self._start()
            if self._running:
                await asyncio.wait(set(self._running))
            else:
                await asyncio.sleep(0)  # a batch is about to start

    def _start(self) -> None:
        self._scheduled = False
        if not self._queue:
            return
        task = asyncio.create_task(self._drain(), name=self._name)
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _drain(self) -> None:
        async with self._slots:
            # Taken only once a slot is free: what queued meanwhile goes in this batch.
            batch = self._take()
            if batch:
                await self._write(batch)
        if self._queue and not self._scheduled:
            self._start()

    def _take(self) -> list[tuple[T, asyncio.Future[R]]]:
        """Up to ``max_batch`` queued items, no two with the same key (one statement
        cannot write one row twice); the others stay queued for the next batch."""
        batch: list[tuple[T, asyncio.Future[R]]] = []
        rest: list[tuple[T, asyncio.Future[R]]] = []
        seen: set[Hashable] = set()
        for entry in self._queue:
            k = self._key(entry[0]) if self._key is not None else None
            if len(batch) >= self._max_batch or (k is not None and k in seen):
                rest.append(entry)
            else:
                seen.add(k)
                batch.append(entry)
        self._queue = rest
        return batch

    async def _write(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        items = [item for item, _ in batch]
        one = self._one
        try:
            answers = (
                await self._many(items) if len(items) > 1 or one is None else [await one(items[0])]
            )
        except Exception as exc:
            if len(items) == 1 or one is None:
                for _, fut in batch:
                    _fail(fut, exc)
                return
            log.info(
                "batch failed, writing it item by item",
                extra={"batch": self._name, "error": repr(exc)},
            )
            # One after another: a batch of hundreds sent at once would queue on the pool.
            for item, fut in batch:
                await self._write_one(one, item, fut)
            return
        for (_, fut), answer in zip(batch, answers, strict=True):
            if isinstance(answer, BaseException):
                _fail(fut, answer)
            else:
                _resolve(fut, answer)

    async def _write_one(
        self, one: Callable[[T], Awaitable[R]], item: T, future: asyncio.Future[R]
    ) -> None:
        try:
            answer = await one(item)
        except Exception as exc:
            _fail(future, exc)
        else:
            _resolve(future, answer)


def _resolve(future: asyncio.Future[R], answer: R) -> None:
    if not future.done():
        future.set_result(answer)


def _fail(future: asyncio.Future[R], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)

"""Automatic pipelining: the Redis commands of one event-loop pass share one round trip.

Under load many requests reach the same Redis step at nearly the same moment
(the rate limit, the dedup lookup, the dedup record). Sent one by one, each
command pays for a pooled connection, a socket write, a read and redis-py's
per-call bookkeeping: about a third of the gateway's CPU per single-event
request. Here every command issued during one pass of the event loop is queued
and the queue is sent, at the end of that pass, as one non-transactional
pipeline: the same commands in the same order with the same replies, in one
round trip. Nothing waits for a batch to fill: a lone command goes out at once.

Errors stay per command where Redis gives them per command (an error reply
fails that command's future only). A connection failure, or the batch running
past its deadline (the earliest of its commands' own), fails every command of
the batch, as the same failure would have failed each command sent alone.
"""

from __future__ import annotations

import asyncio
import math
import weakref
from typing import Any

import hiredis
from redis.asyncio import Redis
from redis.exceptions import ResponseError

#: A command's name and arguments (what hiredis packs: bytes, text, numbers).
Arg = str | bytes | int | float

#: Commands in one pipeline at most (a burst beyond it goes out as several).
MAX_BATCH = 1024

_SHARED: weakref.WeakKeyDictionary[Redis, AutoPipeline] = weakref.WeakKeyDictionary()


class AutoPipeline:
    """Queues commands and sends each event-loop pass's queue as one pipeline."""

    def __init__(self, redis: Redis, *, max_batch: int = MAX_BATCH) -> None:
        # The pool, not the client: ``shared`` keys its registry weakly by the client,
        # which an entry must not keep alive.
        self._pool = redis.connection_pool
        self._max_batch = max_batch
        self._queue: list[tuple[tuple[Arg, ...], asyncio.Future[Any]]] = []
        self._deadline = 0.0
        self._scheduled = False
        #: Batches in flight (a reference, so their tasks are not collected mid-way).
        self._running: set[asyncio.Task[None]] = set()

    @classmethod
    def shared(cls, redis: Redis) -> AutoPipeline:
        """The one pipeline of ``redis`` in this process, so all its users share batches."""
        pipe = _SHARED.get(redis)
        if pipe is None:
            pipe = _SHARED[redis] = cls(redis)
        return pipe

    def execute(self, *args: Arg, timeout: float) -> asyncio.Future[Any]:
        """Queue one command; the future gets its parsed reply, or raises its error.

        ``timeout`` (seconds) bounds the round trip: the batch fails with
        :class:`TimeoutError` at the earliest deadline of its commands.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        deadline = loop.time() + timeout
        if not self._queue or deadline < self._deadline:
            self._deadline = deadline
        self._queue.append((args, future))
        if len(self._queue) >= self._max_batch:
            self._flush()
        elif not self._scheduled:
            # call_soon runs after the callbacks already ready in this pass, so every
            # request woken in the same pass joins this batch.
            self._scheduled = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._scheduled = False
        if not self._queue:
            return
        batch, self._queue = self._queue, []
        task = asyncio.get_running_loop().create_task(self._send(batch, self._deadline))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _send(
        self, batch: list[tuple[tuple[Arg, ...], asyncio.Future[Any]]], deadline: float
    ) -> None:
        try:
            async with asyncio.timeout_at(deadline):
                replies = await self._round_trip([args for args, _ in batch])
        except Exception as exc:  # every waiter learns of it; nothing is left hanging
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        except BaseException:  # cancelled (the loop is closing): so are the waiters
            for _, future in batch:
                future.cancel()
            raise
        for (_, future), reply in zip(batch, replies, strict=True):
            if future.done():  # its caller gave up (cancelled)
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def _round_trip(self, commands: list[tuple[Arg, ...]]) -> list[Any]:
        """Send ``commands`` on one pooled connection and read every reply.

        What redis-py's pipeline does, less its per-command bookkeeping (a timer
        per reply read, response callbacks): replies come as Redis sends them,
        error replies as exception objects in their place. The batch's deadline
        bounds the whole; a connection that fails or times out mid-way is
        disconnected (never reused half-read), and a failed connection is retried
        once, as the client's own retry policy does for any command.
        """
        pool = self._pool
        conn = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            # hiredis packs in C what redis-py packs in Python (the same bytes, floats
            # as repr() writes them), several times faster per command.
            # (Its stub types the tuple as one item long.)
            packed = [hiredis.pack_command(command) for command in commands]  # type: ignore[arg-type]

            async def attempt() -> list[Any]:
                await conn.send_packed_command(packed)
                replies: list[Any] = []
                for _ in commands:
                    try:
                        # No per-reply timer: the batch's deadline covers the reads.
                        replies.append(await conn.read_response(timeout=math.inf))
                    except ResponseError as exc:
                        replies.append(exc)
                return replies

            async def failed(error: Exception) -> None:
                await conn.disconnect()

            replies: list[Any] = await conn.retry.call_with_retry(attempt, failed)
            return replies
        except BaseException:
            # Cut off mid-way (deadline, cancel): unread replies would desync it.
            await conn.disconnect(nowait=True)
            raise
        finally:
            await pool.release(conn)

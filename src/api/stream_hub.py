"""One Redis subscription per API process, fanned out to its local SSE clients.

Each tenant's channel is subscribed once, while at least one of its streams is
open here, and every message is copied into each of those streams' bounded
queues: a thousand clients cost one Redis connection, not a thousand. A queue is
bounded by frames and by bytes (a few large events pin as much memory as many
small ones). A client whose queue is full is flagged ``slow`` (the stream cuts
it; it resumes with ``Last-Event-ID``), never buffered further; when the Redis connection fails
every client is flagged ``lost`` and reconnects, and the next stream opens a
fresh subscription.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from eventfold.livefeed import channel

log = logging.getLogger("eventfold.stream")

#: The deadline of one SUBSCRIBE / UNSUBSCRIBE.
_COMMAND_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class Frame:
    """One event to send: its history ``seq`` (the SSE id), type and JSON data (UTF-8)."""

    seq: int
    type: str
    data: bytes


@dataclass(eq=False)
class Subscriber:
    """One stream's live feed: a queue bounded by frames and bytes, and why it ended, if it did."""

    max_frames: int
    max_bytes: int
    queue: asyncio.Queue[Frame] = field(default_factory=asyncio.Queue)
    #: Bytes of the frames in :attr:`queue` (their data; one frame is shared by all streams).
    queued_bytes: int = 0
    slow: asyncio.Event = field(default_factory=asyncio.Event)
    lost: asyncio.Event = field(default_factory=asyncio.Event)

    def offer(self, frame: Frame) -> None:
        """Queue ``frame``, or flag the stream ``slow`` when that would pass a bound.

        An empty queue takes any one frame: a single event larger than the byte
        bound must still reach a client that keeps up.
        """
        if self.slow.is_set():
            return
        size = len(frame.data)
        if self.queue.qsize() and (
            self.queue.qsize() >= self.max_frames or self.queued_bytes + size > self.max_bytes
        ):
            self.slow.set()
            return
        self.queue.put_nowait(frame)
        self.queued_bytes += size

    async def take(self) -> Frame:
        """The next frame (waits for one)."""
        frame = await self.queue.get()
        self.queued_bytes -= len(frame.data)
        return frame


class StreamHub:
    """Shares one pub/sub connection between the process's streams."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._pubsub: PubSub | None = None
        self._reader: asyncio.Task[None] | None = None
        self._by_channel: dict[str, set[Subscriber]] = {}
        self._lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def subscribe(
        self, tenant: str, max_frames: int, max_bytes: int
    ) -> AsyncIterator[Subscriber]:
        """A feed of ``tenant``'s live events, subscribed before this returns."""
        sub = Subscriber(max(1, max_frames), max(1, max_bytes))
        name = channel(tenant)
        async with self._lock:
            if self._pubsub is None:
                self._pubsub = self._redis.pubsub()
            subs = self._by_channel.setdefault(name, set())
            if not subs:
                try:
                    await asyncio.wait_for(self._pubsub.subscribe(name), _COMMAND_SECONDS)
                except BaseException:
                    del self._by_channel[name]
                    raise
            subs.add(sub)
            if self._reader is None or self._reader.done():
                self._reader = asyncio.create_task(self._read(self._pubsub), name="stream-hub")
        try:
            yield sub
        finally:
            await self._leave(name, sub)

    async def _leave(self, name: str, sub: Subscriber) -> None:
        async with self._lock:
            subs = self._by_channel.get(name)
            if subs is None:
                return
            subs.discard(sub)
            if not subs:
                del self._by_channel[name]
                if self._pubsub is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(self._pubsub.unsubscribe(name), _COMMAND_SECONDS)

    async def _read(self, pubsub: PubSub) -> None:
        try:
            while True:
                if not pubsub.subscribed:
                    await asyncio.sleep(0.05)
                    continue
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if msg is None or msg.get("type") != "message":
                    continue
                self._dispatch(msg)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.info("live feed lost; streams reconnect", extra={"error": repr(exc)})
            await self._reset(pubsub)

    def _dispatch(self, msg: dict[str, Any]) -> None:
        name = msg["channel"]
        name = name.decode() if isinstance(name, bytes) else str(name)
        subs = self._by_channel.get(name)
        if not subs:
            return
        doc: Any = orjson.loads(msg["data"])
        # The projector sends a list per tenant and batch; a single object is the older form.
        items: list[dict[str, Any]] = doc if isinstance(doc, list) else [doc]
        for item in items:
            frame = Frame(int(item["seq"]), str(item["type"]), str(item["data"]).encode())
            for sub in subs:
                sub.offer(frame)

    async def _reset(self, pubsub: PubSub) -> None:
        async with self._lock:
            for subs in self._by_channel.values():
                for sub in subs:
                    sub.lost.set()
            self._by_channel.clear()
            if self._pubsub is pubsub:
                self._pubsub = None
        await _close_pubsub(pubsub)

    async def close(self) -> None:
        """Stop reading and close the connection."""
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
        if self._pubsub is not None:
            await _close_pubsub(self._pubsub)
            self._pubsub = None


async def _close_pubsub(pubsub: PubSub) -> None:
    """Close ``pubsub`` within 2 s, whatever state its connection is in."""
    # Older redis-py releases leave ``aclose`` untyped, newer ones type it: through a typed
    # name mypy --strict passes with either (an ignore is "unused" with one of them).
    aclose: Callable[[], Awaitable[None]] = pubsub.aclose
    with contextlib.suppress(Exception):
        await asyncio.wait_for(aclose(), 2)


HUB = web.AppKey("stream_hub", StreamHub)

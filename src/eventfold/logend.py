"""Where the events topic ends: a consistency token past it was produced by no write.

A write's token names offsets the log holds (Kafka acknowledged them, so each
partition's end, its high watermark, is past them). A token naming an offset at
or past the end is forged (or from another cluster): it is refused with a 400
instead of making a read wait for a projection that will never get there.

The ends are cached. Offsets this process published (:meth:`LogEnd.saw`) and
the projector's checkpoints (passed in by the caller) move them forward for
free; only a token beyond everything known asks Kafka (ListOffsets) again. A
token can be refused only by a refresh that *started after* its check began,
so a write acknowledged just before its read is never refused by a stale
answer. Refreshes are single-flight: at most one is in flight, and one starts
at most every :data:`MIN_INTERVAL` seconds; every check arriving meanwhile
shares the next one, so a flood of forged tokens costs Kafka at most one
request per interval.

Kafka unreachable: the token is not judged (counted as a Kafka error and
logged); its read waits as any other, within its deadline and its tenant's
cap on concurrent waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from eventfold.errors import BadRequest
from eventfold.metrics import Metrics
from eventfold.settings import Settings

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer

log = logging.getLogger("eventfold.logend")

#: Least time between the starts of two refreshes (seconds).
MIN_INTERVAL = 0.02
#: One refresh (connecting the first time included).
REFRESH_TIMEOUT = 2.0
#: Partitions added to the topic are seen within this (the client's metadata age).
_METADATA_MAX_AGE_MS = 60_000


class LogEnd:
    """The events topic's end offsets, as far as this process knows them."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        *,
        min_interval: float = MIN_INTERVAL,
        timeout: float = REFRESH_TIMEOUT,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._topic = settings.events_topic
        self._min_interval = min_interval
        self._timeout = timeout
        #: Per partition: an offset the log is known to have reached (exclusive).
        self.ends: dict[int, int] = {}
        self._consumer: AIOKafkaConsumer | None = None
        #: The latest refresh and its number (numbers only grow).
        self._task: asyncio.Task[bool] | None = None
        self._seq = 0
        self._last_start = float("-inf")
        #: How many refreshes asked Kafka (tests and metrics).
        self.refreshes = 0

    def saw(self, positions: Iterable[tuple[int, int]]) -> None:
        """Kafka acknowledged these ``(partition, offset)``: the log reaches past them."""
        for partition, offset in positions:
            if offset >= self.ends.get(partition, 0):
                self.ends[partition] = offset + 1

    def covers(self, required: Mapping[int, int], floor: Mapping[int, int] | None = None) -> bool:
        """Whether every offset of ``required`` is known to lie before the end.

        ``floor``: positions known to be within the log too (committed checkpoints).
        """
        floor = floor or {}
        return all(o < max(self.ends.get(p, 0), floor.get(p, 0)) for p, o in required.items())

    async def verify(
        self, required: Mapping[int, int], floor: Mapping[int, int] | None = None
    ) -> None:
        """Return when ``required`` lies within the log; :class:`BadRequest` when past its end.

        Also returns when Kafka cannot say (see the module's docstring).
        """
        if self.covers(required, floor):
            return
        if not await self._refreshed_since(self._seq):
            return
        if not self.covers(required, floor):
            self._metrics.consistency_tokens_refused.inc()
            raise BadRequest(
                "X-Consistency-Token names positions past the end of the log: "
                "no write of this server produced it"
            )

    async def _refreshed_since(self, seq: int) -> bool:
        """Await a refresh numbered above ``seq`` (so started after the caller began)."""
        while True:
            task = self._task
            if task is None or task.done():
                if task is not None and self._seq > seq:
                    return task.result()
                self._seq += 1
                task = self._task = asyncio.create_task(self._refresh(), name="log-end")
            number = self._seq
            ok = await asyncio.shield(task)
            if number > seq:
                return ok

    async def _refresh(self) -> bool:
        """Ask Kafka for every partition's end; False (logged, counted) when it cannot say."""
        loop = asyncio.get_running_loop()
        pause = self._last_start + self._min_interval - loop.time()
        if pause > 0:
            await asyncio.sleep(pause)
        self._last_start = loop.time()
        self.refreshes += 1
        self._metrics.log_end_refreshes.inc()
        try:
            async with asyncio.timeout(self._timeout):
                ends = await self._fetch()
        except Exception as exc:  # any failure: the token is not judged, the wait bounds it
            self._metrics.dependency_errors.labels("kafka").inc()
            log.warning("end of the log unknown", extra={"error": repr(exc)})
            await self._drop_consumer()
            return False
        self.saw((p, end - 1) for p, end in ends.items() if end > 0)
        return True

    async def _fetch(self) -> dict[int, int]:
        # deferred: imported on the first token past the known end, the read API's
        # process otherwise loads no Kafka client at all (tests/unit/test_api_imports.py)
        from aiokafka import AIOKafkaConsumer, TopicPartition

        consumer = self._consumer
        if consumer is None:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self._settings.kafka_bootstrap,
                client_id="eventfold-log-end",
                enable_auto_commit=False,
                # The high watermark: every acknowledged (acks=all) offset lies below it.
                isolation_level="read_uncommitted",
                request_timeout_ms=int(self._timeout * 1000),
                metadata_max_age_ms=_METADATA_MAX_AGE_MS,
            )
            await consumer.start()
            self._consumer = consumer
        partitions = consumer.partitions_for_topic(self._topic)
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(self._topic) or set()
        tps = [TopicPartition(self._topic, p) for p in sorted(partitions)]
        ends = await consumer.end_offsets(tps) if tps else {}
        return {tp.partition: int(end) for tp, end in ends.items()}

    async def _drop_consumer(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            # deferred as in _fetch: eventfold.kafka imports aiokafka (loaded by now)
            from eventfold.kafka import stop_client

            await stop_client(consumer.stop, "log-end consumer", within=2.0)

    async def close(self) -> None:
        """Stop a refresh in flight and the Kafka client."""
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._drop_consumer()

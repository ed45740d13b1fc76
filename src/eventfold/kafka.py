"""Kafka clients with Eventfold's settings: an idempotent producer, manual-offset consumers."""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import struct
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, for_code

from eventfold.errors import RetriableError
from eventfold.settings import Settings

log = logging.getLogger("eventfold.kafka")

#: Every request to the broker has a deadline; nothing waits forever.
REQUEST_TIMEOUT_MS = 15_000
#: CreateTopics' answer for a topic that exists already (another client was first).
TOPIC_ALREADY_EXISTS = 36

#: The ingest producer's delivery deadline: waiting for metadata, a batch waiting to
#: be sent, and each produce request. The publisher bounds a whole attempt a little
#: above it and replaces the producer when it runs out.
INGEST_REQUEST_TIMEOUT_MS = 5_000


def make_producer(
    settings: Settings,
    *,
    client_id: str = "eventfold-ingest",
    request_timeout_ms: int = REQUEST_TIMEOUT_MS,
) -> AIOKafkaProducer:
    """An idempotent producer (``acks=all``): a retried send is never written twice."""
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id=client_id,
        enable_idempotence=True,
        acks="all",
        # No linger: a lone write would wait it out on every request (2 ms was half
        # of a write's 4 ms at low load), and under load records still share a
        # request, queued while the previous produce request to the broker is in flight.
        linger_ms=0,
        max_batch_size=256 * 1024,
        max_request_size=2 * 1024 * 1024,
        request_timeout_ms=request_timeout_ms,
        retry_backoff_ms=100,
        compression_type=None,
        partitioner=partition_for_key,
    )


def make_consumer(
    settings: Settings,
    *,
    group: str,
    client_id: str,
    max_poll_records: int,
    group_instance_id: str | None = None,
) -> AIOKafkaConsumer:
    """A consumer whose positions the caller owns (no auto commit, starts at the beginning).

    With ``group_instance_id`` it is a static member of ``group`` (see
    :mod:`consumers.runtime.membership`: the id must be unique among running members).
    """
    return AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=group,
        group_instance_id=group_instance_id,
        client_id=client_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=max_poll_records,
        # Small fetches are plenty locally and bound what the prefetch buffers: with
        # 16 MB / 4 MB the projector's catch-up peaked at 165-170 MB RSS and was
        # slower (11.0 s vs 9.5 s for 136,000 events) than with these (121-124 MB).
        fetch_max_bytes=4 * 1024 * 1024,
        max_partition_fetch_bytes=1024 * 1024,
        request_timeout_ms=REQUEST_TIMEOUT_MS + 5_000,
        session_timeout_ms=int(settings.kafka_session_timeout_seconds * 1000),
        heartbeat_interval_ms=heartbeat_ms(settings),
        isolation_level="read_committed",
    )


def heartbeat_ms(settings: Settings) -> int:
    """A consumer's heartbeat interval: a tenth of its session (a missed beat or two is
    no loss of the session), at most a second."""
    return min(1_000, int(settings.kafka_session_timeout_seconds * 100))


def message_key(tenant: str, subject: str | None, event_id: str) -> bytes:
    """The partition key: tenant + subject, so one record's events keep their order."""
    return f"{tenant}/{subject if subject is not None else event_id}".encode()


_MASK = 0xFFFFFFFF
_M = 0x5BD1E995
_WORDS = struct.Struct("<I")


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 hash (``Utils.murmur2`` of the Java client) of ``data``.

    The same arithmetic as aiokafka's version, reading whole 32-bit words at once.
    """
    length = len(data)
    h = 0x9747B28C ^ length
    body = length & ~3
    for (k,) in _WORDS.iter_unpack(data[:body]):
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    tail = length & 3
    if tail >= 3:
        h ^= data[body + 2] << 16
    if tail >= 2:
        h ^= data[body + 1] << 8
    if tail >= 1:
        h ^= data[body]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


@functools.lru_cache(maxsize=16_384)
def _key_hash(key: bytes) -> int:
    # Keys repeat (every event of one record has the same key): hash each once.
    return murmur2(key) & 0x7FFFFFFF


def partition_for_key(
    key: bytes | None, all_partitions: Sequence[int], available: Sequence[int]
) -> int:
    """The partition Kafka's default partitioner picks for ``key``, hashing each key once.

    The same choice as the Java client's and aiokafka's default (murmur2 of the
    key, positive, modulo the partition count): other producers of the same keys
    must land on the same partitions, or one record's events would lose their order.
    """
    if key is None:
        return random.choice(available or all_partitions)  # noqa: S311 - not a secret
    return all_partitions[_key_hash(key) % len(all_partitions)]


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """A topic to create: its name, partitions, replicas and topic-level settings."""

    name: str
    partitions: int
    replicas: int
    configs: Mapping[str, str] = field(default_factory=dict)


class TopicsNotReady(RetriableError):
    """Topics created but not yet served: a partition without a leader, or unknown still."""


async def create_missing_topics(
    admin: AIOKafkaAdminClient, topics: Sequence[TopicSpec], *, timeout_ms: int = 15_000
) -> list[str]:
    """Create those of ``topics`` that do not exist; the names created.

    An existing topic is left as it is (partitions and settings included), and one
    that another client creates at the same moment counts as existing; any other
    refusal raises the :class:`aiokafka.errors.KafkaError` of its code.
    """
    existing = set(await admin.list_topics())
    missing = [t for t in topics if t.name not in existing]
    if not missing:
        return []
    response = await admin.create_topics(
        [
            NewTopic(t.name, t.partitions, t.replicas, topic_configs=dict(t.configs))
            for t in missing
        ],
        timeout_ms=timeout_ms,
    )
    created = []
    for topic_error in response.topic_errors:
        name, code = topic_error[0], topic_error[1]
        message = topic_error[2] if len(topic_error) > 2 else ""
        if code == 0:
            created.append(name)
        elif code != TOPIC_ALREADY_EXISTS:
            raise for_code(code)(f"creating topic {name} failed: {message or code}")
    return created


async def wait_until_served(
    admin: AIOKafkaAdminClient, topics: Sequence[TopicSpec], *, within: float = 30.0
) -> None:
    """Wait until the broker's metadata has every partition of ``topics`` with a leader.

    A topic is answered "unknown" or leaderless for a moment after its creation; a
    consumer that reads the metadata then goes on without the topic until its next
    metadata refresh (minutes). The partitions are those the broker lists: a topic
    that existed before with another count is served as it is. Raises
    :class:`TopicsNotReady` after ``within`` s.
    """
    names = [t.name for t in topics]
    deadline = asyncio.get_running_loop().time() + within
    while True:
        described = await admin.describe_topics(names)
        lacking = sorted(set(names) - {d["topic"] for d in described if _served(d)})
        if not lacking:
            return
        if asyncio.get_running_loop().time() >= deadline:
            raise TopicsNotReady(f"topics not served {within:.0f} s after creation: {lacking}")
        await asyncio.sleep(0.1)


def _served(described: Mapping[str, Any]) -> bool:
    partitions = described.get("partitions")
    if described.get("error_code") or not partitions:
        return False
    return all(not p.get("error_code") and p.get("leader", -1) >= 0 for p in partitions)


#: Seconds a Kafka client is given to stop (leave its group, close its connections).
STOP_SECONDS = 5.0


async def stop_client(
    stop: Callable[[], Awaitable[None]], what: str, within: float = STOP_SECONDS
) -> None:
    """Run ``stop`` (a Kafka client's stop) for at most ``within`` seconds, whether or not
    Kafka answers; ``what`` names the client in the log.

    With the broker gone, aiokafka's consumer stop re-raises the cancellation of the
    fetch tasks it cancels itself (its fetcher awaits them unguarded), and leaving the
    group waits for a request timeout: either cut the caller's own shutdown short (the
    dead-letter producer, the live feed, the pool left open; a faust thread's loop never
    told the app it stopped). A cancellation aimed at the caller's task still propagates.
    """
    task = asyncio.current_task()
    try:
        await asyncio.wait_for(stop(), within)
    except TimeoutError:
        log.warning("kafka client not stopped in time, dropped", extra={"client": what})
    except KafkaError as exc:
        log.warning(
            "kafka client stopped with an error", extra={"client": what, "error": repr(exc)}
        )
    except asyncio.CancelledError:
        if task is not None and task.cancelling():
            raise
        log.warning("kafka client stopped with its requests cut off", extra={"client": what})

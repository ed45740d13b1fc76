"""A 3-node Kafka cluster under write load loses a partition leader: nothing acknowledged
is lost or applied twice, and writes resume within seconds.

Runs on a PRIVATE stack (``infra up`` with ``kafka_brokers=3``: three KRaft nodes, each
broker and controller voter, topics with 3 replicas and ``min.insync.replicas=2``; its
own PostgreSQL and Redis), never on the shared one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from aiokafka.admin import AIOKafkaAdminClient

from devstack import InfraError, down_async, status_async, up_async
from devstack.kafka import Kafka, cluster
from devstack.process import live_pid
from eventfold.settings import Settings
from tests.integration.private_stack import (
    halt,
    private_stack,
    quiet,
    start,
    writing,
)

pytestmark = [pytest.mark.integration, pytest.mark.recovery]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def three_brokers() -> AsyncIterator[Settings]:
    """A private stack whose Kafka is a 3-node cluster."""
    async with private_stack(kafka_brokers=3) as settings:
        yield settings


async def _partitions(settings: Settings) -> list[dict[str, Any]]:
    """The events topic's partitions: leader, replicas and in-sync replicas of each."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        (topic,) = await admin.describe_topics([settings.events_topic])
    finally:
        await admin.close()
    partitions: list[dict[str, Any]] = topic["partitions"]
    return partitions


async def _all_in_sync(settings: Settings, within: float = 90.0) -> list[dict[str, Any]]:
    """Wait until every partition has all three replicas in sync again."""
    deadline = time.monotonic() + within
    while True:
        partitions = await _partitions(settings)
        if all(len(p["isr"]) == 3 for p in partitions):
            return partitions
        assert time.monotonic() < deadline, partitions
        await asyncio.sleep(0.5)


async def test_the_cluster_is_three_voters_with_replicated_topics(
    three_brokers: Settings,
) -> None:
    settings = three_brokers
    statuses = {s.name: s for s in await status_async(settings)}
    assert [name for name in statuses if name.startswith("kafka")] == [
        "kafka-1",
        "kafka-2",
        "kafka-3",
    ]
    assert all(statuses[f"kafka-{i}"].running for i in (1, 2, 3)), statuses
    # A second `up` leaves the running nodes alone (same pids).
    again = {s.name: s for s in await up_async(settings, progress=quiet)}
    assert [again[f"kafka-{i}"].detail for i in (1, 2, 3)] == [
        statuses[f"kafka-{i}"].detail for i in (1, 2, 3)
    ]
    for node in cluster(settings):
        props = node.properties.read_text()
        assert "controller.quorum.voters=1@127.0.0.1:" in props
        assert "min.insync.replicas=2" in props
    partitions = await _all_in_sync(settings)
    assert all(sorted(p["replicas"]) == [1, 2, 3] for p in partitions), partitions
    # Leadership is spread: every node leads some partition of the log.
    assert {p["leader"] for p in partitions} == {1, 2, 3}, partitions


async def test_killing_a_partition_leader_loses_no_acknowledged_write(
    three_brokers: Settings,
) -> None:
    settings = three_brokers
    async with writing(settings) as (_api, load):
        await load.more_acks(60)
        before = await _partitions(settings)
        # The node leading the most partitions of the log goes, without a clean
        # shutdown: its partitions need new leaders from the other two.
        victim_id, led = Counter(p["leader"] for p in before).most_common(1)[0]
        victim = Kafka(settings, victim_id)
        acked_at_kill = len(load.acked)
        killed_at = time.monotonic()
        await halt(victim, kill=True)
        await load.more_acks(30, within=60)
        print(
            f"kafka-{victim_id} (leader of {led} of {len(before)} partitions) killed;"
            f" {len(load.acked) - acked_at_kill} events acknowledged within"
            f" {time.monotonic() - killed_at:.1f} s after, the longest write waited"
            f" {load.longest_wait(killed_at):.1f} s; answers {load.answers}"
        )
        after = await _partitions(settings)
        assert all(p["leader"] != victim_id for p in after), after
        assert all(victim_id not in p["isr"] for p in after), after
        # Writes go on with two of three in sync (min.insync.replicas=2) ...
        await load.more_acks(30)
        # ... and the node rejoins: every partition is fully in sync again.
        await start(victim)
        await _all_in_sync(settings)
        await load.more_acks(30)


async def test_either_layout_refuses_to_start_beside_the_other_and_stops_it(
    three_brokers: Settings,
) -> None:
    settings = three_brokers
    single = dataclasses.replace(
        settings, kafka_brokers=1, kafka_bootstrap=settings.kafka_bootstrap.split(",")[0]
    )
    with pytest.raises(InfraError, match=r"kafka-1 \(another Kafka layout .*infra down"):
        await up_async(single, progress=quiet)
    # `down` in the single-node layout stops the cluster's nodes too: nothing is left.
    stopped = {s.name: s for s in await down_async(single, progress=quiet)}
    assert {"kafka-1", "kafka-2", "kafka-3"} <= set(stopped)
    assert all(live_pid(node.pid_path, node.markers) is None for node in cluster(settings))

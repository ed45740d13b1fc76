"""Topics a process creates for itself are served before anything subscribes to them.

A consumer whose first metadata answer comes while a new topic is still unknown
or leaderless goes on without it until its next refresh, minutes later: an
analytics worker leading its group's rebalance then assigned one of its tables'
changelogs no topic group, and faust's consumer crashed on the next write to it.
"""

from __future__ import annotations

import uuid

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError

from consumers.analytics.processor import Analytics
from eventfold.kafka import TopicSpec, create_missing_topics, wait_until_served
from eventfold.metrics import Metrics
from eventfold.settings import Settings

pytestmark = pytest.mark.integration


async def first_metadata(settings: Settings, topics: list[str]) -> dict[str, int]:
    """Partitions per topic in the first metadata answer of a new consumer of ``topics``."""
    consumer = AIOKafkaConsumer(*topics, bootstrap_servers=settings.kafka_bootstrap)
    await consumer.start()
    try:
        return {t: len(consumer.partitions_for_topic(t) or ()) for t in topics}
    finally:
        await consumer.stop()


async def test_created_topics_are_served_once_the_wait_returns(
    stack: Settings, admin: AIOKafkaAdminClient
) -> None:
    name = f"eventfold-test-topics-{uuid.uuid4().hex[:8]}"
    specs = [TopicSpec(f"{name}-{i}", 3, 1, {"cleanup.policy": "compact"}) for i in range(3)]
    assert await create_missing_topics(admin, specs) == [s.name for s in specs]
    await wait_until_served(admin, specs)
    assert await first_metadata(stack, [s.name for s in specs]) == {s.name: 3 for s in specs}
    # Idempotent: the second call creates nothing and leaves the settings as they are.
    assert await create_missing_topics(admin, specs) == []
    [described] = await admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, name + "-0")]
    )
    configs = {c[0]: c[1] for c in described.resources[0][4]}
    assert configs["cleanup.policy"] == "compact"


async def test_a_topic_that_exists_with_another_partition_count_is_served_as_it_is(
    admin: AIOKafkaAdminClient,
) -> None:
    # An operator raised EVENTFOLD_TOPIC_PARTITIONS after the topic was made: the
    # topic is left as it is, and waiting for it must not wait for partitions it lacks.
    name = f"eventfold-test-topics-{uuid.uuid4().hex[:8]}"
    assert await create_missing_topics(admin, [TopicSpec(name, 1, 1)]) == [name]
    wider = [TopicSpec(name, 3, 1)]
    assert await create_missing_topics(admin, wider) == []
    await wait_until_served(admin, wider, within=5.0)


async def test_a_topic_the_broker_refuses_raises_its_kafka_error(
    admin: AIOKafkaAdminClient,
) -> None:
    spec = TopicSpec(
        f"eventfold-test-topics-{uuid.uuid4().hex[:8]}", 1, 1, {"cleanup.policy": "no"}
    )
    with pytest.raises(KafkaError, match=spec.name):
        await create_missing_topics(admin, [spec])


async def test_the_analytics_changelogs_exist_before_the_app_starts(lane: Settings) -> None:
    worker = Analytics(lane, None, Metrics())
    await worker.declare_changelogs()
    names = [t.table.changelog_topic.get_topic_name() for t in worker.tables().values()]
    partitions = lane.topic_partitions
    assert await first_metadata(lane, names) == dict.fromkeys(names, partitions)

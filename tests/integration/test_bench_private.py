"""Benchmark runs leave no topics behind: their own are deleted, nobody else's."""

from __future__ import annotations

import uuid

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from benchmarks.private import drop_run_topics, private_settings

from devstack import ensure_topics

pytestmark = pytest.mark.integration


async def test_a_run_deletes_its_own_topics_and_only_those() -> None:
    run, other = uuid.uuid4().hex[:8], uuid.uuid4().hex[:8]
    mine, theirs = private_settings(run, partitions=1), private_settings(other, partitions=1)
    await ensure_topics(mine)
    await ensure_topics(theirs)
    # A topic faust makes for an analytics worker of the run (its app id's prefix).
    changelog = f"{mine.consumer_group_prefix}-analytics-counts-changelog"
    admin = AIOKafkaAdminClient(bootstrap_servers=mine.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(changelog, 1, 1)])
        gone = await drop_run_topics(mine.kafka_bootstrap, [run])
        assert gone == sorted([mine.events_topic, mine.dlq_topic, changelog])
        left = set(await admin.list_topics())
        assert {theirs.events_topic, theirs.dlq_topic} <= left
    finally:
        await drop_run_topics(mine.kafka_bootstrap, [other])
        await admin.close()

"""Settings of one benchmark run: topics and consumer groups of its own.

Every benchmark works on a private topic pair and group prefix named after a
random run id, so runs never read each other's events. The topics of a
process's runs (events, dead letters, and those faust makes for an analytics
worker) are deleted when the process exits: a broker keeping thousands of old
topics makes every client's metadata read slower, and the runs after it with it.
"""

from __future__ import annotations

import asyncio
import atexit
import dataclasses
import sys
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient

from eventfold.settings import Settings

#: Run ids of this process, and the broker their topics are on.
_RUNS: dict[str, str] = {}


def private_settings(run_id: str, *, partitions: int, **overrides: Any) -> Settings:
    """The environment's settings on run ``run_id``'s own topics and groups, with ``overrides``."""
    settings = dataclasses.replace(
        Settings.from_env(),
        events_topic=f"eventfold.bench-{run_id}.events",
        dlq_topic=f"eventfold.bench-{run_id}.dlq",
        consumer_group_prefix=f"eventfold-bench-{run_id}",
        topic_partitions=partitions,
        **overrides,
    )
    if not _RUNS:
        atexit.register(_drop_at_exit)
    _RUNS[run_id] = settings.kafka_bootstrap
    return settings


def run_topics(topics: list[str], run_ids: list[str]) -> list[str]:
    """The names among ``topics`` that belong to one of the runs ``run_ids``."""
    marks = [f"bench-{run_id}." for run_id in run_ids] + [f"bench-{run_id}-" for run_id in run_ids]
    return sorted(t for t in topics if any(m in t for m in marks))


async def drop_run_topics(bootstrap: str, run_ids: list[str]) -> list[str]:
    """Delete the topics of the runs ``run_ids``; the names deleted."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        gone = run_topics(await admin.list_topics(), run_ids)
        for first in range(0, len(gone), 200):
            await admin.delete_topics(gone[first : first + 200])
        return gone
    finally:
        await admin.close()


def _drop_at_exit() -> None:
    for bootstrap in sorted(set(_RUNS.values())):
        runs = [run for run, at in _RUNS.items() if at == bootstrap]
        try:
            asyncio.run(drop_run_topics(bootstrap, runs))
        except Exception as exc:  # the broker may be gone: say so, do not fail the exit
            print(f"benchmark topics not deleted: {exc!r}", file=sys.stderr)

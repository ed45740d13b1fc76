"""Settings of one benchmark run: topics and consumer groups of its own.

Every benchmark works on a private topic pair and group prefix named after a
random run id, so runs never read each other's events (and a run's topic can
be dropped without touching the development stack's).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from eventfold.settings import Settings


def private_settings(run_id: str, *, partitions: int, **overrides: Any) -> Settings:
    """The environment's settings on run ``run_id``'s own topics and groups, with ``overrides``."""
    return dataclasses.replace(
        Settings.from_env(),
        events_topic=f"eventfold.bench-{run_id}.events",
        dlq_topic=f"eventfold.bench-{run_id}.dlq",
        consumer_group_prefix=f"eventfold-bench-{run_id}",
        topic_partitions=partitions,
        **overrides,
    )

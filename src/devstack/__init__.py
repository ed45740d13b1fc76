"""The local stack without Docker: Kafka, PostgreSQL, Redis and S3 under ``var/``.

``up`` installs what is missing (Debian packages, jars from Maven Central),
starts each service detached with a pid file under ``settings.var_dir``, waits
until each answers, and provisions it (role and database, bucket, topics).
``down`` stops only what ``up`` started; ``status`` probes and never raises.
Services named in ``settings.external`` are the user's own and only probed.
"""

from devstack.base import InfraError, ServiceStatus
from devstack.kafka import ensure_topics
from devstack.s3 import ensure_bucket
from devstack.sentinel import with_sentinels
from devstack.stack import (
    down,
    down_async,
    status,
    status_async,
    up,
    up_async,
)

__all__ = [
    "InfraError",
    "ServiceStatus",
    "down",
    "down_async",
    "ensure_bucket",
    "ensure_topics",
    "status",
    "status_async",
    "up",
    "up_async",
    "with_sentinels",
]

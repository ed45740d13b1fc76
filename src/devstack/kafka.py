"""Apache Kafka 4 (the real broker, KRaft combined mode, one node) from Maven Central.

The jars come from infra/kafka/pom.xml, the configuration from the template
infra/kafka/server.properties. Storage is formatted once (``StorageTool format
--standalone``, a dynamic single-voter quorum); after that a start is just
``java kafka.Kafka server.properties``. Readiness is a real Kafka metadata
round-trip, not an open port: the broker listens a moment before it serves.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import string
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from devstack.base import InfraError, Progress, oneline
from devstack.java import JavaService
from devstack.process import run, spawn, tcp_open, wait_ready
from eventfold.settings import Settings

TOPIC_ALREADY_EXISTS = 36

#: Topic-level settings of the events log and its dead-letter topic. Kafka is the
#: log of record (replay rebuilds everything from it), so nothing expires.
TOPIC_CONFIGS = {"retention.ms": "-1", "cleanup.policy": "delete"}


@contextlib.contextmanager
def _quiet_aiokafka() -> Iterator[None]:
    """Mute aiokafka's connection-refused errors while we poll a starting broker."""
    logger = logging.getLogger("aiokafka")
    previous = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(previous)


@contextlib.asynccontextmanager
async def _admin(settings: Settings, timeout_ms: int = 5000) -> Any:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id="eventfold-infra",
        request_timeout_ms=timeout_ms,
    )
    try:
        await admin.start()
        yield admin
    finally:
        await admin.close()


async def ensure_topics(settings: Settings, *, replication_factor: int = 1) -> list[str]:
    """Create the events topic and its dead-letter topic when missing.

    Idempotent (an existing topic is left as it is, partition count included);
    returns the names it created. ``replication_factor`` is 1 for the local
    single-node broker; pass 3 against a real cluster.
    """
    wanted = {
        settings.events_topic: settings.topic_partitions,
        settings.dlq_topic: settings.topic_partitions,
    }
    async with _admin(settings, timeout_ms=15000) as admin:
        existing = set(await admin.list_topics())
        missing = [name for name in wanted if name not in existing]
        if not missing:
            return []
        response = await admin.create_topics(
            [
                NewTopic(
                    name,
                    num_partitions=wanted[name],
                    replication_factor=replication_factor,
                    topic_configs=dict(TOPIC_CONFIGS),
                )
                for name in missing
            ],
            timeout_ms=15000,
        )
    created = []
    for topic_error in response.topic_errors:
        name, code = topic_error[0], topic_error[1]
        message = topic_error[2] if len(topic_error) > 2 else ""
        if code == 0:
            created.append(name)
        elif code != TOPIC_ALREADY_EXISTS:
            # Another process creating the same topic at once is fine; anything else is not.
            raise InfraError(f"kafka: creating topic {name} failed: error {code} {message or ''}")
    return created


def random_cluster_id() -> str:
    """A cluster id in Kafka's own format (URL-safe base64 of a random UUID)."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        # Kafka's Uuid.randomUuid() skips ids starting with "-" (they read as flags).
        if not text.startswith("-"):
            return text


class Kafka(JavaService):
    """The Kafka broker + controller, data in var/kafka/data."""

    name: ClassVar[str] = "kafka"
    env_var: ClassVar[str] = "EVENTFOLD_KAFKA_BOOTSTRAP"
    infra_name: ClassVar[str] = "kafka"
    main_class: ClassVar[str] = "kafka.Kafka"
    heap: ClassVar[tuple[str, str]] = ("-Xms256m", "-Xmx1g")
    # Controlled shutdown of a single node is quick, but flushing logs may not be.
    stop_timeout: ClassVar[float] = 45.0
    start_timeout: ClassVar[float] = 90.0

    @property
    def _bootstrap(self) -> tuple[str, int]:
        first = self.settings.kafka_bootstrap.split(",")[0].strip()
        host, _, port = first.rpartition(":")
        if not host or not port.isdigit():
            raise InfraError(f"kafka: cannot read host:port from {first!r}")
        return host.strip("[]"), int(port)

    @property
    def host(self) -> str:
        """The PLAINTEXT listener's host, from ``settings.kafka_bootstrap``."""
        return self._bootstrap[0]

    @property
    def port(self) -> int:
        """The PLAINTEXT listener's port; the controller listens on the next one."""
        return self._bootstrap[1]

    @property
    def ports(self) -> tuple[int, ...]:
        """The client listener and the controller listener right after it."""
        return (self.port, self.port + 1)

    @property
    def data_dir(self) -> Path:
        """log.dirs and the KRaft metadata log."""
        return self.root / "data"

    @property
    def properties(self) -> Path:
        """The generated server.properties."""
        return self.root / "server.properties"

    @property
    def markers(self) -> tuple[str, ...]:
        """The main class and our generated server.properties."""
        return (self.main_class, str(self.properties))

    def _jvm_extra(self) -> tuple[str, ...]:
        logs = self.var / "log" / "kafka"
        logs.mkdir(parents=True, exist_ok=True)
        return (
            f"-Dlog4j2.configurationFile={self.infra_dir / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={logs}",
        )

    def _write_properties(self) -> None:
        template = string.Template((self.infra_dir / "server.properties").read_text())
        self.properties.write_text(
            template.substitute(
                host=self.host,
                port=self.port,
                controller_host=self.host,
                controller_port=self.port + 1,
                log_dirs=self.data_dir,
                partitions=self.settings.topic_partitions,
            )
        )

    async def start(self, progress: Progress) -> int:
        """Write server.properties, format storage on first run, launch the broker."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._write_properties()
        if not (self.data_dir / "meta.properties").exists():
            progress(f"kafka: formatting storage in {self.data_dir}")
            java = self.java_argv(
                "format",
                "--standalone",
                "--ignore-formatted",
                "--cluster-id",
                random_cluster_id(),
                "--config",
                str(self.properties),
                extra=self._jvm_extra(),
            )
            java[java.index(self.main_class)] = "kafka.tools.StorageTool"
            await run(java, what="kafka: StorageTool format", log_path=self.log_path)
        progress(f"kafka: starting broker on {self.address}")
        return spawn(
            self.java_argv(str(self.properties), extra=self._jvm_extra()),
            log_path=self.log_path,
            pid_path=self.pid_path,
            cwd=self.root,
        )

    async def _serving(self) -> bool:
        if not await tcp_open(self.host, self.port, within=0.5):
            return False
        return await self.probe() is None

    async def ready(self, pid: int | None, progress: Progress) -> None:
        """Wait for a metadata answer, then create the topics if missing."""
        await wait_ready(
            self._serving,
            what="kafka",
            within=self.start_timeout,
            pid=pid,
            log_path=self.var / "log" / "kafka" / "server.log",
        )
        try:
            created = await ensure_topics(self.settings)
        except InfraError:
            raise
        except Exception as exc:
            raise InfraError(
                f"kafka: could not create topics: {oneline(exc)}; see {self.var / 'log' / 'kafka'}"
            ) from None
        for name in created:
            progress(f"kafka: created topic {name}")

    async def probe(self) -> str | None:
        """A metadata request: the broker answers and knows its controller."""
        try:
            with _quiet_aiokafka():
                async with _admin(self.settings, timeout_ms=3000) as admin:
                    cluster = await admin.describe_cluster()
        except Exception as exc:
            return oneline(exc)
        if not cluster.get("brokers"):
            return "no brokers in metadata"
        return None

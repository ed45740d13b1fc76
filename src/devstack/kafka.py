"""Apache Kafka 4 (the real broker, KRaft combined mode) from Maven Central.

The jars come from infra/kafka/pom.xml, the configuration from the template
infra/kafka/server.properties. By default one node (``kafka``), its storage
formatted once with ``StorageTool format --standalone`` (a dynamic single-voter
quorum). With ``settings.kafka_brokers`` = n > 1 the stack runs n nodes instead
(``kafka-1`` ... ``kafka-n``, each broker and controller, a static n-voter
quorum, data in var/kafka/cluster/node-i), every topic replicated
``settings.kafka_replication_factor`` times. After the format a start is just
``java kafka.Kafka node.properties``. Readiness is a real Kafka metadata
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

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from devstack.base import InfraError, Progress, oneline
from devstack.java import JavaService
from devstack.process import live_pid, run, spawn, tcp_open, wait_ready
from eventfold.kafka import TopicsNotReady, TopicSpec, create_missing_topics, wait_until_served
from eventfold.settings import Settings

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
async def _admin(settings: Settings, timeout_ms: int = 5000, *, bootstrap: str = "") -> Any:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap or settings.kafka_bootstrap,
        client_id="eventfold-infra",
        request_timeout_ms=timeout_ms,
    )
    try:
        await admin.start()
        yield admin
    finally:
        await admin.close()


def topic_configs(settings: Settings) -> dict[str, str]:
    """The topic-level settings of the events log and its dead-letter topic."""
    return {
        **TOPIC_CONFIGS,
        "min.insync.replicas": str(settings.kafka_min_insync_replicas),
    }


async def ensure_topics(settings: Settings) -> list[str]:
    """Create the events topic and its dead-letter topic when missing.

    Idempotent (an existing topic is left as it is, partition count and
    replicas included); returns the names it created, once every partition of
    both has a leader. Each gets
    ``settings.kafka_replication_factor`` replicas and ``min.insync.replicas``
    one less (see :func:`topic_configs`).
    """
    topics = [
        TopicSpec(name, settings.topic_partitions, settings.kafka_replication_factor,
                  topic_configs(settings))
        for name in (settings.events_topic, settings.dlq_topic)
    ]  # fmt: skip
    async with _admin(settings, timeout_ms=15000) as admin:
        try:
            created = await create_missing_topics(admin, topics)
            await wait_until_served(admin, topics)
        except (KafkaError, TopicsNotReady) as exc:
            raise InfraError(f"kafka: {exc}") from exc
    return created


def random_cluster_id() -> str:
    """A cluster id in Kafka's own format (URL-safe base64 of a random UUID)."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        # Kafka's Uuid.randomUuid() skips ids starting with "-" (they read as flags).
        if not text.startswith("-"):
            return text


class Kafka(JavaService):
    """One Kafka node (broker + controller): the single node, or node i of a cluster.

    ``node`` None is the default stack's one node (``kafka``, data in
    var/kafka/data); ``node`` i of ``settings.kafka_brokers`` is ``kafka-i`` with
    data in var/kafka/cluster/node-i, listening two ports further per node.
    """

    name: ClassVar[str] = "kafka"
    env_var: ClassVar[str] = "EVENTFOLD_KAFKA_BOOTSTRAP"
    infra_name: ClassVar[str] = "kafka"
    main_class: ClassVar[str] = "kafka.Kafka"
    heap: ClassVar[tuple[str, str]] = ("-Xms256m", "-Xmx1g")
    # Controlled shutdown of a single node is quick, but flushing logs may not be.
    stop_timeout: ClassVar[float] = 45.0
    start_timeout: ClassVar[float] = 90.0

    def __init__(self, settings: Settings, node: int | None = None) -> None:
        super().__init__(settings)
        self.node = node
        if node is not None:
            # An instance attribute shadows the class's: pid file, log and status
            # line are per node.
            self.name = f"kafka-{node}"  # type: ignore[misc]

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
        """The PLAINTEXT listener's port (the first bootstrap address's, two further per
        node of a cluster); the controller listens on the next one."""
        return self._bootstrap[1] + 2 * ((self.node or 1) - 1)

    @property
    def ports(self) -> tuple[int, ...]:
        """The client listener and the controller listener right after it."""
        return (self.port, self.port + 1)

    @property
    def cluster_dir(self) -> Path:
        """var/kafka/cluster: the nodes of a cluster and its id."""
        return self.root / "cluster"

    @property
    def data_dir(self) -> Path:
        """log.dirs and the KRaft metadata log."""
        if self.node is None:
            return self.root / "data"
        return self.cluster_dir / f"node-{self.node}"

    @property
    def properties(self) -> Path:
        """The generated server.properties."""
        if self.node is None:
            return self.root / "server.properties"
        return self.cluster_dir / f"node-{self.node}.properties"

    @property
    def markers(self) -> tuple[str, ...]:
        """The main class and our generated server.properties."""
        return (self.main_class, str(self.properties))

    def _jvm_extra(self) -> tuple[str, ...]:
        logs = self.var / "log" / self.name
        logs.mkdir(parents=True, exist_ok=True)
        return (
            f"-Dlog4j2.configurationFile={self.infra_dir / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={logs}",
        )

    def _quorum(self) -> str:
        if self.node is None:
            # The single node's quorum is dynamic (formatted --standalone).
            return f"controller.quorum.bootstrap.servers={self.host}:{self.port + 1}"
        voters = ",".join(
            f"{peer.node}@{peer.host}:{peer.port + 1}" for peer in cluster(self.settings)
        )
        return f"controller.quorum.voters={voters}"

    def _write_properties(self) -> None:
        template = string.Template((self.infra_dir / "server.properties").read_text())
        self.properties.write_text(
            template.substitute(
                node_id=self.node or 1,
                quorum=self._quorum(),
                host=self.host,
                port=self.port,
                controller_host=self.host,
                controller_port=self.port + 1,
                log_dirs=self.data_dir,
                partitions=self.settings.topic_partitions,
                replicas=self.settings.kafka_replication_factor,
                min_isr=self.settings.kafka_min_insync_replicas,
            )
        )

    def _cluster_id(self) -> str:
        """The id every node of this stack's Kafka is formatted with (one per cluster)."""
        if self.node is None:
            return random_cluster_id()
        path = self.cluster_dir / "cluster.id"
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            cluster_id = random_cluster_id()
            path.write_text(cluster_id + "\n")
            return cluster_id

    async def start(self, progress: Progress) -> int:
        """Write server.properties, format storage on first run, launch the broker."""
        self.properties.parent.mkdir(parents=True, exist_ok=True)
        self._write_properties()
        if not (self.data_dir / "meta.properties").exists():
            progress(f"{self.name}: formatting storage in {self.data_dir}")
            # The single node's quorum is formatted as a standalone dynamic one; a
            # cluster's voters are the static list in its properties.
            quorum = ["--standalone"] if self.node is None else []
            java = self.java_argv(
                "format",
                *quorum,
                "--ignore-formatted",
                "--cluster-id",
                self._cluster_id(),
                "--config",
                str(self.properties),
                extra=self._jvm_extra(),
            )
            java[java.index(self.main_class)] = "kafka.tools.StorageTool"
            await run(java, what=f"{self.name}: StorageTool format", log_path=self.log_path)
        progress(f"{self.name}: starting broker on {self.address}")
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

    async def _whole(self) -> bool:
        """Every node of the cluster is registered (topics with n replicas can be made)."""
        try:
            with _quiet_aiokafka():
                async with _admin(self.settings, timeout_ms=3000) as admin:
                    found = await admin.describe_cluster()
        except Exception:
            return False
        return len(found.get("brokers") or ()) >= self.settings.kafka_brokers

    async def ready(self, pid: int | None, progress: Progress) -> None:
        """Wait for a metadata answer, then create the topics if missing.

        On a cluster only the last node creates them, once every node is
        registered (a topic cannot have more replicas than live brokers).
        """
        logs = self.var / "log" / self.name / "server.log"
        await wait_ready(
            self._serving, what=self.name, within=self.start_timeout, pid=pid, log_path=logs
        )
        if self.node is not None:
            if self.node != self.settings.kafka_brokers:
                return
            await wait_ready(
                self._whole, what="kafka cluster", within=self.start_timeout, pid=pid, log_path=logs
            )
        try:
            created = await ensure_topics(self.settings)
        except InfraError:
            raise
        except Exception as exc:
            raise InfraError(
                f"kafka: could not create topics: {oneline(exc)}; see {logs.parent}"
            ) from None
        for name in created:
            progress(f"kafka: created topic {name}")

    async def probe(self) -> str | None:
        """A metadata request to this node: it answers and knows its controller."""
        try:
            with _quiet_aiokafka():
                # A node of our cluster answers for itself; the single node (or the
                # user's own cluster) through the configured bootstrap servers.
                own = self.address if self.node is not None else ""
                async with _admin(self.settings, timeout_ms=3000, bootstrap=own) as admin:
                    found = await admin.describe_cluster()
        except Exception as exc:
            return oneline(exc)
        if not found.get("brokers"):
            return "no brokers in metadata"
        return None


def cluster(settings: Settings) -> list[Kafka]:
    """The Kafka nodes of the stack: the single node, or ``kafka-1`` ... ``kafka-n``.

    A user's own Kafka (``EVENTFOLD_KAFKA_BOOTSTRAP`` set) is one entry, only probed.
    """
    if settings.kafka_brokers == 1 or "kafka" in settings.external:
        return [Kafka(settings)]
    return [Kafka(settings, node) for node in range(1, settings.kafka_brokers + 1)]


def strays(settings: Settings) -> list[Kafka]:
    """Kafka nodes eventfold started that the settings do not name (the other layout:
    the single node while a cluster is configured, or a cluster's nodes, of any size)."""
    wanted = {node.name for node in cluster(settings)}
    found = [Kafka(settings)] + [Kafka(settings, node) for node in range(1, 10)]
    return [
        node
        for node in found
        if node.name not in wanted and live_pid(node.pid_path, node.markers) is not None
    ]

"""Unit tests of the local stack's pure logic: no service is started here."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from devstack import InfraError
from devstack.kafka import Kafka, cluster, random_cluster_id
from devstack.postgres import Postgres
from devstack.process import alive, is_ours, live_pid, read_pid, spawn, stop
from devstack.redis import Redis
from devstack.s3 import S3Proxy
from devstack.stack import services
from eventfold.settings import Settings, cluster_bootstrap

REPO = Path(__file__).resolve().parents[2]


def test_cluster_id_is_a_kafka_uuid() -> None:
    for _ in range(200):
        cid = random_cluster_id()
        assert len(cid) == 22
        assert not cid.startswith("-")
        assert len(base64.urlsafe_b64decode(cid + "==")) == 16


def test_addresses_come_from_settings(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path,
        kafka_bootstrap="127.0.0.1:19092,127.0.0.1:29092",
        database_url="postgresql://app:s%40cret@127.0.0.1:15432/appdb",
        redis_url="redis://:pw@127.0.0.1:16379/2",
        s3_endpoint="http://127.0.0.1:19000",
    )
    kafka, pg, redis, s3 = Kafka(settings), Postgres(settings), Redis(settings), S3Proxy(settings)
    assert (kafka.host, kafka.port, kafka.ports) == ("127.0.0.1", 19092, (19092, 19093))
    assert pg.address == "127.0.0.1:15432"
    assert pg._url[2:] == ("app", "s@cret", "appdb")
    assert (redis.port, redis._url[2]) == (16379, "pw")
    assert s3.address == "127.0.0.1:19000"


def test_the_local_redis_never_evicts_state(tmp_path: Path) -> None:
    """Rate limits, dedup keys and analytics windows must not vanish under memory pressure:
    the (server-wide) policy is noeviction; the cache lives in the next database."""
    settings = Settings(home=tmp_path)
    config = Redis(settings).write_config().read_text().splitlines()
    assert "maxmemory-policy noeviction" in config
    assert (settings.redis_url, settings.cache_url) == (
        "redis://127.0.0.1:6379/0",
        "redis://127.0.0.1:6379/1",
    )


def test_bad_bootstrap_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(InfraError, match="host:port"):
        _ = Kafka(Settings(home=tmp_path, kafka_bootstrap="nonsense")).port


def test_start_order_and_external(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, external=frozenset({"redis"}))
    stack = services(settings)
    assert [s.name for s in stack] == ["postgres", "redis", "s3", "kafka"]
    assert [s.external for s in stack] == [False, True, False, False]


def _properties(path: Path) -> dict[str, str]:
    """A Java properties file's settings (no comments, no continuations: ours has none)."""
    return dict(
        line.split("=", 1) for line in path.read_text().splitlines() if line and line[0] != "#"
    )


def test_kafka_properties_render(tmp_path: Path) -> None:
    shutil.copytree(REPO / "infra" / "kafka", tmp_path / "infra" / "kafka")
    kafka = Kafka(Settings(home=tmp_path, topic_partitions=5))
    kafka.root.mkdir(parents=True)
    kafka._write_properties()
    props = _properties(kafka.properties)
    assert props["process.roles"] == "broker,controller"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:9092"
    assert props["controller.quorum.bootstrap.servers"] == "127.0.0.1:9093"
    assert props["log.dirs"] == str(tmp_path / "var" / "kafka" / "data")
    assert props["num.partitions"] == "5"
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["group.initial.rebalance.delay.ms"] == "0"


def test_a_cluster_node_renders_its_own_ports_data_and_the_static_voters(
    tmp_path: Path,
) -> None:
    shutil.copytree(REPO / "infra" / "kafka", tmp_path / "infra" / "kafka")
    settings = Settings(
        home=tmp_path, kafka_brokers=3, kafka_bootstrap=cluster_bootstrap("127.0.0.1:19092", 3)
    )
    nodes = cluster(settings)
    assert [(n.name, n.ports) for n in nodes] == [
        ("kafka-1", (19092, 19093)),
        ("kafka-2", (19094, 19095)),
        ("kafka-3", (19096, 19097)),
    ]
    assert [s.name for s in services(settings)] == [
        "postgres",
        "redis",
        "s3",
        "kafka-1",
        "kafka-2",
        "kafka-3",
    ]
    second = nodes[1]
    second.properties.parent.mkdir(parents=True)
    second._write_properties()
    props = _properties(second.properties)
    assert props["node.id"] == "2"
    assert props["controller.quorum.voters"] == (
        "1@127.0.0.1:19093,2@127.0.0.1:19095,3@127.0.0.1:19097"
    )
    assert "controller.quorum.bootstrap.servers" not in props
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19094,CONTROLLER://127.0.0.1:19095"
    assert props["log.dirs"] == str(tmp_path / "var" / "kafka" / "cluster" / "node-2")
    assert props["offsets.topic.replication.factor"] == "3"
    assert props["transaction.state.log.min.isr"] == "2"
    assert props["min.insync.replicas"] == "2"
    # Each node has its own pid file and marker, so status and down tell them apart.
    assert len({n.pid_path for n in nodes}) == len({n.markers for n in nodes}) == 3
    # One cluster id for every node, kept across starts.
    second.cluster_dir.mkdir(parents=True, exist_ok=True)
    assert nodes[0]._cluster_id() == nodes[2]._cluster_id()


def test_a_users_own_kafka_cluster_is_one_probed_entry(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path, kafka_brokers=3, kafka_bootstrap="k1:9092", external=frozenset({"kafka"})
    )
    assert [(n.name, n.external) for n in cluster(settings)] == [("kafka", True)]


def test_pid_files(tmp_path: Path) -> None:
    pid_file = tmp_path / "x.pid"
    assert read_pid(pid_file) is None
    pid_file.write_text("garbage")
    assert read_pid(pid_file) is None
    pid_file.write_text(f"{os.getpid()}\n")
    assert is_ours(os.getpid(), ["python"])
    assert live_pid(pid_file, ["python"]) == os.getpid()
    # Our own pid, but not what the file claims to be: stale, so it goes.
    assert live_pid(pid_file, ["no-such-marker-anywhere"]) is None
    assert not pid_file.exists()


async def test_spawn_detached_and_stop(tmp_path: Path) -> None:
    pid_file, log = tmp_path / "run" / "sleep.pid", tmp_path / "log" / "sleep.log"
    pid = spawn(["sleep", "30"], log_path=log, pid_path=pid_file, cwd=tmp_path)
    try:
        assert read_pid(pid_file) == pid
        # The pipe reports the exec a moment before the kernel shows the new
        # command line (close-on-exec runs before the arguments are mapped).
        for _ in range(200):
            if is_ours(pid, ["sleep", "30"]):
                break
            await asyncio.sleep(0.005)
        assert is_ours(pid, ["sleep", "30"])
        # Detached: a session of its own, and not our child (the double fork).
        assert os.getsid(pid) != os.getsid(0)
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        assert await stop(pid, sig=signal.SIGTERM, grace=5) == "stopped"
        assert not alive(pid)
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_spawn_reports_exec_failure(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(InfraError, match="could not start"):
        spawn(
            ["/nonexistent/binary"],
            log_path=tmp_path / "x.log",
            pid_path=tmp_path / "x.pid",
            cwd=tmp_path,
        )
    assert time.monotonic() - started < 5
    assert not (tmp_path / "x.pid").exists()


def test_sentinel_layout_is_opt_in_and_remembered(tmp_path: Path) -> None:
    from devstack.sentinel import DEFAULT_SENTINELS, with_sentinels

    plain = Settings(home=tmp_path)
    assert [s.name for s in services(plain)] == ["postgres", "redis", "s3", "kafka"]
    assert "replicaof" not in Redis(plain).write_config().read_text()
    sentinel = with_sentinels(plain)
    assert sentinel.redis_sentinels == DEFAULT_SENTINELS
    stack = services(sentinel)
    names = ["redis-replica", "redis-sentinel-1", "redis-sentinel-2", "redis-sentinel-3"]
    assert [s.name for s in stack][4:] == names
    replica = stack[4]
    assert (replica.port, [s.port for s in stack[5:]]) == (6380, [26379, 26380, 26381])
    assert "replicaof 127.0.0.1 6379" in replica.write_config().read_text()  # type: ignore[attr-defined]
    # Once a sentinel was started here, later commands see the layout without the flag.
    (tmp_path / "var" / "redis-sentinel").mkdir(parents=True)
    (tmp_path / "var" / "redis-sentinel" / "sentinels").write_text("127.0.0.1:26379\n")
    assert [s.name for s in services(plain)][4:] == ["redis-replica", "redis-sentinel-1"]
    # A Redis of the user's own brings its own replicas and sentinels.
    assert len(services(dataclasses.replace(sentinel, external=frozenset({"redis"})))) == 4


def test_after_a_failover_the_servers_restart_under_the_sentinels_master(tmp_path: Path) -> None:
    """The old primary comes back as a replica of the promoted one, never as a second master."""
    from devstack.sentinel import RedisReplica

    settings = Settings(home=tmp_path, redis_url="redis://:pw@127.0.0.1:16379/0")
    for port, epoch, master in ((26379, 0, 16379), (26380, 3, 16380), (26381, 2, 16379)):
        folder = tmp_path / "var" / "redis-sentinel" / str(port)
        folder.mkdir(parents=True)
        (folder / "sentinel.conf").write_text(
            f"port {port}\nsentinel monitor eventfold 127.0.0.1 {master} 2\n"
            f"sentinel config-epoch eventfold {epoch}\n"
        )
    primary = Redis(settings).write_config().read_text()
    assert 'replicaof 127.0.0.1 16380\nmasterauth "pw"\n' in primary
    assert "replicaof" not in RedisReplica(settings).write_config().read_text()

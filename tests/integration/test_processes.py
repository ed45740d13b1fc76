"""``eventfold process NAME`` as operators run it: one process, probed and scraped on its port.

CONTRACT (Operations): ``eventfold process NAME`` serves ``/health/live``,
``/health/ready`` and ``/metrics`` on ``EVENTFOLD_HTTP_HOST``:``EVENTFOLD_HTTP_PORT``
like the HTTP processes do; a stream processor is ready only once it can do its job
(its partitions assigned, its lag known).
"""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaConsumer, TopicPartition

from consumers.runtime.kafka import lag_known
from eventfold.settings import Settings
from tests.conftest import free_port, output, process, wait_until_ready
from tests.integration.conftest import kill_9_after_assignment, process_env


@pytest_asyncio.fixture(loop_scope="session")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


async def ready_report(http: aiohttp.ClientSession, base: str) -> tuple[int, dict[str, Any]]:
    async with http.get(f"{base}/health/ready") as resp:
        return resp.status, await resp.json()


async def processor_ready(http: aiohttp.ClientSession, base: str, name: str) -> str | None:
    """The value of ``eventfold_processor_ready{processor=name}`` in the process's /metrics."""
    async with http.get(f"{base}/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    prefix = f'eventfold_processor_ready{{processor="{name}"}} '
    values = [line.removeprefix(prefix) for line in text.splitlines() if line.startswith(prefix)]
    return values[0] if values else None


async def test_a_processor_process_serves_its_health_and_metrics(
    lane: Settings, http: aiohttp.ClientSession
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with process("process", "projector", env=process_env(lane, port)) as proc:
        await wait_until_ready(http, base, proc)
        status, doc = await ready_report(http, base)
        assert status == 200
        assert doc["checks"] == {"postgres": {"status": "ok"}, "projector": {"status": "ok"}}
        async with http.get(f"{base}/health/live") as r:
            assert (r.status, await r.json()) == (200, {"status": "ok", "checks": {}})
        async with http.get(f"{base}/metrics") as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/plain; version=")
            assert "eventfold_projector_events_total" in await r.text()
        assert await processor_ready(http, base, "projector") == "1.0"
        # Only the operations routes: no API, no gateway in a processor's process.
        async with http.get(f"{base}/v1/me") as r:
            assert r.status == 404
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0


async def test_a_projector_process_is_not_ready_until_it_holds_its_partitions(
    lane: Settings, http: aiohttp.ClientSession
) -> None:
    """A member killed with -9 holds the partitions until its session times out: meanwhile
    the process answers, but says it is down, and its metric says 0."""
    await kill_9_after_assignment(lane, f"{lane.consumer_group_prefix}.projector")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with process("process", "projector", env=process_env(lane, port)) as proc:
        async with asyncio.timeout(60):
            while True:
                assert proc.poll() is None, "the process exited"
                try:
                    status, doc = await ready_report(http, base)
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
                    continue
                if "projector" in doc["checks"]:
                    break
                await asyncio.sleep(0.05)
        assert (status, doc["status"]) == (503, "down"), doc
        assert doc["checks"]["projector"] == {"status": "down", "error": "NotConsuming"}
        assert await processor_ready(http, base, "projector") == "0.0"
        await wait_until_ready(http, base, proc)
        assert await processor_ready(http, base, "projector") == "1.0"


@pytest.mark.parametrize("name", ["cache", "archiver", "notifier", "sync", "workflows"])
async def test_every_processor_serves_its_own_readiness(
    lane: Settings, http: aiohttp.ClientSession, name: str
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with process("process", name, env=process_env(lane, port)) as proc:
        await wait_until_ready(http, base, proc)
        status, doc = await ready_report(http, base)
        assert status == 200
        assert doc["checks"] == {"postgres": {"status": "ok"}, name: {"status": "ok"}}
        assert await processor_ready(http, base, name) == "1.0"


@pytest.mark.parametrize(
    ("command", "says"),
    [
        (("process", "notifier"), "eventfold process notifier: cannot serve health and metrics"),
        (("serve", "api", "ingest"), "eventfold serve: cannot serve HTTP"),
        (("run",), "eventfold run: cannot serve HTTP"),
    ],
    ids=["process", "serve", "run"],
)
async def test_a_taken_address_stops_the_command_with_one_line(
    lane: Settings, command: tuple[str, ...], says: str
) -> None:
    """The address is bound before anything starts: a processor nobody can probe or scrape
    would look like a dead one, and an HTTP process would start its app for nothing."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with process(*command, env=process_env(lane, port)) as proc:
            assert await asyncio.to_thread(proc.wait, 60) == 1
            lines = output(proc).splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(
        f"{says} on 127.0.0.1:{port} (EVENTFOLD_HTTP_HOST, EVENTFOLD_HTTP_PORT): "
    ), lines
    assert "in use" in lines[0]


async def test_the_lag_is_known_once_a_fetch_has_answered_for_every_partition(
    lane: Settings,
) -> None:
    """Readiness asks :func:`lag_known`: the end of each assigned partition comes with a
    fetch answer (an empty one too), not with the assignment."""
    consumer = AIOKafkaConsumer(bootstrap_servers=lane.kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        assert lag_known(consumer)  # holds nothing: nothing to know
        consumer.assign([TopicPartition(lane.events_topic, p) for p in (0, 1)])
        assert not lag_known(consumer)  # assigned, nothing fetched yet
        async with asyncio.timeout(30):
            while not lag_known(consumer):
                await consumer.getmany(timeout_ms=100)
        assert consumer.highwater(TopicPartition(lane.events_topic, 0)) == 0  # an empty topic
    finally:
        await consumer.stop()

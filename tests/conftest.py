"""Shared fixtures: settings isolated per test session, and the real services.

Each session publishes to its own topic and consumer group, so a test run sees
only its own events; each test starts from a fresh tenant.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from devstack.process import port_free
from eventfold import tracing
from eventfold.settings import Settings

RUN_ID = uuid.uuid4().hex[:8]
#: The ``eventfold`` command of this environment.
EVENTFOLD = str(Path(sys.executable).with_name("eventfold"))


def free_port() -> int:
    """A TCP port nobody listens on right now, for a server that binds it a while later
    (see :func:`free_ports`)."""
    return free_ports(1)


#: Where :func:`free_ports` looks: below the kernel's ephemeral range (32768 and up on
#: Linux), so no outgoing connection takes a port between its check and a server's bind.
#: (Port 0's pick is in that range: a spawned process once found its port taken by a
#: client connection to Kafka opened in between.)
_LISTEN_PORTS = range(20000, 32000)
#: Every port handed out in this session: never twice, though the first taker may not
#: have bound it yet (sixteen processes started at once drew the same port at random).
_HANDED: set[int] = set()


def free_ports(count: int) -> int:
    """A port p with p ... p + count - 1 free (a Kafka node's two listeners, each node of
    a cluster; a Redis and its replica), for servers that bind it a while later."""
    for _ in range(200):
        port = random.randrange(_LISTEN_PORTS.start, _LISTEN_PORTS.stop - count)
        wanted = range(port, port + count)
        if not _HANDED.intersection(wanted) and all(port_free("127.0.0.1", p) for p in wanted):
            _HANDED.update(wanted)
            return port
    raise RuntimeError(f"no {count} consecutive free ports")


#: The port of the session's SMTP server (workflow email steps).
SMTP_PORT = free_port()


def session_settings(**overrides: object) -> Settings:
    """Settings of this test session: own topics and group, local services."""
    base = Settings.from_env()
    fields: dict[str, object] = {
        "events_topic": f"eventfold.test-{RUN_ID}.events",
        "dlq_topic": f"eventfold.test-{RUN_ID}.dlq",
        "consumer_group_prefix": f"eventfold-test-{RUN_ID}",
        "topic_partitions": 4,
        # Tests send bursts far past a real tenant's limits; the rate limit tests
        # create tenants with small explicit limits instead.
        "rate_limit_default_rps": 1_000_000.0,
        "rate_limit_default_burst": 1_000_000,
        # Every test's client is 127.0.0.1, and many tests send bad credentials on
        # purpose: test_ratelimit limits failed authentication on apps of its own.
        "auth_failure_burst": 1_000_000,
        # Tests watch readiness change right after breaking a dependency;
        # test_ops checks the cached probe on an app of its own.
        "health_cache_seconds": 0.0,
        # Webhook tests deliver to receivers on 127.0.0.1, with quick retries.
        "webhook_allow_hosts": ("127.0.0.1",),
        "webhook_retry_schedule": (0, 1, 1),
        "webhook_timeout_seconds": 2.0,
        # Workflow email steps send to the session's SMTP server (tests/integration/
        # workflow_helpers.Mailbox), on a port picked once per session.
        "smtp_url": f"smtp://127.0.0.1:{SMTP_PORT}",
    }
    fields.update(overrides)
    return dataclasses.replace(base, **fields)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def settings() -> Settings:
    """This session's settings."""
    return session_settings()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def stack(settings: Settings) -> AsyncIterator[Settings]:
    """The local stack must answer; this session's topics exist for its duration."""
    from devstack import ensure_topics, status_async

    down = [s for s in await status_async(settings) if not s.running]
    if down:
        names = ", ".join(f"{s.name} ({s.address})" for s in down)
        pytest.fail(
            f"not running: {names}. Start the stack with `make infra` "
            "(or `.venv/bin/eventfold infra up`); `make test` does it for you.",
            pytrace=False,
        )
    await ensure_topics(settings)
    yield settings
    await _delete_topics(settings, [settings.events_topic, settings.dlq_topic])


async def _delete_topics(settings: Settings, topics: list[str]) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        await admin.delete_topics(topics)
    except Exception:  # noqa: S110 - best-effort hygiene; the topic may be in use
        pass
    finally:
        await admin.close()


def new_tenant_id() -> str:
    """A tenant id no other test uses."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def span_exporter() -> Iterator[InMemorySpanExporter]:
    """Tracing on (:mod:`eventfold.tracing`), every finished span kept in memory; off again
    after the test. An app traces requests only if it was built while tracing was on."""
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    tracing.enable(provider)
    try:
        yield spans
    finally:
        tracing.shutdown()


#: Each :func:`process`'s output file, by the process.
_OUTPUT: dict[int, Any] = {}


@contextmanager
def process(*args: str, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """``eventfold ARGS``, its stdout and stderr in one file (:func:`output`); stopped with
    SIGTERM after. A file, not a pipe: a pipe nobody reads fills up with the log (an access
    log line per request), and the process then blocks writing to it."""
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen([EVENTFOLD, *args], env=env, stdout=out, stderr=subprocess.STDOUT)
        _OUTPUT[proc.pid] = out
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            del _OUTPUT[proc.pid]


def output(proc: subprocess.Popen[bytes]) -> str:
    """What a :func:`process` has written so far (stdout and stderr)."""
    out = _OUTPUT[proc.pid]
    out.seek(0)
    text: str = out.read().decode(errors="replace")
    return text


async def until_logged(proc: subprocess.Popen[bytes], needle: str, within: float = 60.0) -> None:
    """Wait until a :func:`process`'s output contains ``needle`` (fails after ``within`` s)."""
    deadline = time.monotonic() + within
    while needle not in output(proc):
        assert time.monotonic() < deadline, f"{needle!r} never logged"
        await asyncio.sleep(0.2)


async def wait_until_ready(http: Any, base: str, proc: subprocess.Popen[bytes]) -> None:
    """Wait until a spawned ``eventfold`` process answers ``/health/ready`` with ok.

    A process that exits first fails the test with the end of its output.
    """
    import aiohttp

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            if proc.pid in _OUTPUT:
                out = output(proc)
            else:
                stream = proc.stdout or proc.stderr
                out = stream.read().decode(errors="replace") if stream else ""
            pytest.fail(f"eventfold exited with {proc.returncode}:\n{out[-3000:]}")
        try:
            async with http.get(f"{base}/health/ready") as resp:
                if resp.status == 200 and (await resp.json())["status"] == "ok":
                    return
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.2)
    pytest.fail(f"{base} not ready within 60 s")


_EXIT_STATUS: dict[str, int] = {}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The documentation's examples run first, before this session's in-process app.

    They run against an ``eventfold run`` of their own, and in CI its webhook example's
    delivery missed its wait once the session's app (whose notifier claims deliveries
    of every tenant in the shared database) had been running for a while; alone they
    pass. Until the notifiers' competition is understood and fixed, the examples are
    not put behind it.
    """
    first = [i for i in items if i.nodeid.startswith("tests/integration/test_doc_examples.py")]
    if first:
        rest = [i for i in items if i not in first]
        items[:] = first + rest


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Remember the run's status for :func:`pytest_unconfigure`."""
    _EXIT_STATUS["status"] = int(exitstatus)


def pytest_unconfigure(config: pytest.Config) -> None:
    """End the process even if a third-party thread outlives the session.

    faust/mode run their Kafka clients in non-daemon threads; one left running
    (a test app stopped while its broker was gone) keeps the interpreter waiting
    in ``threading._shutdown`` forever after the summary is printed. The report
    is complete at this point, so exit with the session's status instead of
    hanging CI.
    """
    import os
    import sys
    import threading

    stuck = [t.name for t in threading.enumerate() if t is not threading.main_thread()
             and not t.daemon and t.is_alive()]  # fmt: skip
    if stuck and "status" in _EXIT_STATUS:
        sys.stderr.write(f"non-daemon threads left running: {', '.join(stuck)}; exiting\n")
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(_EXIT_STATUS["status"])

"""Private stacks and acknowledged-write checks for the tests that break services.

A private stack is a second, managed stack on other ports with its data in a
temporary folder (its own Kafka, one node or a cluster, PostgreSQL and Redis),
never the session's shared one. :class:`Load` writes batches with fixed ids and
records what was acknowledged; :func:`verify_exactly_once` checks every
acknowledged event against the tenant's projection and history.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient, TestServer

from devstack import InfraError, down_async, up_async
from devstack.base import Service
from devstack.process import live_pid, stop
from entrypoints.bootstrap import create_app
from eventfold.settings import Settings, cluster_bootstrap
from tests.conftest import free_ports, session_settings
from tests.integration.conftest import SESSION_PARTS, Api, TenantApi, process_env

#: Seconds one request (or one wait for a record) may take before the test calls it hung.
BOUND = 30.0


def quiet(_line: str) -> None:
    """Infra progress lines are noise in a test log."""


@contextlib.asynccontextmanager
async def private_stack(*, kafka_brokers: int = 1, **overrides: Any) -> AsyncIterator[Settings]:
    """A private stack (Kafka with ``kafka_brokers`` nodes, PostgreSQL, Redis) for a test."""
    shared = session_settings()
    home = Path(tempfile.mkdtemp(prefix="eventfold-private-"))
    # The templates of infra/ are read from the home; the Kafka jars are reused
    # read-only from the shared checkout instead of being fetched again.
    (home / "infra").symlink_to(shared.home / "infra")
    (home / "var" / "kafka").mkdir(parents=True)
    (home / "var" / "kafka" / "libs").symlink_to(shared.var_dir / "kafka" / "libs")
    kafka = free_ports(2 * kafka_brokers)  # each node: client and controller
    # Nothing listens on the Kafka ports yet: keep the others out of their range.
    postgres, redis = free_ports(1), free_ports(1)
    while {postgres, redis} & set(range(kafka, kafka + 2 * kafka_brokers)) or postgres == redis:
        postgres, redis = free_ports(1), free_ports(1)
    settings = dataclasses.replace(
        shared,
        home=home,
        kafka_brokers=kafka_brokers,
        kafka_bootstrap=cluster_bootstrap(f"127.0.0.1:{kafka}", kafka_brokers),
        database_url=f"postgresql://eventfold:eventfold@127.0.0.1:{postgres}/eventfold",
        redis_url=f"redis://127.0.0.1:{redis}/0",
        external=frozenset({"s3"}),  # not used here; the shared one is only probed
        **overrides,
    )
    try:
        try:
            await up_async(settings, progress=quiet)
        except InfraError as exc:
            # The logs are in the temporary home, gone after the test: show their ends.
            raise AssertionError(f"{exc}\n{_log_tails(settings.var_dir / 'log')}") from None
        yield settings
    finally:
        await down_async(settings, progress=quiet)
        shutil.rmtree(home, ignore_errors=True)


def private_env(settings: Settings, port: int, home: Path, **extra: str) -> dict[str, str]:
    """The environment of an ``eventfold`` process on a private stack's services.

    Beside :func:`~tests.integration.conftest.process_env`'s topics, groups and
    secret: the services, the webhook and workflow settings of the session, and a
    home of its own (``var/``: faust's data). ``settings.secret_keys`` must be set:
    processes with homes of their own would each make a dev key, and none could
    open what another sealed (a webhook's secret).
    """
    assert settings.secret_keys, "processes with homes of their own need shared sealing keys"
    return process_env(
        settings,
        port,
        EVENTFOLD_HOME=str(home),
        EVENTFOLD_KAFKA_BOOTSTRAP=settings.kafka_bootstrap,
        EVENTFOLD_KAFKA_BROKERS=str(settings.kafka_brokers),
        EVENTFOLD_DATABASE_URL=settings.database_url,
        EVENTFOLD_REDIS_URL=settings.redis_url,
        EVENTFOLD_S3_ENDPOINT=settings.s3_endpoint,
        EVENTFOLD_S3_BUCKET=settings.s3_bucket,
        EVENTFOLD_SECRET_KEYS=settings.secret_keys,
        EVENTFOLD_RATE_LIMIT_DEFAULT_RPS=str(settings.rate_limit_default_rps),
        EVENTFOLD_RATE_LIMIT_DEFAULT_BURST=str(settings.rate_limit_default_burst),
        EVENTFOLD_AUTH_FAILURE_BURST=str(settings.auth_failure_burst),
        EVENTFOLD_HEALTH_CACHE_SECONDS=str(settings.health_cache_seconds),
        EVENTFOLD_WEBHOOK_ALLOW_HOSTS=",".join(settings.webhook_allow_hosts),
        EVENTFOLD_WEBHOOK_RETRY_SCHEDULE=",".join(map(str, settings.webhook_retry_schedule)),
        EVENTFOLD_WEBHOOK_TIMEOUT_SECONDS=str(settings.webhook_timeout_seconds),
        EVENTFOLD_WORKFLOW_LEASE_SECONDS=str(settings.workflow_lease_seconds),
        EVENTFOLD_ARCHIVE_SEGMENT_SECONDS=str(settings.archive_segment_seconds),
        **extra,
    )


def _log_tails(folder: Path, lines: int = 15) -> str:
    """The last ``lines`` lines of every log under ``folder``."""
    tails = []
    for path in sorted(folder.rglob("*.log")):
        text = path.read_text(errors="replace").splitlines()[-lines:]
        tails.append(f"--- {path.relative_to(folder)}\n" + "\n".join(text))
    return "\n".join(tails)


async def halt(service: Service, *, kill: bool = False) -> None:
    """Stop one service of a private stack (``kill``: SIGKILL, no clean shutdown)."""
    pid = live_pid(service.pid_path, service.markers)
    assert pid is not None, f"{service.name} is not running"
    sig = signal.SIGKILL if kill else service.stop_signal
    await stop(pid, sig=sig, grace=service.stop_timeout)
    service.pid_path.unlink(missing_ok=True)


async def start(service: Service) -> None:
    """Start one service of a private stack again and wait until it serves."""
    pid = await service.start(quiet)
    await service.ready(pid, quiet)


def upserts(prefix: str, n: int) -> list[dict[str, Any]]:
    """``n`` record upserts with ids and subjects made from ``prefix``."""
    return [
        {
            "specversion": "1.0",
            "id": f"{prefix}-{i}",
            "source": "recovery-test",
            "type": "record.upserted",
            "subject": f"things/{prefix}-{i}",
            "data": {"i": i},
        }
        for i in range(n)
    ]


@dataclass
class Load:
    """Writers sending batches with fixed ids, retrying each until it is accepted."""

    tenant: TenantApi
    #: Where the attempts go, in turn (several HTTP processes); empty: ``tenant`` alone.
    #: A test may change it while the writers run (a gateway killed).
    gateways: list[TenantApi] = field(default_factory=list)
    #: Seconds a writer waits between two batches.
    pause: float = 0.05
    acked: dict[str, str] = field(default_factory=dict)  # event id -> consistency token
    answers: dict[int, int] = field(default_factory=dict)  # status -> count
    #: (first sent, acknowledged) monotonic times of each batch, in order of acknowledgement.
    spans: list[tuple[float, float]] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def writer(self, name: str) -> None:
        """Write batches of five until ``stop``: each one again, same ids, until a 202."""
        n = attempt = 0
        while not self.stop.is_set():
            events = upserts(f"{name}-{n}", 5)
            first_sent = time.monotonic()
            while True:  # the same batch, same ids, until acknowledged
                gateways = self.gateways or [self.tenant]
                route = gateways[attempt % len(gateways)]
                attempt += 1
                try:
                    resp = await asyncio.wait_for(route.call("POST", "/events", json=events), BOUND)
                    status = resp.status
                    body = await resp.json()
                except (aiohttp.ClientError, TimeoutError):
                    status, body = 0, {}
                self.answers[status] = self.answers.get(status, 0) + 1
                assert status in (0, 202, 503), body
                if status == 202:
                    self.spans.append((first_sent, time.monotonic()))
                    for ev in events:
                        self.acked[ev["id"]] = body["consistency_token"]
                    break
                if self.stop.is_set():
                    return
                await asyncio.sleep(0.3)
            n += 1
            await asyncio.sleep(self.pause)

    def longest_wait(self, since: float) -> float:
        """The longest a batch sent or acknowledged after ``since`` took to be acknowledged
        (first attempt to 202, retries included)."""
        return max((done - sent for sent, done in self.spans if done >= since), default=0.0)

    async def more_acks(self, count: int, within: float = 60.0) -> None:
        """Wait until ``count`` more events are acknowledged (the system recovered)."""
        target = len(self.acked) + count
        deadline = time.monotonic() + within
        while len(self.acked) < target:
            assert time.monotonic() < deadline, f"no progress: {self.answers}"
            await asyncio.sleep(0.1)


async def verify_exactly_once(tenant: TenantApi, acked: dict[str, str]) -> None:
    """Every acknowledged event readable with its token, applied once (version 1)."""
    sem = asyncio.Semaphore(8)

    async def check(event_id: str, token: str) -> None:
        async with sem:
            deadline = time.monotonic() + 60
            while True:
                resp = await asyncio.wait_for(
                    tenant.read(f"/collections/things/records/{event_id}", token), BOUND
                )
                if resp.status == 200:
                    doc = await resp.json()
                    assert doc["version"] == 1, doc
                    return
                # Read in full: a client session's connection is freed only then.
                text = await resp.text()
                assert resp.status == 503, text
                assert time.monotonic() < deadline, f"{event_id} never became readable"
                await asyncio.sleep(0.5)

    await asyncio.gather(*(check(i, t) for i, t in acked.items()))
    seen: list[str] = []
    after: str | None = None
    while True:
        query = "?limit=1000" + (f"&after={after}" if after else "")
        page = await tenant.read_json(f"/events{query}")
        seen += [item["id"] for item in page["items"] if item["type"] == "record.upserted"]
        after = page["next"]
        if after is None:
            break
    assert len(seen) == len(set(seen)), "an event is in the history twice"
    assert set(acked) <= set(seen)


@contextlib.asynccontextmanager
async def writing(settings: Settings, writers: int = 3) -> AsyncIterator[tuple[Api, Load]]:
    """The whole app on ``settings`` with ``writers`` writers of a fresh tenant under way.

    On a clean exit the writers stop and every acknowledged event is checked
    (:func:`verify_exactly_once`) before the app closes.
    """
    client: TestClient[Any, Any] = TestClient(TestServer(create_app(settings, SESSION_PARTS)))
    await client.start_server()
    try:
        api = Api(client, settings)
        load = Load(TenantApi(api, (await api.create_tenant())["id"]))
        tasks = [
            asyncio.create_task(load.writer(f"w{uuid.uuid4().hex[:4]}")) for _ in range(writers)
        ]
        try:
            yield api, load
        finally:
            load.stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
        print(f"answers {load.answers}, acknowledged {len(load.acked)}")
        await verify_exactly_once(load.tenant, load.acked)
    finally:
        await client.close()

"""Two of every part share the work, and one of each is killed under load.

CONTRACT (Processes): each part can run alone and scales out, the stream processors
through Kafka consumer groups (projector, cache, archiver, analytics) or leases in
PostgreSQL (notifier, sync, workflows); killing any process at any moment loses
nothing and applies nothing twice (DESIGN principle 2).

Runs on a PRIVATE stack (its own Kafka, PostgreSQL and Redis; the shared S3 server
with a bucket of its own): the notifier, sync and workflows processors claim the
work of every tenant in their database, so on the shared one they would compete
with the session's app. Every part runs twice as a spawned process (``eventfold
process NAME`` for each processor, ``eventfold serve api ingest`` for HTTP); writers
alternate between the two HTTP processes. One of each is then SIGKILLed at the same
moment: the harshest case, each consumer group rebalancing and each lease expiring
while the others do too (and the shortest test). The writers go on through the
surviving HTTP process; every outcome is then checked against what was acknowledged
and against the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gzip
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from devstack import ensure_bucket, ensure_topics
from entrypoints.registry import PROCESSORS
from eventfold.cache import cache_client, decode_entry, record_key
from eventfold.clients import open_pool
from eventfold.s3 import open_s3
from eventfold.sealing import new_key_spec
from eventfold.settings import Settings
from tests.conftest import free_port, output, process, wait_until_ready
from tests.integration.conftest import Api, TenantApi, topic_records
from tests.integration.private_stack import Load, private_env, private_stack, verify_exactly_once
from tests.integration.workflow_helpers import Receiver

pytestmark = [pytest.mark.integration, pytest.mark.recovery]

#: Each HTTP process's part name: ``eventfold serve api ingest``.
HTTP = "http"
#: The workflow every written record with ``i == 0`` (the first of each batch) starts.
WORKFLOW_ID = "first-of-batch"
#: How long every outcome may take to be complete once the writers stopped (the killed
#: notifier's claimed deliveries wait for their lease: the webhook timeout + 30 s).
SETTLE = 90.0


@dataclasses.dataclass
class Part:
    """One spawned process: its part (a processor's name or :data:`HTTP`) and address."""

    name: str
    proc: subprocess.Popen[bytes]
    base: str


@contextlib.contextmanager
def spawn_all(settings: Settings, home: Path) -> Iterator[list[Part]]:
    """Two processes of every processor and two HTTP processes; all stopped after (SIGTERM
    to every one first, so they stop side by side rather than one after another)."""
    commands = [(name, ("process", name)) for name in PROCESSORS for _ in range(2)]
    commands += [(HTTP, ("serve", "api", "ingest"))] * 2
    parts: list[Part] = []
    with contextlib.ExitStack() as stack:
        for n, (name, args) in enumerate(commands):
            port = free_port()
            env = private_env(settings, port, home / f"{name}-{n}")
            proc = stack.enter_context(process(*args, env=env))
            parts.append(Part(name, proc, f"http://127.0.0.1:{port}"))
        try:
            yield parts
        except BaseException:
            # Kept with the failure (pytest shows a failed test's stdout): why a part
            # misbehaved is in its own log, and the temporary files go with the test.
            for n, part in enumerate(parts):
                text = output(part.proc)
                (home / f"{part.name}-{n}.log").write_text(text)
                print(f"--- {part.name}-{n} (status {part.proc.poll()}) ---")
                print(text[-6000:])
            raise
        finally:
            for part in parts:
                if part.proc.poll() is None:
                    part.proc.send_signal(signal.SIGTERM)


@contextlib.asynccontextmanager
async def gateway(settings: Settings, base: str) -> AsyncIterator[Api]:
    """An :class:`Api` speaking to the HTTP process at ``base``."""
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(base_url=base, timeout=timeout) as session:
        yield Api(session, settings)


def workflow(receiver: Receiver) -> dict[str, Any]:
    """One ``http`` step to the receiver per written record with ``i == 0``."""
    return {
        "id": WORKFLOW_ID,
        "name": "First of each batch",
        "trigger": {"types": ["record.upserted"], "collection": "things",
                    "when": {"i": {"eq": 0}}},
        "steps": [{"id": "call", "kind": "http", "url": f"{receiver.base}/wf",
                   "body": {"record": "${/record/id}"}}],
    }  # fmt: skip


async def read_pages(tenant: TenantApi, rest: str, roles: tuple[str, ...]) -> list[Any]:
    """Every item of a list route, page after page."""
    items: list[Any] = []
    after: str | None = None
    while True:
        sep = "&" if "?" in rest else "?"
        resp = await tenant.call("GET", rest + sep + "limit=1000" + (f"&after={after}" if after
                                 else ""), roles=roles)  # fmt: skip
        doc = await resp.json()
        assert resp.status == 200, doc
        items += doc["items"]
        after = doc["next"]
        if after is None:
            return items


async def tenant_log(settings: Settings, tenant: str) -> list[bytes]:
    """Every record of ``tenant`` in the events topic, from the start to the end now."""
    records = await topic_records(settings, settings.events_topic)
    return [m.value for m in records if orjson.loads(m.value).get("tenant") == tenant]


async def archived(settings: Settings, tenant: str) -> list[bytes]:
    """Every line of every segment of ``tenant``'s archive."""
    lines: list[bytes] = []
    async with open_s3(settings) as client:
        paginator = client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=settings.s3_bucket,
                                             Prefix=f"tenant={tenant}/"):  # fmt: skip
            for item in page.get("Contents", []):
                if not item["Key"].endswith(".jsonl.gz"):
                    continue
                resp = await client.get_object(Bucket=settings.s3_bucket, Key=item["Key"])
                async with resp["Body"] as body:
                    lines += gzip.decompress(await body.read()).splitlines()
    return lines


async def analytics_count(tenant: TenantApi, since: datetime) -> int:
    """The ``record.upserted`` count of ``things`` the API serves, over every 1 h window."""
    start = since.replace(minute=0, second=0, microsecond=0).isoformat().replace("+00:00", "Z")
    items = await read_pages(tenant, f"/analytics/events?window=1h&from={start}"
                             "&type=record.upserted&collection=things", ("reader",))  # fmt: skip
    return sum(int(item["count"]) for item in items)


async def eventually(
    check: Callable[[], Awaitable[tuple[bool, Any]]], what: str, within: float = SETTLE
) -> Any:
    """Call ``check()`` until it answers ``(True, value)``; ``value``. Fails with the last
    value after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        ok, value = await check()
        if ok:
            return value
        assert time.monotonic() < deadline, f"{what}: {value}"
        await asyncio.sleep(0.5)


async def test_two_of_every_part_share_the_work_and_lose_nothing_when_one_of_each_dies(
    receiver: Receiver, tmp_path: Path
) -> None:
    bucket = f"eventfold-many-{uuid.uuid4().hex[:8]}"
    async with private_stack(
        secret_keys=new_key_spec(),
        s3_bucket=bucket,
        archive_segment_seconds=2.0,  # the last segments close soon after the writers stop
        workflow_lease_seconds=2.0,  # a killed processor's runs are taken over soon
    ) as settings:
        await ensure_topics(settings)
        await ensure_bucket(settings)
        await (await open_pool(settings)).close()  # migrated once, before 16 processes start
        since = datetime.now(UTC)
        with spawn_all(settings, tmp_path) as parts:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
                await asyncio.gather(*(wait_until_ready(http, p.base, p.proc) for p in parts))
                https = [p for p in parts if p.name == HTTP]
                async with gateway(settings, https[0].base) as first, \
                        gateway(settings, https[1].base) as second:  # fmt: skip
                    tenant_id = (await first.create_tenant())["id"]
                    tenants = [TenantApi(first, tenant_id), TenantApi(second, tenant_id)]
                    await check_everything(settings, http, parts, tenants, receiver, since)


async def check_everything(
    settings: Settings,
    http: aiohttp.ClientSession,
    parts: list[Part],
    tenants: list[TenantApi],
    receiver: Receiver,
    since: datetime,
) -> None:
    """Subscribe, define, write through both gateways, kill one of each, then check."""
    tenant = tenants[0]
    hook = await tenant.call(
        "POST",
        "/webhooks",
        roles=("admin",),
        json={"url": f"{receiver.base}/hook", "types": ["record.*"]},
    )
    assert hook.status == 202, await hook.text()
    hook_doc = await hook.json()
    flow = await tenant.call("POST", "/workflows", roles=("admin",), json=workflow(receiver))
    assert flow.status == 202, await flow.text()
    flow_doc = await flow.json()
    for rest, token in ((f"/workflows/{WORKFLOW_ID}", flow_doc["consistency_token"]),
                        ("/webhooks", hook_doc["consistency_token"])):  # fmt: skip
        seen = await tenant.call("GET", rest, roles=("admin",),
                                 headers={"X-Consistency-Token": token})  # fmt: skip
        assert seen.status == 200, await seen.text()

    load = Load(tenant, gateways=list(tenants), pause=0.1)
    writers = [asyncio.create_task(load.writer(f"w{k}")) for k in range(2)]
    try:
        # Work flows through every part: writes acknowledged by both gateways, webhooks
        # delivered and workflow steps called. The kill comes early, within seconds of
        # the first writes: a Kafka processor may not have committed its partitions yet.
        await load.more_acks(100)
        await receiver.wait_for(lambda: bool(receiver.to("/hook")) and bool(receiver.to("/wf")))
        # The second of each: the first HTTP process (``tenant``'s) survives.
        victims = [[p for p in parts if p.name == name][-1] for name in (*PROCESSORS, HTTP)]
        for victim in victims:
            victim.proc.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        load.gateways = [tenant]  # the writers go on through the surviving HTTP process
        for victim in victims:
            await asyncio.to_thread(victim.proc.wait, 10)
        acked_before = len(load.acked)
        # Past the killed static members' 10 s sessions: the survivors take over under load.
        await load.more_acks(1000)
    finally:
        load.stop.set()
        await asyncio.gather(*writers)
    print(
        f"answers {load.answers}, acknowledged {len(load.acked)} ({acked_before} before the"
        f" kill), longest wait for a 202 after it {load.longest_wait(killed_at):.3f} s"
    )
    acked = set(load.acked)

    # The cache first: until the reads below fill it, only the cache processor writes it.
    cache = cache_client(settings)
    try:

        async def cached() -> tuple[bool, Any]:
            keys = [record_key(tenant.id, "things", i) for i in sorted(acked)]
            raws = await cache.mget(keys)
            versions = Counter(None if raw is None else getattr(decode_entry(raw), "version", -1)
                               for raw in raws)  # fmt: skip
            return versions == Counter({1: len(keys)}), versions

        await eventually(cached, "cache entries (version: count)")
    finally:
        await cache.aclose()

    await verify_exactly_once(tenant, load.acked)

    # Webhooks: at least once (CONTRACT, docs/concepts/exactly-once.md), each event
    # scheduled once: its attempts are numbered 1, 2, ... with no number twice.
    async def hooked() -> tuple[bool, Any]:
        got = {c.headers.get("webhook-id") for c in receiver.to("/hook") if c.status == 200}
        return acked <= got, f"{len(acked - got)} acknowledged events not delivered"

    await eventually(hooked, "webhook deliveries")
    received = Counter(c.headers.get("webhook-id") for c in receiver.to("/hook"))
    attempts = await read_pages(tenant, f"/webhooks/{hook_doc['id']}/deliveries", ("admin",))
    numbered = Counter((a["event_id"], a["attempt"]) for a in attempts)
    assert max(numbered.values()) == 1, [k for k, n in numbered.items() if n > 1][:10]
    print(
        f"webhooks: {sum(n - 1 for n in received.values())} sent again "
        f"(at least once), {len(attempts)} attempts listed"
    )

    # Workflows: one run per triggering event, each finished, its step called.
    triggers = {i for i in acked if i.endswith("-0")}

    async def ran() -> tuple[bool, Any]:
        runs = await read_pages(tenant, f"/workflows/{WORKFLOW_ID}/runs", ("reader",))
        done = [r for r in runs if r["status"] == "succeeded"]
        return len(done) == len(runs) and {r["trigger_event"] for r in runs} >= triggers, (
            f"{len(runs)} runs, {len(done)} succeeded, {len(triggers)} triggers; not"
            f" succeeded: {[r for r in runs if r['status'] != 'succeeded'][:3]}"
        )

    await eventually(ran, "workflow runs")
    runs = await read_pages(tenant, f"/workflows/{WORKFLOW_ID}/runs", ("reader",))
    per_trigger = Counter(r["trigger_event"] for r in runs)
    assert max(per_trigger.values()) == 1, [t for t, n in per_trigger.items() if n > 1][:10]
    called = {c.headers.get("Idempotency-Key") for c in receiver.to("/wf") if c.status == 200}
    assert {f"{r['id']}:call" for r in runs} <= called

    # Analytics counts each event id once; the archive holds the tenant's log, each record once.
    log = await tenant_log(settings, tenant.id)
    upserted = {e["id"] for e in map(orjson.loads, log) if e["type"] == "record.upserted"}
    assert acked <= upserted

    async def counted() -> tuple[bool, Any]:
        count = await analytics_count(tenant, since)
        return count == len(upserted), f"{count} counted, {len(upserted)} ids in the log"

    await eventually(counted, "analytics")

    async def archive_complete() -> tuple[bool, Any]:
        lines = Counter(await archived(settings, tenant.id))
        want = Counter(await tenant_log(settings, tenant.id))
        return lines == want, f"{sum((want - lines).values())} missing, " \
            f"{sum((lines - want).values())} extra"  # fmt: skip

    await eventually(archive_complete, "archive")

    # The survivors: every one still running and ready.
    for part in parts:
        if part.proc.returncode == -signal.SIGKILL:
            continue
        assert part.proc.poll() is None, (
            f"{part.name} exited with {part.proc.returncode}:\n{output(part.proc)[-5000:]}"
        )
        await wait_until_ready(http, part.base, part.proc)

"""`eventfold replay` / `verify` / `events`: blue-green rebuilds on the real stack."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from eventfold.cache import cache_client, record_key
from eventfold.settings import Settings
from tests.integration.conftest import Api, TenantApi

EVENTFOLD = str(Path(sys.executable).with_name("eventfold"))


def _env(settings: Settings) -> dict[str, str]:
    return {
        **os.environ,
        "EVENTFOLD_S3_BUCKET": settings.s3_bucket,
        "EVENTFOLD_EVENTS_TOPIC": settings.events_topic,
        "EVENTFOLD_DLQ_TOPIC": settings.dlq_topic,
        "EVENTFOLD_CONSUMER_GROUP_PREFIX": settings.consumer_group_prefix,
        "EVENTFOLD_LOG_LEVEL": "WARNING",
    }


async def eventfold(settings: Settings, *args: str) -> tuple[int, Any, str]:
    """Run ``eventfold ARGS --json``; (exit status, parsed stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        EVENTFOLD,
        *args,
        "--json",
        env=_env(settings),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 180)
    assert proc.returncode is not None
    doc = json.loads(out) if out.strip() else None
    return proc.returncode, doc, err.decode()


async def verify_replay_verify(settings: Settings, tenant: str) -> None:
    """``verify``, ``replay`` and ``verify`` of ``tenant`` from the log: each exits 0 (the
    rebuilt projection equals the live one before and after the swap)."""
    for command in ("verify", "replay", "verify"):
        status, report, err = await eventfold(settings, command, "--tenant", tenant)
        assert status == 0, (command, report, err)


async def seed(tenant: TenantApi, count: int) -> str:
    """``count`` records (some patched, one deleted); the last write's token."""
    for i in range(count):
        await tenant.write("PUT", f"/collections/items/records/r{i}", json={"n": i})
    for i in range(0, count, 3):
        await tenant.write(
            "PATCH",
            f"/collections/items/records/r{i}",
            data=json.dumps({"patched": True}),
            headers={"Content-Type": "application/merge-patch+json"},
        )
    doc = await tenant.write("DELETE", "/collections/items/records/r1")
    return str(doc["consistency_token"])


async def connect(settings: Settings) -> asyncpg.Connection:
    return await asyncpg.connect(settings.database_url)


async def test_verify_finds_a_corrupted_row_and_replay_repairs_it_under_load(
    api: Api, tenant: TenantApi
) -> None:
    settings = api.settings
    other = TenantApi(api, (await api.create_tenant())["id"])
    token = await seed(tenant, 30)
    other_token = await seed(other, 10)
    await tenant.read_json("/collections/items/records/r0", token)
    await other.read_json("/collections/items/records/r0", other_token)

    status, doc, err = await eventfold(settings, "verify", "--tenant", tenant.id)
    assert status == 0, err
    assert doc["tenants"][0]["equal"] is True

    conn = await connect(settings)
    try:
        await conn.execute(
            f"""UPDATE "t_{tenant.id}".records SET data = '{{"n": -1}}'
                WHERE collection = 'items' AND id = 'r2'"""
        )
        other_before = await conn.fetch(
            f'SELECT * FROM "t_{other.id}".records ORDER BY collection, id'
        )
        status, doc, err = await eventfold(settings, "verify", "--tenant", tenant.id)
        assert status == 1, err
        report = doc["tenants"][0]
        assert (report["equal"], report["changed"]) == (False, 1)
        assert [(r["collection"], r["id"]) for r in report["records"]] == [("items", "r2")]

        # --dry-run reports the change and changes nothing.
        status, doc, err = await eventfold(settings, "replay", "--tenant", tenant.id, "--dry-run")
        assert status == 0, err
        assert doc["dry_run"] is True
        assert (doc["tenants"][0]["changed"], doc["tenants"][0]["swapped"]) == (1, False)
        data = await conn.fetchval(
            f"""SELECT data FROM "t_{tenant.id}".records WHERE collection = 'items' AND id = 'r2'"""
        )
        assert json.loads(data) == {"n": -1}
        left = await conn.fetchval(
            "SELECT count(*) FROM pg_namespace WHERE nspname LIKE $1", f"ef\\_\\_%\\_\\_{tenant.id}"
        )
        assert left == 0

        # The rebuild, with writes and reads going on all the while.
        stop = asyncio.Event()
        failed_reads: list[int] = []
        reads = 0

        async def reader() -> None:
            nonlocal reads
            while not stop.is_set():
                resp = await tenant.read("/collections/items/records/r0")
                reads += 1
                if resp.status != 200:
                    failed_reads.append(resp.status)
                resp.release()
                listing = await tenant.read("/collections/items/records?limit=5")
                if listing.status != 200:
                    failed_reads.append(listing.status)
                listing.release()

        async def writer() -> str:
            last = ""
            i = 0
            while not stop.is_set():
                doc = await tenant.write(
                    "PUT", f"/collections/live/records/w{i % 20}", json={"i": i}
                )
                last = doc["consistency_token"]
                i += 1
            return last

        tasks = [asyncio.create_task(reader()), asyncio.create_task(writer())]
        try:
            status, doc, err = await eventfold(
                settings, "replay", "--tenant", tenant.id, "--rate", "2000"
            )
        finally:
            stop.set()
            await asyncio.gather(tasks[0])
            last_token = await tasks[1]
        assert status == 0, err
        assert doc["tenants"][0]["swapped"] is True
        assert doc["tenants"][0]["changed"] == 1  # the corrupted row, folded afresh
        assert f"{tenant.id}: " in err  # plain progress lines when stderr is no terminal
        assert "events/s" in err
        assert reads > 0
        assert failed_reads == []

        # Writes during and after the swap land in the new schema.
        await tenant.read_json("/collections/live/records/w0", last_token)
        record = await tenant.read_json("/collections/items/records/r2")
        assert record["data"] == {"n": 2}

        status, doc, err = await eventfold(settings, "verify", "--tenant", tenant.id)
        assert status == 0, (doc, err)
        assert (
            await conn.fetch(f'SELECT * FROM "t_{other.id}".records ORDER BY collection, id')
            == other_before
        )
        left = await conn.fetchval(
            "SELECT count(*) FROM pg_namespace WHERE nspname LIKE $1", f"ef\\_\\_%\\_\\_{tenant.id}"
        )
        assert left == 0
        version = await conn.fetchval(
            "SELECT version FROM eventfold.projection_versions WHERE tenant = $1", tenant.id
        )
        assert version is not None
    finally:
        await conn.close()


async def kill_once_it_saved_progress(
    settings: Settings, conn: asyncpg.Connection, tenant: str
) -> None:
    """Start a slow ``eventfold replay`` of ``tenant``; SIGKILL it once it saved progress."""
    proc = subprocess.Popen(
        [EVENTFOLD, "replay", "--tenant", tenant, "--rate", "20", "--json"],
        env=_env(settings),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(600):
            saved = await conn.fetchval(
                "SELECT positions FROM eventfold.rebuilds WHERE tenant = $1", tenant
            )
            if saved is not None and json.loads(saved):
                return
            assert proc.poll() is None, "the rebuild ended before it was interrupted"
            await asyncio.sleep(0.1)
        raise AssertionError("the rebuild saved no progress")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)


async def test_an_interrupted_rebuild_resumes(api: Api, tenant: TenantApi) -> None:
    settings = api.settings
    token = await seed(tenant, 60)
    await tenant.read_json("/collections/items/records/r0", token)
    conn = await connect(settings)
    try:
        await kill_once_it_saved_progress(settings, conn, tenant.id)
        status, doc, err = await eventfold(settings, "replay", "--tenant", tenant.id)
        assert status == 0, err
        assert doc["tenants"][0]["resumed"] is True
        assert doc["tenants"][0]["swapped"] is True
        assert doc["tenants"][0]["equal"] is True
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM eventfold.rebuilds WHERE tenant = $1", tenant.id
            )
            == 0
        )
        status, doc, err = await eventfold(settings, "verify", "--tenant", tenant.id)
        assert status == 0, (doc, err)
    finally:
        await conn.close()


async def test_several_tenants_rebuild_in_one_pass_while_one_of_them_resumes(
    api: Api, tenant: TenantApi
) -> None:
    """Tenants given together share one read of the log; each keeps its own progress."""
    settings = api.settings
    other = TenantApi(api, (await api.create_tenant())["id"])
    token = await seed(tenant, 60)
    await tenant.read_json("/collections/items/records/r0", token)
    conn = await connect(settings)
    try:
        # The first tenant's rebuild is interrupted once it saved progress.
        await kill_once_it_saved_progress(settings, conn, tenant.id)
        # Both tenants write after the interruption; the other one's projection is corrupt.
        token = await seed(tenant, 3)
        other_token = await seed(other, 20)
        await tenant.read_json("/collections/items/records/r0", token)
        await other.read_json("/collections/items/records/r0", other_token)
        await conn.execute(
            f"""UPDATE "t_{other.id}".records SET data = '{{"n": -1}}'
                WHERE collection = 'items' AND id = 'r2'"""
        )
        logged = {
            t.id: await conn.fetchval(f'SELECT count(*) FROM "t_{t.id}".events')
            for t in (tenant, other)
        }

        status, doc, err = await eventfold(
            settings, "replay", "--tenant", tenant.id, "--tenant", other.id
        )
        assert status == 0, err
        reports = {r["tenant"]: r for r in doc["tenants"]}
        assert set(reports) == {tenant.id, other.id}
        assert "2 tenants: " in err  # one progress line for the shared pass
        mine, theirs = reports[tenant.id], reports[other.id]
        assert (mine["resumed"], mine["swapped"], mine["equal"]) == (True, True, True)
        assert 0 < mine["events"] < logged[tenant.id]  # only what the first run had not folded
        assert (theirs["resumed"], theirs["swapped"], theirs["changed"]) == (False, True, 1)
        assert theirs["events"] == logged[other.id]  # every event of its own, no other's
        record = await other.read_json("/collections/items/records/r2")
        assert record["data"] == {"n": 2}
        status, doc, err = await eventfold(
            settings, "verify", "--tenant", tenant.id, "--tenant", other.id
        )
        assert status == 0, (doc, err)
        assert [r["equal"] for r in doc["tenants"]] == [True, True]
        left = await conn.fetchval(
            "SELECT count(*) FROM eventfold.rebuilds WHERE tenant = ANY($1)", [tenant.id, other.id]
        )
        assert left == 0
    finally:
        await conn.close()


async def test_a_rebuild_forgets_the_cached_records_of_its_tenants_only(api: Api) -> None:
    """The rebuilt tenants' cache entries go (one pass over Redis); another tenant's stay."""
    settings = api.settings
    a, b, kept = [TenantApi(api, (await api.create_tenant())["id"]) for _ in range(3)]
    keys = {}
    for t in (a, b, kept):
        token = await seed(t, 2)
        await t.read_json("/collections/items/records/r0", token)  # the read fills the cache
        keys[t.id] = record_key(t.id, "items", "r0")
    cache = cache_client(settings)
    try:
        assert await cache.exists(*keys.values()) == 3
        status, doc, err = await eventfold(settings, "replay", "--tenant", a.id, "--tenant", b.id)
        assert status == 0, err
        assert [r["swapped"] for r in doc["tenants"]] == [True, True]
        assert await cache.exists(keys[a.id]) == 0
        assert await cache.exists(keys[b.id]) == 0
        assert await cache.exists(keys[kept.id]) == 1
    finally:
        await cache.aclose()


async def test_events_lists_a_tenants_history(api: Api, tenant: TenantApi) -> None:
    token = await seed(tenant, 3)
    await tenant.read_json("/collections/items/records/r0", token)
    status, doc, err = await eventfold(
        api.settings, "events", "--tenant", tenant.id, "--type", "record.patched"
    )
    assert status == 0, err
    assert [e["subject"] for e in doc] == ["items/r0"]
    assert all(e["status"] == "applied" for e in doc)


async def _produce(settings: Settings, events: list[dict[str, Any]]) -> None:
    from aiokafka import AIOKafkaProducer

    from eventfold.kafka import message_key

    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        futures = [
            await producer.send(
                settings.events_topic,
                orjson.dumps(ev),
                key=message_key(ev["tenant"], ev.get("subject"), ev["id"]),
            )
            for ev in events
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def _record_events(tenant: str, start: int, count: int) -> list[dict[str, Any]]:
    now = datetime.now(UTC)
    return [
        {
            "specversion": "1.0",
            "id": f"{tenant}-{i}",
            "source": "test",
            "type": "record.patched" if i % 4 == 3 else "record.upserted",
            "subject": f"items/r{i % 25}",
            "tenant": tenant,
            "time": (now + timedelta(milliseconds=i)).isoformat(),
            "data": {"i": i} if i % 4 != 3 else {"patched": i},
        }
        for i in range(start, start + count)
    ]


async def test_a_rebuild_from_the_archive_equals_the_original_after_kafka_lost_it(
    stack: Settings,
) -> None:
    from aiokafka import TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

    from consumers.archiver.processor import Archiver
    from consumers.projector.processor import Projector
    from devstack import ensure_bucket, ensure_topics
    from eventfold.clients import open_pool
    from eventfold.metrics import Metrics
    from tests.conftest import new_tenant_id

    name = uuid.uuid4().hex[:8]
    settings = dataclasses.replace(
        stack,
        events_topic=f"{stack.events_topic}.replay-{name}",
        dlq_topic=f"{stack.dlq_topic}.replay-{name}",
        consumer_group_prefix=f"{stack.consumer_group_prefix}.replay-{name}",
        s3_bucket=f"eventfold-replay-{name}",
        topic_partitions=3,
    )
    await ensure_topics(settings)
    await ensure_bucket(settings)
    tenant, neighbour = new_tenant_id(), new_tenant_id()
    created = {
        "specversion": "1.0",
        "id": f"{tenant}-created",
        "source": "test",
        "type": "tenant.created",
        "subject": None,
        "tenant": tenant,
        "time": datetime.now(UTC).isoformat(),
        "data": {"id": tenant, "name": tenant},
    }
    # The archived part of the log (deleted from Kafka below), then a part only Kafka has.
    await _produce(
        settings,
        [created, *_record_events(tenant, 0, 200), *_record_events(neighbour, 0, 30)],
    )
    pool = await open_pool(settings)
    conn = await connect(settings)
    try:
        archiver = Archiver(
            dataclasses.replace(settings, archive_segment_bytes=4_000, archive_segment_seconds=0.5),
            pool,
            Metrics(),
        )
        stop = asyncio.Event()
        task = asyncio.create_task(archiver.run(stop))
        try:
            async with asyncio.timeout(120):
                while (
                    await conn.fetchval(
                        "SELECT coalesce(sum(next_offset), 0) FROM eventfold.checkpoints"
                        " WHERE consumer = $1 AND topic = $2",
                        archiver.checkpoint_name,
                        settings.events_topic,
                    )
                    < 231
                ):
                    assert not task.done()
                    await asyncio.sleep(0.1)
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
        await _produce(settings, _record_events(tenant, 200, 60))
        await Projector(settings, pool, Metrics()).run(burst=True)
        original = await conn.fetch(f'SELECT * FROM "t_{tenant}".records ORDER BY collection, id')
        assert len(original) == 25

        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
        await admin.start()
        try:
            ends = {
                p: int(
                    await conn.fetchval(
                        "SELECT next_offset FROM eventfold.checkpoints"
                        " WHERE consumer = $1 AND topic = $2 AND partition = $3",
                        archiver.checkpoint_name,
                        settings.events_topic,
                        p,
                    )
                )
                for p in range(3)
            }
            await admin.delete_records(
                {
                    TopicPartition(settings.events_topic, p): RecordsToDelete(o)
                    for p, o in ends.items()
                }
            )
        finally:
            await admin.close()
        await conn.execute(f"UPDATE \"t_{tenant}\".records SET data = '{{}}' WHERE id = 'r3'")

        env_settings = settings
        # Kafka alone no longer holds the start of the log: a fold of it differs.
        status, doc, err = await eventfold(env_settings, "verify", "--tenant", tenant)
        assert status == 1, err
        status, doc, err = await eventfold(
            env_settings, "replay", "--tenant", tenant, "--from-archive"
        )
        assert status == 0, err
        report = doc["tenants"][0]
        assert report["swapped"] is True
        assert report["changed"] == 1  # r3, corrupted above
        # tenant.created and 200 records from the archive, the 60 after them from Kafka.
        assert (report["archive_events"], report["events"]) == (201, 261)
        rebuilt = await conn.fetch(f'SELECT * FROM "t_{tenant}".records ORDER BY collection, id')
        assert rebuilt == original
        status, doc, err = await eventfold(
            env_settings, "verify", "--tenant", tenant, "--from-archive"
        )
        assert status == 0, (doc, err)
    finally:
        await conn.close()
        await pool.close()


async def test_replay_outdated_rebuilds_schemas_of_another_projection_version(
    api: Api, tenant: TenantApi
) -> None:
    from eventfold.readmodel import PROJECTION_VERSION

    token = await seed(tenant, 5)
    await tenant.read_json("/collections/items/records/r0", token)
    conn = await connect(settings := api.settings)
    try:
        await conn.execute(
            "UPDATE eventfold.projection_versions SET version = $2 WHERE tenant = $1",
            tenant.id,
            PROJECTION_VERSION - 1,
        )
        # Narrowed to this test's tenant: the shared database holds other sessions'
        # tenants, some built by another projection version, whose logs are elsewhere.
        outdated = ("replay", "--outdated", "--tenant", tenant.id)
        status, doc, err = await eventfold(settings, *outdated)
        assert status == 0, err
        assert tenant.id in [r["tenant"] for r in doc["tenants"]]
        assert all(r["swapped"] for r in doc["tenants"])
        assert (
            await conn.fetchval(
                "SELECT version FROM eventfold.projection_versions WHERE tenant = $1", tenant.id
            )
            == PROJECTION_VERSION
        )
        status, doc, err = await eventfold(settings, *outdated)
        assert status == 0, err
        assert tenant.id not in [r["tenant"] for r in doc["tenants"]]
    finally:
        await conn.close()


PLATFORM_ROWS = {
    "api_keys": "id, name, roles, secret_hash, created_at, revoked_at, event_id",
    "webhooks": "id, url, types, secret_sealed, created_at, deleted_at",
    "integrations": "id, kind, config, headers_sealed, webhook_secret_sealed, created_at,"
    " deleted_at, event_id, topic",
}


async def platform_rows(conn: asyncpg.Connection, tenant: str) -> dict[str, list[Any]]:
    """The tenant's rows of the platform tables the gateway's events are folded into."""
    return {
        name: [
            dict(r)
            for r in await conn.fetch(
                f"SELECT {cols} FROM eventfold.{name} WHERE tenant = $1 ORDER BY id", tenant
            )
        ]
        for name, cols in PLATFORM_ROWS.items()
    }


async def history(tenant: TenantApi) -> dict[str, tuple[str, str, str | None]]:
    """Every event of the tenant's history: id → (type, status, reason)."""
    out: dict[str, tuple[str, str, str | None]] = {}
    after = None
    while True:
        doc = await tenant.read_json("/events?limit=1000" + (f"&after={after}" if after else ""))
        for e in doc["items"]:
            out[e["id"]] = (e["type"], e["status"], e.get("reason"))
        after = doc["next"]
        if after is None:
            return out


async def admin_write(tenant: TenantApi, method: str, rest: str, **kw: Any) -> dict[str, Any]:
    """An admin's write, accepted and projected (read back with its token) before it returns."""
    resp = await tenant.call(method, rest, roles=("admin",), **kw)
    assert resp.status in (201, 202), await resp.text()
    doc: dict[str, Any] = await resp.json()
    listing = "/" + rest.strip("/").split("/")[0]
    seen = await tenant.call(
        "GET", listing, roles=("admin",), headers={"X-Consistency-Token": doc["consistency_token"]}
    )
    assert seen.status == 200, await seen.text()
    return doc


async def republish(settings: Settings, envelope: dict[str, Any], **changes: Any) -> str:
    """Publish a copy of ``envelope`` with a new id (and ``changes``) straight to the log."""
    from eventfold.kafka import make_producer, message_key

    event = {**envelope, **changes, "id": uuid.uuid4().hex}
    for field in ("status", "reason"):
        event.pop(field, None)
    producer = make_producer(settings)
    await producer.start()
    try:
        await producer.send_and_wait(
            settings.events_topic,
            orjson.dumps(event),
            key=message_key(event["tenant"], event["subject"], event["id"]),
        )
    finally:
        await producer.stop()
    return str(event["id"])


async def seed_gateway_events(tenant: TenantApi) -> dict[str, Any]:
    """API keys, webhooks and an integration, created, changed and removed, then 20
    records; and two events the projector rejects (an id taken, a key revoked twice)."""
    settings = tenant.api.settings
    keep = await admin_write(tenant, "POST", "/api-keys", json={"name": "k", "roles": ["reader"]})
    gone = await admin_write(tenant, "POST", "/api-keys", json={"name": "g", "roles": ["writer"]})
    await admin_write(tenant, "DELETE", f"/api-keys/{gone['id']}")
    hook = await admin_write(
        tenant, "POST", "/webhooks", json={"url": "http://127.0.0.1:9/h", "types": ["none.*"]}
    )
    dropped = await admin_write(
        tenant, "POST", "/webhooks", json={"url": "http://127.0.0.1:9/d", "types": ["none.*"]}
    )
    await admin_write(tenant, "DELETE", f"/webhooks/{dropped['id']}")
    integration = await admin_write(
        tenant,
        "POST",
        "/integrations",
        json={
            "kind": "http-poll",
            "url": "http://127.0.0.1:9/source",
            "collection": "things",
            "interval_seconds": 3600,
            "headers": {"Authorization": "Bearer upstream"},
        },
    )
    await admin_write(tenant, "PATCH", f"/integrations/{integration['id']}", json={"paused": True})
    token = ""
    for i in range(20):
        token = (await tenant.write("PUT", f"/collections/items/records/r{i}", json={"n": i}))[
            "consistency_token"
        ]
    await tenant.read_json("/collections/items/records/r0", token)
    events = await history(tenant)
    created = next(i for i, (t, _, _) in events.items() if t == "webhook.created")
    envelope = await tenant.read_json(f"/events/{created}")
    [revoked] = [i for i, (t, _, _) in events.items() if t == "apikey.revoked"]
    revocation = await tenant.read_json(f"/events/{revoked}")
    taken = await republish(settings, envelope)
    twice = await republish(settings, revocation)
    async with asyncio.timeout(30):
        while not {taken, twice} <= (events := await history(tenant)).keys():
            await asyncio.sleep(0.1)
    assert events[taken][1:] == ("rejected", f"webhook {envelope['data']['id']} exists already")
    assert events[twice][1] == "rejected"
    return {"key": keep, "gone": gone, "hook": hook, "integration": integration}


async def test_gateway_events_fold_alike_live_and_in_a_rebuild(api: Api, tenant: TenantApi) -> None:
    """webhook.*, apikey.* and integration.* get the same outcome in a rebuild as live
    (issue 21, item 6: verify said DIFFERS, and a replay turned them into ``rejected``)."""
    settings = api.settings
    made = await seed_gateway_events(tenant)
    before = await history(tenant)
    conn = await connect(settings)
    try:
        rows = await platform_rows(conn, tenant.id)
        assert [len(rows[t]) for t in PLATFORM_ROWS] == [2, 2, 1]

        status, doc, err = await eventfold(settings, "verify", "--tenant", tenant.id)
        report = doc["tenants"][0]
        assert (status, report["equal"], report["history_differs"]) == (0, True, 0), report
        assert (report["history"], report["platform"]) == ([], [])

        status, doc, err = await eventfold(settings, "replay", "--tenant", tenant.id)
        assert status == 0, err
        assert doc["tenants"][0]["swapped"] is True
        # Besides the audit events of the verify and the replay (applied), nothing changed.
        async with asyncio.timeout(30):  # the replay's is published as it ends
            while True:
                after = await history(tenant)
                audit = {i: v for i, v in after.items() if v[0] == "tenant.operator_action"}
                if len(audit) == 2:
                    break
                await asyncio.sleep(0.1)
        assert sorted(v[1] for v in audit.values()) == ["applied", "applied"]
        assert {i: v for i, v in after.items() if i not in audit} == before
        assert await platform_rows(conn, tenant.id) == rows
        # The keys still work as they did: one reads, the revoked one is refused.
        path = tenant.path("/collections/items/records/r0")
        resp = await api.client.get(path, headers={"X-API-Key": made["key"]["key"]})
        assert resp.status == 200, await resp.text()
        resp = await api.client.get(path, headers={"X-API-Key": made["gone"]["key"]})
        assert resp.status == 401

        status, doc, err = await eventfold(settings, "verify", "--tenant", tenant.id)
        assert (status, doc["tenants"][0]["equal"]) == (0, True), (doc, err)
    finally:
        await conn.close()


async def test_verify_lists_differing_history_and_platform_rows_and_replay_repairs_them(
    api: Api, tenant: TenantApi
) -> None:
    settings = api.settings
    made = await seed_gateway_events(tenant)
    key_id, hook_id = made["key"]["id"], made["hook"]["id"]
    conn = await connect(settings)
    try:
        rows = await platform_rows(conn, tenant.id)
        event_id = await conn.fetchval(
            f"""UPDATE "t_{tenant.id}".events SET status = 'rejected', reason = 'tampered'
                WHERE type = 'apikey.created' AND envelope::jsonb -> 'data' ->> 'id' = $1
                RETURNING id""",
            key_id,
        )
        await conn.execute("DELETE FROM eventfold.api_keys WHERE id = $1", key_id)
        await conn.execute(
            "UPDATE eventfold.webhooks SET url = 'http://127.0.0.1:9/evil' WHERE id = $1", hook_id
        )

        status, doc, err = await eventfold(settings, "verify", "--tenant", tenant.id)
        assert status == 1, err
        report = doc["tenants"][0]
        assert (report["equal"], report["history_differs"], report["platform_differs"]) == (
            False,
            1,
            2,
        )
        assert report["history"] == [
            {
                "id": event_id,
                "type": "apikey.created",
                "live_status": "rejected",
                "live_reason": "tampered",
                "rebuilt_status": "applied",
                "rebuilt_reason": None,
            }
        ]
        assert report["platform"] == [
            {"table": "api_keys", "id": key_id, "change": "added"},
            {"table": "webhooks", "id": hook_id, "change": "changed"},
        ]
        # The text output names them too.
        proc = await asyncio.create_subprocess_exec(
            EVENTFOLD, "verify", "--tenant", tenant.id, env=_env(settings),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), 180)
        text = out.decode()
        assert proc.returncode == 1
        assert f"history {event_id} apikey.created: live rejected (tampered), rebuilt applied" in (
            text
        )
        assert f"added api_keys/{key_id}" in text
        assert f"changed webhooks/{hook_id}" in text

        status, doc, err = await eventfold(settings, "replay", "--tenant", tenant.id)
        assert status == 0, err
        assert await platform_rows(conn, tenant.id) == rows
        status, doc, err = await eventfold(settings, "verify", "--tenant", tenant.id)
        assert (status, doc["tenants"][0]["equal"]) == (0, True), (doc, err)
        # The restored key authenticates again (the swap told the API's key cache).
        path = tenant.path("/collections/items/records/r0")
        async with asyncio.timeout(10):
            while (
                await api.client.get(path, headers={"X-API-Key": made["key"]["key"]})
            ).status != 200:
                await asyncio.sleep(0.1)
    finally:
        await conn.close()

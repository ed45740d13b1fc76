"""The Redis record cache: version-guarded refresh and fill, tombstones, breaker, hot keys.

Against the real services: the session app (API, ingest, projector, cache
processor) for the cache's behaviour, and an app of its own whose Redis is
reached through a :class:`FaultProxy` for the outage.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from consumers.cache.processor import CacheProcessor
from devstack import ensure_topics
from entrypoints.bootstrap import create_app
from eventfold.appkeys import CACHE, METRICS, POOL
from eventfold.breaker import CLOSED, OPEN
from eventfold.cache import HOT_TENANTS_KEY, Cached, HotKeys, RecordCache, decode_entry, record_key
from eventfold.settings import Settings
from tests.conftest import _delete_topics
from tests.faultproxy import FaultProxy
from tests.integration.conftest import SESSION_PARTS, Api, TenantApi
from tests.integration.test_faults import host_port, with_port

pytestmark = pytest.mark.integration

RECORDS = "/collections/things/records"
#: A condition awaited longer than this fails the test instead of hanging it (the
#: session's cache processor works through every test's writes: generous on purpose).
PATIENCE = 90.0


def cache_of(api: Api) -> RecordCache:
    return api.client.server.app[CACHE]


def counter(api: Api, metric: Any, *labels: str) -> float:
    value: float = (metric.labels(*labels) if labels else metric)._value.get()
    return value


async def stored(cache: RecordCache, tenant: str, record: str) -> Cached | None:
    raw = await cache.redis.get(record_key(tenant, "things", record))
    return decode_entry(raw) if raw else None


async def until_stored(
    cache: RecordCache, tenant: str, record: str, version: int, *, tombstone: bool = False
) -> Cached:
    """Wait until the cache processor has written ``version`` of the record."""
    deadline = time.monotonic() + PATIENCE
    while True:
        entry = await stored(cache, tenant, record)
        if entry is not None and entry.version >= version:
            assert entry.version == version, entry
            assert (entry.body is None) is tombstone, entry
            return entry
        assert time.monotonic() < deadline, f"version {version} never cached; have {entry}"
        await asyncio.sleep(0.02)


async def write(t: TenantApi, method: str, record: str, doc: Any = None, **kw: Any) -> str:
    body: dict[str, Any] = await t.write(method, f"{RECORDS}/{record}", json=doc, **kw)
    token: str = body["consistency_token"]
    return token


async def patch(t: TenantApi, record: str, doc: dict[str, Any]) -> str:
    body: dict[str, Any] = await t.write(
        "PATCH",
        f"{RECORDS}/{record}",
        data=orjson.dumps(doc),
        headers={"Content-Type": "application/merge-patch+json"},
    )
    token: str = body["consistency_token"]
    return token


async def test_a_read_fills_the_cache_and_the_next_one_hits_it(api: Api, tenant: TenantApi) -> None:
    token = await write(tenant, "PUT", "r1", {"n": 1, "s": "é"})
    metrics = api.client.server.app[METRICS]

    # A read carrying a token reads PostgreSQL (the cache may lag the projection), then fills.
    first = await tenant.read(f"{RECORDS}/r1", token)
    assert first.status == 200, await first.text()
    hits = counter(api, metrics.cache_hits, "get")
    second = await tenant.read(f"{RECORDS}/r1")
    assert second.status == 200
    assert counter(api, metrics.cache_hits, "get") == hits + 1
    assert await second.read() == await first.read()  # the same bytes, whichever path
    assert second.headers["ETag"] == first.headers["ETag"] == '"1"'
    assert second.content_type == "application/json"

    not_modified = await tenant.call(
        "GET", f"{RECORDS}/r1", roles=("reader",), headers={"If-None-Match": '"1"'}
    )
    assert not_modified.status == 304
    assert counter(api, metrics.cache_hits, "get") == hits + 2


async def test_processor_refreshes_committed_changes_and_deletes_leave_a_tombstone(
    api: Api, tenant: TenantApi
) -> None:
    cache = cache_of(api)
    await write(tenant, "PUT", "r1", {"a": 1})
    # Nobody read it: the cache processor wrote it after the projector committed.
    v1 = await until_stored(cache, tenant.id, "r1", 1)
    assert v1.body is not None
    assert orjson.loads(v1.body)["data"] == {"a": 1}

    await patch(tenant, "r1", {"b": 2})
    await until_stored(cache, tenant.id, "r1", 2)
    doc = await tenant.read_json(f"{RECORDS}/r1")
    assert doc["version"] == 2
    assert doc["data"] == {"a": 1, "b": 2}

    await write(tenant, "DELETE", "r1")
    await until_stored(cache, tenant.id, "r1", 3, tombstone=True)
    assert (await tenant.read(f"{RECORDS}/r1")).status == 404
    # A read that found version 2 before the delete and fills late cannot resurrect it.
    assert v1.body is not None
    assert not await cache.fill(tenant.id, "things", "r1", 2, v1.body)
    assert (await tenant.read(f"{RECORDS}/r1")).status == 404

    # Deleted records keep counting: created again, it is version 4 and replaces the tombstone.
    await write(tenant, "PUT", "r1", {"again": True})
    await until_stored(cache, tenant.id, "r1", 4)
    doc = await tenant.read_json(f"{RECORDS}/r1")
    assert doc["version"] == 4
    assert doc["data"] == {"again": True}


async def test_a_late_fill_of_an_older_version_loses_to_the_refresh(
    api: Api, tenant: TenantApi
) -> None:
    cache = cache_of(api)
    token = await write(tenant, "PUT", "r1", {"n": 1})
    old = await tenant.read(f"{RECORDS}/r1", token)  # what a slow reader read from PostgreSQL
    old_body = await old.read()
    await patch(tenant, "r1", {"n": 2})
    await until_stored(cache, tenant.id, "r1", 2)

    assert not await cache.fill(tenant.id, "things", "r1", 1, old_body)
    doc = await tenant.read_json(f"{RECORDS}/r1")
    assert doc["version"] == 2
    assert doc["data"] == {"n": 2}


async def test_concurrent_updates_and_reads_never_leave_an_older_version(
    api: Api, tenant: TenantApi
) -> None:
    cache = cache_of(api)
    writes = 40
    created = await write(tenant, "PUT", "hot", {"start": True})
    assert (await tenant.read(f"{RECORDS}/hot", created)).status == 200
    seen: dict[int, bytes] = {}  # every version a reader got, with its exact body
    done = asyncio.Event()

    async def reader() -> None:
        while not done.is_set():
            resp = await tenant.read(f"{RECORDS}/hot")
            assert resp.status == 200, await resp.text()
            body = await resp.read()
            version = orjson.loads(body)["version"]
            assert seen.setdefault(version, body) == body  # one version, one body
            # A slow reader filling what it read, racing the processor and the others.
            await cache.fill(tenant.id, "things", "hot", version, body)

    async def writer(i: int) -> str:
        return await patch(tenant, "hot", {f"k{i}": i})

    readers = [asyncio.create_task(reader()) for _ in range(4)]
    try:
        tokens = await asyncio.gather(*(writer(i) for i in range(writes)))
        for token in tokens:  # every write projected
            assert (await tenant.read(f"{RECORDS}/hot", token)).status == 200
        latest = await tenant.read_json(f"{RECORDS}/hot", tokens[0])  # from PostgreSQL
    finally:
        done.set()
        await asyncio.gather(*readers)
    assert latest["version"] == 1 + writes
    assert len(seen) > 1, "the readers saw one version only: the race was not exercised"

    entry = await until_stored(cache, tenant.id, "hot", 1 + writes)
    # Every older version arriving late, in any order and at once, is refused.
    late = list(seen.items())
    random.shuffle(late)
    results = await asyncio.gather(*(cache.fill(tenant.id, "things", "hot", v, b) for v, b in late))
    assert not any(results)
    assert await stored(cache, tenant.id, "hot") == entry
    doc = await tenant.read_json(f"{RECORDS}/hot")
    assert doc["version"] == 1 + writes
    assert doc["data"] == {"start": True, **{f"k{i}": i for i in range(writes)}}


async def test_hot_keys_rank_the_most_read_records(api: Api, tenant: TenantApi) -> None:
    token = ""
    for name in ("a", "b", "c"):
        token = await write(tenant, "PUT", name, {"name": name})
    await tenant.read(f"{RECORDS}/a", token)
    for name, reads in (("a", 5), ("b", 3), ("c", 1)):
        for _ in range(reads):
            assert (await tenant.read(f"{RECORDS}/{name}")).status == 200
    assert (await tenant.read(f"{RECORDS}/absent")).status == 404  # not counted

    resp = await tenant.call("GET", "/hot-keys?limit=2", roles=("admin",))
    assert resp.status == 200, await resp.text()
    doc = await resp.json()
    assert doc["next"] is None
    assert [(i["collection"], i["id"]) for i in doc["items"]] == [("things", "a"), ("things", "b")]
    assert doc["items"][0]["score"] > doc["items"][1]["score"] > 0

    everything = await (await tenant.call("GET", "/hot-keys", roles=("admin",))).json()
    assert {i["id"] for i in everything["items"]} == {"a", "b", "c"}
    assert (await tenant.call("GET", "/hot-keys", roles=("writer",))).status == 403
    bad = await tenant.call("GET", "/hot-keys?limit=0", roles=("admin",))
    assert bad.status == 422
    assert bad.content_type == "application/problem+json"


async def test_start_up_warms_the_hottest_keys(api: Api, tenant: TenantApi) -> None:
    cache = cache_of(api)
    tokens = {name: await write(tenant, "PUT", name, {"name": name}) for name in ("w1", "w2")}
    # The session's cache processor refreshes both first: done after the delete
    # below, its refresh would leave warming nothing to write.
    for name in tokens:
        await until_stored(cache, tenant.id, name, 1)
    # Each record is read with its own write's token: the two may sit on
    # partitions the projector reaches at different moments.
    for name, token in tokens.items():
        assert (await tenant.read(f"{RECORDS}/{name}", token)).status == 200
    resp = await tenant.call("GET", "/hot-keys", roles=("admin",))  # flushes the counts
    assert {i["id"] for i in (await resp.json())["items"]} == {"w1", "w2"}
    await cache.redis.delete(*(record_key(tenant.id, "things", n) for n in ("w1", "w2")))

    app = api.client.server.app
    processor = CacheProcessor(api.settings, app[POOL], app[METRICS], cache=cache)
    assert await processor.warm(cache, [tenant.id]) == 2
    # Start-up warming (no tenants given) takes the most recently read tenants from here.
    assert await cache.redis.zscore(HOT_TENANTS_KEY, tenant.id) is not None
    for name in ("w1", "w2"):
        entry = await stored(cache, tenant.id, name)
        assert entry is not None, name
        assert entry.version == 1, name


# -- pure parts --------------------------------------------------------------


def test_hot_keys_summary_stays_bounded_and_keeps_the_heavy_hitters() -> None:
    hot = HotKeys(capacity=8)
    rng = random.Random(7)
    for _ in range(20_000):
        if rng.random() < 0.3:
            hot.add("t", f"c/heavy{rng.randrange(3)}")
        else:
            hot.add("t", f"c/tail{rng.randrange(5000)}")
        assert len(hot.counts["t"]) <= 16
    top = sorted(hot.counts["t"].items(), key=lambda kv: -kv[1])[:3]
    assert {m for m, _ in top} == {"c/heavy0", "c/heavy1", "c/heavy2"}
    assert hot.drain()
    assert hot.counts == {}


def test_entries_parse_only_what_the_cache_writes() -> None:
    assert decode_entry(b'3|{"id":"x"}') == Cached(3, b'{"id":"x"}')
    assert decode_entry(b"4|") == Cached(4, None)
    assert decode_entry(b"garbage") is None
    assert decode_entry(b"-1|x") is None


# -- a Redis outage ------------------------------------------------------------


@dataclass
class ProxiedRedis:
    api: Api
    app: web.Application
    redis: FaultProxy


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def proxied(stack: Settings) -> AsyncIterator[ProxiedRedis]:
    """An app of its own (own topics and groups) reaching Redis through a proxy."""
    host, port = host_port(stack.redis_url, 6379)
    proxy = await FaultProxy(host, port).start()
    topics = dataclasses.replace(
        stack,
        events_topic=f"{stack.events_topic}.cache",
        dlq_topic=f"{stack.dlq_topic}.cache",
        consumer_group_prefix=f"{stack.consumer_group_prefix}-cache",
    )
    await ensure_topics(topics)
    settings = dataclasses.replace(
        topics,
        redis_url=with_port(stack.redis_url, proxy.host, proxy.port),
        cache_timeout_ms=100,
        cache_breaker_cooldown_seconds=1.0,
    )
    app = create_app(settings, SESSION_PARTS)
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield ProxiedRedis(Api(client, settings), app, proxy)
    finally:
        await proxy.heal()
        await client.close()
        await proxy.stop()
        await _delete_topics(topics, [topics.events_topic, topics.dlq_topic])


async def _ready(p: ProxiedRedis) -> dict[str, Any]:
    resp = await asyncio.wait_for(p.api.client.get("/health/ready"), 5)
    assert resp.status == 200, await resp.text()
    doc: dict[str, Any] = await resp.json()
    return doc


async def test_a_redis_outage_degrades_reads_to_postgres_and_the_breaker_recovers(
    proxied: ProxiedRedis,
) -> None:
    t = TenantApi(proxied.api, (await proxied.api.create_tenant())["id"])
    cache = proxied.app[CACHE]
    metrics = proxied.app[METRICS]
    await write(t, "PUT", "r1", {"n": 1})
    await until_stored(cache, t.id, "r1", 1)
    assert (await t.read_json(f"{RECORDS}/r1"))["version"] == 1

    proxied.redis.stall()
    try:
        token = await patch(t, "r1", {"n": 2})  # the gateway's dedup fails open
        # Every read answers, from PostgreSQL, with the newest version: never the cached v1.
        for _ in range(5):
            doc = await t.read_json(f"{RECORDS}/r1", token)
            assert doc["version"] == 2
            assert doc["data"] == {"n": 2}
            doc = await t.read_json(f"{RECORDS}/r1")
            assert doc["version"] == 2
            assert doc["data"] == {"n": 2}
        assert cache.breaker.state == OPEN
        assert counter(proxied.api, metrics.cache_breaker_state) == OPEN

        # While open, reads do not touch Redis at all (no new failure is counted).
        errors = counter(proxied.api, metrics.dependency_errors, "redis")
        cache.breaker.cooldown = 3600  # no probe during this check
        doc = await t.read_json(f"{RECORDS}/r1")
        assert doc["version"] == 2
        assert counter(proxied.api, metrics.dependency_errors, "redis") == errors
        cache.breaker.cooldown = 1.0

        report = await _ready(proxied)
        assert report["status"] == "degraded"
        assert report["checks"]["cache_breaker"]["status"] == "down"
    finally:
        await proxied.redis.heal()

    # It closes by itself: the readiness probe after the cooldown finds Redis back.
    deadline = time.monotonic() + PATIENCE
    while (await _ready(proxied))["status"] != "ok":
        assert time.monotonic() < deadline, "the breaker did not close"
        await asyncio.sleep(0.1)
    assert cache.breaker.state == CLOSED
    assert counter(proxied.api, metrics.cache_breaker_state) == CLOSED
    # The processor retried its batch once Redis was back: the entry is v2, served from Redis.
    await until_stored(cache, t.id, "r1", 2)
    hits = counter(proxied.api, metrics.cache_hits, "get")
    doc = await t.read_json(f"{RECORDS}/r1")
    assert doc["version"] == 2
    assert doc["data"] == {"n": 2}
    assert counter(proxied.api, metrics.cache_hits, "get") == hits + 1

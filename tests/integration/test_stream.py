"""Live push: ``GET /v1/tenants/{t}/stream`` as Server-Sent Events.

Events written after connecting arrive, filtered by type; ``Last-Event-ID``
replays exactly the missed events, then the stream goes on live; other
tenants' credentials are refused; a client that does not read is cut off (by
frames or by bytes); heartbeats arrive; a stream ends, saying why, once its API
key is revoked or its token expired; a tenant's open streams are capped across
instances. Second, API-only apps (no projector, their own small stream
settings) serve some streams: any instance serves any tenant.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import pytest_asyncio
from aiohttp import ClientResponse, ClientTimeout
from aiohttp.test_utils import TestClient, TestServer
from aiokafka import AIOKafkaProducer

from devstack import ensure_topics
from entrypoints.bootstrap import Parts, create_app
from eventfold.appkeys import METRICS
from eventfold.kafka import message_key
from eventfold.settings import Settings
from tests.conftest import new_tenant_id
from tests.integration.conftest import READ_API, Api, TenantApi, serving

pytestmark = pytest.mark.asyncio(loop_scope="session")

#: Liveness bound of every wait for a frame (the speed itself is a benchmark's business).
WAIT = 10.0
SSE = "text/event-stream"


@dataclasses.dataclass
class Frame:
    id: str | None
    event: str | None
    data: dict[str, Any] | None
    comments: list[str]


async def next_block(resp: ClientResponse) -> Frame:
    """The next SSE block (up to a blank line): its fields and comments."""
    fields: dict[str, str] = {}
    comments: list[str] = []
    async with asyncio.timeout(WAIT):
        while True:
            raw = await resp.content.readline()
            assert raw, "the stream ended"
            line = raw.decode().rstrip("\n")
            if not line:
                if fields or comments:
                    break
                continue
            if line.startswith(":"):
                comments.append(line[1:].strip())
                continue
            name, _, value = line.partition(": ")
            fields[name] = value
    data = orjson.loads(fields["data"]) if "data" in fields else None
    return Frame(fields.get("id"), fields.get("event"), data, comments)


async def next_event(resp: ClientResponse) -> Frame:
    """The next event frame, skipping comment blocks (heartbeats, ``live``)."""
    while True:
        frame = await next_block(resp)
        if frame.event is not None:
            return frame


async def open_stream(
    client: TestClient[Any, Any], tenant: TenantApi, query: str = "", **headers: str
) -> ClientResponse:
    resp = await client.get(
        tenant.path(f"/stream{query}"),
        headers={**tenant.api.auth(tenant.id, "reader"), "Accept": SSE, **headers},
        timeout=ClientTimeout(total=None, sock_read=None),
    )
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    return resp


async def upsert(tenant: TenantApi, record_id: str, **data: Any) -> str:
    doc = await tenant.write("PUT", f"/collections/things/records/{record_id}", json=data)
    return str(doc["event_id"])


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def api(stack: Settings) -> AsyncIterator[Api]:
    """This module's own app (API, ingest, projector) on its own topic and group.

    The stream's timing assertions should not depend on how busy the session's
    shared projector is after the tests before this module.
    """
    lane = uuid.uuid4().hex[:8]
    settings = dataclasses.replace(
        stack,
        events_topic=f"{stack.events_topic}.stream-{lane}",
        dlq_topic=f"{stack.dlq_topic}.stream-{lane}",
        consumer_group_prefix=f"{stack.consumer_group_prefix}.stream-{lane}",
    )
    await ensure_topics(settings)
    server = TestServer(create_app(settings, Parts(processors=("projector",))))
    client: TestClient[Any, Any] = TestClient(server)
    await client.start_server()
    try:
        yield Api(client, settings)
    finally:
        await client.close()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def small(api: Api) -> AsyncIterator[TestClient[Any, Any]]:
    """A second API-only instance: heartbeat every 0.2 s, two events of queue per client."""
    settings = dataclasses.replace(api.settings, stream_heartbeat_seconds=0.2, stream_queue_max=2)
    app = create_app(settings, Parts(api=True, ingest=False, processors=()))
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def strict(api: Api) -> AsyncIterator[TestClient[Any, Any]]:
    """An API-only instance: two streams per tenant, no token leeway, checks every 0.2 s."""
    settings = dataclasses.replace(
        api.settings,
        stream_heartbeat_seconds=0.2,
        stream_max_per_tenant=2,
        stream_recheck_seconds=0.2,
        jwt_leeway_seconds=0,
    )
    async with serving(settings, READ_API) as client:
        yield client


async def end_of(resp: ClientResponse) -> dict[str, Any]:
    """The stream's ``end`` frame (skipping events and comments before it); the body ends."""
    async with asyncio.timeout(WAIT):  # heartbeats alone would keep the loop going
        while True:
            frame = await next_block(resp)
            if frame.event == "end":
                break
    assert frame.id is None  # Last-Event-ID keeps naming the last event
    assert frame.data is not None
    async with asyncio.timeout(WAIT):
        assert await resp.content.read() == b"", "nothing may follow the end frame"
    return frame.data


async def test_event_written_after_connecting_arrives(api: Api, tenant: TenantApi) -> None:
    # record.* only: the tenant's own tenant.created may be published after we connect.
    resp = await open_stream(api.client, tenant, "?types=record.*")
    try:
        event_id = await upsert(tenant, "a", n=1)
        frame = await next_event(resp)
        assert frame.event == "record.upserted"
        assert frame.data is not None
        assert frame.data["id"] == event_id
        assert frame.data["status"] == "applied"
        assert frame.data["subject"] == "things/a"
        assert frame.data["data"] == {"n": 1}
        assert frame.id is not None
        assert frame.id.isdigit()
    finally:
        resp.close()


async def test_type_filter_with_wildcard(api: Api, tenant: TenantApi, small: Any) -> None:
    # Served by the other instance: the events reach it through Redis.
    resp = await open_stream(small, tenant, "?types=record.d*,tenant.*")
    try:
        await upsert(tenant, "b", n=1)
        deleted = await tenant.write("DELETE", "/collections/things/records/b")
        frame = await next_event(resp)
        assert frame.event == "record.deleted"
        assert frame.data is not None
        assert frame.data["id"] == deleted["event_id"]
    finally:
        resp.close()


async def test_resume_with_last_event_id(api: Api, tenant: TenantApi) -> None:
    first = await open_stream(api.client, tenant, "?types=record.*")
    try:
        await upsert(tenant, "r", n=1)
        seen = await next_event(first)
    finally:
        first.close()
    missed = [await upsert(tenant, "r", n=n) for n in (2, 3, 4)]
    assert seen.id is not None
    resumed = await open_stream(api.client, tenant, "?types=record.*", **{"Last-Event-ID": seen.id})
    try:
        got = [await next_event(resumed) for _ in missed]
        assert [f.data["id"] for f in got if f.data] == missed
        assert [f.data["data"]["n"] for f in got if f.data] == [2, 3, 4]
        ids = [int(seen.id)] + [int(f.id or 0) for f in got]
        assert ids == sorted(set(ids))
        # Live after the replay, and nothing the replay sent comes again.
        later = await upsert(tenant, "r", n=5)
        frame = await next_event(resumed)
        assert frame.data is not None
        assert frame.data["id"] == later
        assert int(frame.id or 0) > ids[-1]
    finally:
        resumed.close()


async def test_last_event_id_query_parameter(api: Api, tenant: TenantApi) -> None:
    first = await upsert(tenant, "q", n=1)
    second = await upsert(tenant, "q", n=2)
    resp = await open_stream(api.client, tenant, "?types=record.*&last_event_id=0")
    try:
        got = [await next_event(resp) for _ in range(2)]
        assert [f.data["id"] for f in got if f.data] == [first, second]
    finally:
        resp.close()


async def test_credentials_and_parameters(api: Api, tenant: TenantApi) -> None:
    path = tenant.path("/stream")
    other = new_tenant_id()
    resp = await api.client.get(path, headers={**api.auth(other, "reader"), "Accept": SSE})
    assert resp.status == 403
    resp = await api.client.get(path, headers={"Accept": SSE})
    assert resp.status == 401
    # A plain GET (Accept: */*) is told what to send instead of waiting forever.
    resp = await api.client.get(path, headers=api.auth(tenant.id, "reader"))
    assert resp.status == 400
    for query in ("?types=Bad!", "?types=", "?last_event_id=x"):
        resp = await api.client.get(
            path + query, headers={**api.auth(tenant.id, "reader"), "Accept": SSE}
        )
        assert resp.status == 422, query
        assert resp.content_type == "application/problem+json"


async def test_heartbeats_arrive(tenant: TenantApi, small: TestClient[Any, Any]) -> None:
    resp = await open_stream(small, tenant)
    try:
        beats = 0
        while beats < 2:
            block = await next_block(resp)
            beats += block.comments.count("heartbeat")
    finally:
        resp.close()


async def silent_client(
    client: TestClient[Any, Any], tenant: TenantApi
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A stream whose client never reads: a tiny receive window, so the server's buffers fill."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (client.host, client.port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=1024)
    token = tenant.api.token(tenant.id, "reader")
    writer.write(
        f"GET {tenant.path('/stream')} HTTP/1.1\r\nHost: test\r\n"
        f"Accept: {SSE}\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
    assert head.startswith(b"HTTP/1.1 200"), head
    return reader, writer


async def test_slow_client_is_disconnected(tenant: TenantApi, small: TestClient[Any, Any]) -> None:
    metrics = small.server.app[METRICS]
    before = metrics.stream_slow_disconnects._value.get()
    reader, writer = await silent_client(small, tenant)
    try:
        blob = {"blob": "x" * 60_000}
        async with asyncio.timeout(60):
            n = 0
            while metrics.stream_slow_disconnects._value.get() == before:
                doc = await tenant.write("PUT", f"/collections/things/records/s{n}", json=blob)
                # One write at a time, each projected (and so published) before the next.
                got = await tenant.read(
                    f"/collections/things/records/s{n}", doc["consistency_token"]
                )
                assert got.status == 200
                n += 1
        # The connection is cut: reading ends (EOF or reset) instead of waiting forever.
        async with asyncio.timeout(WAIT):
            try:
                while await reader.read(65536):
                    pass
            except ConnectionError:
                pass
    finally:
        writer.close()


async def test_replayed_events_are_not_pushed_nor_resumed(api: Api, tenant: TenantApi) -> None:
    resp = await open_stream(api.client, tenant, "?types=record.*")
    try:
        replayed = {
            "specversion": "1.0",
            "id": f"replayed-{tenant.id}",
            "source": "test-replay",
            "type": "record.upserted",
            "subject": "things/r",
            "time": "2026-01-01T00:00:00Z",
            "tenant": tenant.id,
            "data": {"n": 0},
            "eventfoldreplay": "replay-1",
        }
        producer = AIOKafkaProducer(bootstrap_servers=api.settings.kafka_bootstrap)
        await producer.start()
        try:
            # The record's key: applied before the write below, on the same partition.
            key = message_key(tenant.id, "things/r", "")
            await producer.send_and_wait(api.settings.events_topic, orjson.dumps(replayed), key=key)
        finally:
            await producer.stop()
        after = await upsert(tenant, "r", n=1)
        frame = await next_event(resp)
        assert frame.data is not None
        assert frame.data["id"] == after  # the replayed one came first, and was skipped
    finally:
        resp.close()
    # Resuming from before both (the history) skips it too.
    resumed = await open_stream(api.client, tenant, "?types=record.*", **{"Last-Event-ID": "0"})
    try:
        frame = await next_event(resumed)
        assert frame.data is not None
        assert frame.data["id"] == after
    finally:
        resumed.close()


async def test_a_stream_ends_when_its_api_key_is_revoked(api: Api, tenant: TenantApi) -> None:
    key = {"name": "stream", "roles": ["reader"]}
    resp = await tenant.call("POST", "/api-keys", roles=("admin",), json=key)
    assert resp.status == 201, await resp.text()
    created = await resp.json()
    headers = {
        "X-API-Key": created["key"],
        "Accept": SSE,
        "X-Consistency-Token": created["consistency_token"],
    }
    stream = await api.client.get(
        tenant.path("/stream?types=record.*"),
        headers=headers,
        timeout=ClientTimeout(total=None, sock_read=None),
    )
    try:
        assert stream.status == 200, await stream.text()
        await upsert(tenant, "k", n=1)
        assert (await next_event(stream)).event == "record.upserted"  # it streams
        revoked = await tenant.call("DELETE", f"/api-keys/{created['id']}", roles=("admin",))
        assert revoked.status == 202, await revoked.text()
        assert await end_of(stream) == {
            "reason": "credentials_ended",
            "detail": "the API key was revoked",
        }
    finally:
        stream.close()


async def test_a_stream_ends_when_its_token_expires(
    tenant: TenantApi, strict: TestClient[Any, Any]
) -> None:
    token = tenant.api.token(tenant.id, "reader", ttl=2)
    resp = await strict.get(
        tenant.path("/stream"),
        headers={"Authorization": f"Bearer {token}", "Accept": SSE},
        timeout=ClientTimeout(total=None, sock_read=None),
    )
    try:
        assert resp.status == 200, await resp.text()
        assert await end_of(resp) == {
            "reason": "credentials_ended",
            "detail": "the token has expired",
        }
    finally:
        resp.close()


async def test_open_streams_per_tenant_are_capped_across_instances(
    tenant: TenantApi, strict: TestClient[Any, Any], small: TestClient[Any, Any]
) -> None:
    # `strict` allows 2 per tenant; the stream on `small` counts too (one count in Redis).
    first = await open_stream(strict, tenant)
    second = await open_stream(small, tenant)
    opened = [first, second]
    try:
        refused = await strict.get(
            tenant.path("/stream"), headers={**tenant.api.auth(tenant.id, "reader"), "Accept": SSE}
        )
        assert refused.status == 429, await refused.text()
        assert refused.headers["Retry-After"].isdigit()
        problem = await refused.json(content_type="application/problem+json")
        assert problem["status"] == 429
        # Another tenant is not held back by this one's streams.
        other = TenantApi(tenant.api, (await tenant.api.create_tenant())["id"])
        opened.append(await open_stream(strict, other))
        # A closed stream gives its slot back (once the server notices, at a heartbeat).
        second.close()
        async with asyncio.timeout(WAIT):
            while True:
                again = await strict.get(
                    tenant.path("/stream"),
                    headers={**tenant.api.auth(tenant.id, "reader"), "Accept": SSE},
                    timeout=ClientTimeout(total=None, sock_read=None),
                )
                if again.status == 200:
                    opened.append(again)
                    break
                assert again.status == 429, await again.text()
                again.release()
                await asyncio.sleep(0.1)
    finally:
        for resp in opened:
            resp.close()


async def test_a_slow_client_is_cut_by_the_bytes_it_holds_up(api: Api, tenant: TenantApi) -> None:
    """A queue of 1000 frames but 200 kB: a few large events are enough to cut the client."""
    settings = dataclasses.replace(
        api.settings, stream_heartbeat_seconds=0.2, stream_queue_max=1000,
        stream_queue_max_bytes=200_000,
    )  # fmt: skip
    async with serving(settings, READ_API) as bounded:
        metrics = bounded.server.app[METRICS]
        before = metrics.stream_slow_disconnects._value.get()
        reader, writer = await silent_client(bounded, tenant)
        try:
            blob = {"blob": "x" * 60_000}
            n = 0
            # Counting frames alone, it takes 1000 of them queued (plus what the sockets hold).
            while metrics.stream_slow_disconnects._value.get() == before and n < 500:
                doc = await tenant.write("PUT", f"/collections/things/records/b{n}", json=blob)
                got = await tenant.read(
                    f"/collections/things/records/b{n}", doc["consistency_token"]
                )
                assert got.status == 200
                n += 1
            assert metrics.stream_slow_disconnects._value.get() > before, n
            async with asyncio.timeout(WAIT):
                try:
                    while await reader.read(65536):
                        pass
                except ConnectionError:
                    pass
        finally:
            writer.close()


async def test_a_stream_ends_when_its_tenant_is_deleted(
    api: Api, tenant: TenantApi, strict: TestClient[Any, Any]
) -> None:
    # Open on another instance: the deletion reaches it through PostgreSQL, at the commit.
    resp = await strict.get(
        tenant.path("/stream"),
        headers={**api.auth(tenant.id, "reader"), "Accept": SSE},
        timeout=ClientTimeout(total=None, sock_read=None),
    )
    try:
        assert resp.status == 200, await resp.text()
        deleted = await api.request("DELETE", f"/v1/tenants/{tenant.id}")
        assert deleted.status == 202, await deleted.text()
        assert await end_of(resp) == {
            "reason": "credentials_ended",
            "detail": f"tenant {tenant.id} was deleted",
        }
    finally:
        resp.close()
    again = await strict.get(
        tenant.path("/stream"), headers={**api.auth(tenant.id, "reader"), "Accept": SSE}
    )
    assert again.status == 403

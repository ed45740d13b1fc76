"""The projector on its own: checkpoints in PostgreSQL, restarts, redeliveries, odd input."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from consumers.projector.hints import HINT_INTERVAL
from consumers.projector.processor import Projector
from devstack import ensure_topics
from eventfold import datakeys
from eventfold.clients import open_pool
from eventfold.envelope import CloudEvent
from eventfold.kafka import make_consumer
from eventfold.metrics import Metrics
from eventfold.projection.batch import (
    BatchResult,
    LogEvent,
    apply_batch,
    apply_events,
    read_events,
)
from eventfold.settings import Settings
from tests.conftest import new_tenant_id


@dataclasses.dataclass
class Lane:
    """A private topic, consumer group and tenant for one projector test."""

    settings: Settings
    pool: asyncpg.Pool
    tenant: str

    def projector(self, batch_size: int = 50) -> Projector:
        s = dataclasses.replace(self.settings, projector_batch_size=batch_size)
        return Projector(s, self.pool, Metrics())

    async def produce(self, envelopes: list[dict[str, Any]], raw: list[bytes] = ()) -> None:  # type: ignore[assignment]
        producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.kafka_bootstrap, enable_idempotence=True
        )
        await producer.start()
        try:
            for env in envelopes:
                key = f"{env['tenant']}/{env.get('subject', env['id'])}".encode()
                await producer.send(self.settings.events_topic, orjson.dumps(env), key=key)
            for value in raw:
                await producer.send(self.settings.events_topic, value, key=b"junk")
            await producer.flush()
        finally:
            await producer.stop()

    async def scalar(self, sql: str) -> Any:
        async with self.pool.acquire() as conn:
            return await conn.fetchval(sql)


def upsert(tenant: str, i: int, key: int, **data: Any) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": f"u-{i}",
        "source": "test",
        "type": "record.upserted",
        "subject": f"k/{key}",
        "tenant": tenant,
        "time": datetime(2024, 1, 1, tzinfo=UTC).isoformat(),
        "data": {"i": i, **data},
    }


def created(tenant: str) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": f"tenant.created:{tenant}",
        "source": "test",
        "type": "tenant.created",
        "subject": tenant,
        "tenant": tenant,
        "time": datetime(2024, 1, 1, tzinfo=UTC).isoformat(),
        "data": {"id": tenant, "name": "lane"},
    }


@pytest_asyncio.fixture(loop_scope="session")
async def lane(stack: Settings) -> AsyncIterator[Lane]:
    name = uuid.uuid4().hex[:8]
    settings = dataclasses.replace(
        stack,
        events_topic=f"{stack.events_topic}.lane-{name}",
        dlq_topic=f"{stack.dlq_topic}.lane-{name}",
        consumer_group_prefix=f"{stack.consumer_group_prefix}.lane-{name}",
    )
    await ensure_topics(settings)
    pool = await open_pool(settings)
    try:
        yield Lane(settings, pool, new_tenant_id())
    finally:
        await pool.close()


async def test_restart_resumes_from_the_postgres_checkpoint(lane: Lane) -> None:
    t = lane.tenant
    await lane.produce([created(t)] + [upsert(t, i, i % 40) for i in range(400)])
    first = lane.projector()
    await first.run(burst=True)
    assert await lane.scalar(f'SELECT count(*) FROM "t_{t}".events') == 401
    assert await lane.scalar(f'SELECT sum(version) FROM "t_{t}".records') == 400

    # Rewind Kafka's committed offsets to 0: they are only a hint, so nothing re-applies.
    consumer = make_consumer(lane.settings, group=first.group, client_id="t", max_poll_records=1)
    await consumer.start()
    try:
        tps = [TopicPartition(lane.settings.events_topic, p) for p in range(4)]
        consumer.assign(tps)
        await consumer.commit({tp: OffsetAndMetadata(0, "") for tp in tps})
    finally:
        await consumer.stop()

    await lane.produce([upsert(t, i, i % 40) for i in range(400, 480)])
    second = lane.projector()
    await second.run(burst=True)
    applied = second.metrics.projector_events.labels("applied")._value.get()
    assert applied == 80
    assert await lane.scalar(f'SELECT count(*) FROM "t_{t}".events') == 481
    assert await lane.scalar(f'SELECT max(version) FROM "t_{t}".records') == 12
    assert await lane.scalar(f'SELECT count(DISTINCT id) FROM "t_{t}".events') == 481


async def test_offset_hints_go_out_at_most_every_interval_and_once_at_the_end(
    lane: Lane, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = lane.tenant
    await lane.produce([created(t)] + [upsert(t, i, i) for i in range(1, 60)])
    hints: list[dict[TopicPartition, OffsetAndMetadata]] = []
    commit = AIOKafkaConsumer.commit

    async def counted(self: AIOKafkaConsumer, offsets: Any = None) -> None:
        hints.append(dict(offsets))
        await commit(self, offsets)

    monkeypatch.setattr(AIOKafkaConsumer, "commit", counted)
    projector = lane.projector(batch_size=5)  # 12 batches at least
    started = time.monotonic()
    await projector.run(burst=True)
    elapsed = time.monotonic() - started
    assert 2 <= len(hints) <= 2 + elapsed / HINT_INTERVAL
    # What the group holds in Kafka at the end is where the projector stopped.
    stored = await lane.scalar(
        f"SELECT sum(next_offset) FROM eventfold.checkpoints WHERE consumer = '{projector.group}'"
    )
    consumer = make_consumer(
        lane.settings, group=projector.group, client_id="t", max_poll_records=1
    )
    await consumer.start()
    try:
        tps = [TopicPartition(lane.settings.events_topic, p) for p in range(4)]
        committed = [await consumer.committed(tp) for tp in tps]
    finally:
        await consumer.stop()
    assert sum(c or 0 for c in committed) == stored == 60


async def test_a_batch_read_ahead_takes_in_what_came_since_and_nothing_twice(lane: Lane) -> None:
    """The read-ahead batch is topped up with what was fetched after it, up to the batch
    size, and a partition sought back (as a rebalance does) gives nothing twice."""
    t = lane.tenant
    projector = lane.projector(batch_size=6)
    consumer = make_consumer(
        lane.settings, group=projector.group, client_id="t", max_poll_records=6
    )
    await consumer.start()
    try:
        tps = [TopicPartition(lane.settings.events_topic, p) for p in range(4)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        # One record key: every event on one partition, in this order.
        await lane.produce([upsert(t, i, 1) for i in range(3)])
        ahead: list[LogEvent] = []
        while len(ahead) < 3:
            ahead += await projector._read(consumer)

        async def topped_up(events: list[LogEvent], count: int) -> list[LogEvent]:
            deadline = time.monotonic() + 20
            while len(events) < count and time.monotonic() < deadline:
                events = await projector._topped_up(consumer, events)
                await asyncio.sleep(0.02)  # getmany(timeout_ms=0) does not wait for a fetch
            return events

        await lane.produce([upsert(t, i, 1) for i in range(3, 8)])
        batch = await topped_up(ahead, 6)
        assert [e.event.id for e in batch if e.event] == [f"u-{i}" for i in range(6)]
        # Full: nothing more is taken in, the rest waits for the next batch.
        assert await projector._topped_up(consumer, batch) == batch

        # Sought back to the start, the partition delivers u-0 … u-7 again: a batch
        # holding u-0 … u-3 takes in u-4 and u-5, not its own events a second time.
        for tp in tps:
            consumer.seek(tp, 0)
        again = await topped_up(batch[:4], 6)
        assert [e.event.id for e in again if e.event] == [f"u-{i}" for i in range(6)]
    finally:
        await consumer.stop()


async def test_cancelled_midway_then_restarted_applies_each_event_once(lane: Lane) -> None:
    t = lane.tenant
    await lane.produce([created(t)] + [upsert(t, i, i % 25) for i in range(2000)])
    projector = lane.projector(batch_size=20)
    task = asyncio.create_task(projector.run())
    # Stop it once it is visibly part-way through the log.
    while (await lane.scalar("SELECT 1") is None) or (
        await lane.scalar(
            f"SELECT coalesce(sum(next_offset), 0) FROM eventfold.checkpoints"
            f" WHERE consumer = '{projector.group}'"
        )
        < 300
    ):
        await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    done = await lane.scalar(f'SELECT count(*) FROM "t_{t}".events')
    assert 0 < done < 2001

    await lane.projector().run(burst=True)
    assert await lane.scalar(f'SELECT count(*) FROM "t_{t}".events') == 2001
    assert await lane.scalar(f'SELECT count(*) FROM "t_{t}".records') == 25
    assert await lane.scalar(f'SELECT min(version) FROM "t_{t}".records') == 80
    assert await lane.scalar(f'SELECT max(version) FROM "t_{t}".records') == 80
    last = await lane.scalar(f"""SELECT data->>'i' FROM "t_{t}".records WHERE id = '0'""")
    assert last == "1975"


async def test_its_kept_connection_killed_between_batches_heals(lane: Lane) -> None:
    t = lane.tenant
    await lane.produce([created(t)] + [upsert(t, i, i % 10) for i in range(100)])
    projector = lane.projector(batch_size=20)
    task = asyncio.create_task(projector.run())
    try:
        await asyncio.wait_for(projector.caught_up.wait(), 60)
        writer = projector._writer.conn
        assert writer is not None  # kept between batches, with the budget on its session
        assert await writer.fetchval("SHOW lock_timeout") == "2s"
        async with lane.pool.acquire() as conn:
            await conn.execute("SELECT pg_terminate_backend($1)", writer.get_server_pid())
        await lane.produce([upsert(t, i, i % 10) for i in range(100, 150)])
        async with asyncio.timeout(60):
            while await lane.scalar(f'SELECT count(*) FROM "t_{t}".events') < 151:
                await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert projector._writer.conn is None  # given back when the projector stopped
    assert await lane.scalar(f'SELECT sum(version) FROM "t_{t}".records') == 150
    assert await lane.scalar(f'SELECT count(DISTINCT id) FROM "t_{t}".events') == 151


async def test_a_batch_applied_twice_has_one_effect(lane: Lane) -> None:
    t = lane.tenant
    events = [
        LogEvent(0, i, 0, CloudEvent.model_validate(env))
        for i, env in enumerate([created(t), upsert(t, 1, 1), upsert(t, 2, 1)])
    ]
    async with lane.pool.acquire() as conn:
        r1 = await apply_batch(
            conn, consumer="twice", topic=lane.settings.events_topic, events=events
        )
        r2 = await apply_batch(
            conn, consumer="twice", topic=lane.settings.events_topic, events=events
        )
        # Same events at new offsets (a producer retry that slipped through): deduped by id.
        moved = [dataclasses.replace(e, offset=e.offset + 10) for e in events]
        r3 = await apply_batch(
            conn, consumer="twice", topic=lane.settings.events_topic, events=moved
        )
    assert (r1.applied, r1.duplicates) == (3, 0)
    assert (r2.applied, r2.duplicates) == (0, 3)
    assert (r3.applied, r3.duplicates) == (0, 3)
    assert r3.positions == {0: 13}
    assert await lane.scalar(f'SELECT version FROM "t_{t}".records') == 2


async def test_a_batch_writes_its_tenants_in_one_statement_each_with_its_own_history(
    lane: Lane,
) -> None:
    a, b = new_tenant_id(), new_tenant_id()
    topic = lane.settings.events_topic
    async with lane.pool.acquire() as conn:
        await apply_batch(conn, consumer="many", topic=topic, events=_log([created(a), created(b)]))
        statements: list[str] = []
        conn.add_query_logger(lambda q: statements.append(q.query))
        batch = _log(
            [upsert(a, 1, 1), upsert(b, 2, 1), upsert(a, 3, 2), upsert(b, 4, 1), upsert(a, 5, 1)],
            start=2,
        )
        result = await apply_batch(
            conn, consumer="many", topic=topic, events=batch, reads=lane.pool
        )
    assert result.applied == 5
    writes = [q for q in statements if "INSERT INTO" in q and ".records" in q]
    assert len(writes) == 1  # one statement for both tenants
    assert f'"t_{a}".records' in writes[0]
    assert f'"t_{b}".records' in writes[0]
    for tenant, ids, versions in ((a, ["u-1", "u-3", "u-5"], [("1", 2), ("2", 1)]),
                                  (b, ["u-2", "u-4"], [("1", 2)])):  # fmt: skip
        async with lane.pool.acquire() as conn:
            history = await conn.fetch(
                f'SELECT seq, id FROM "t_{tenant}".events WHERE type = $1 ORDER BY seq',
                "record.upserted",
            )
            records = await conn.fetch(f'SELECT id, version FROM "t_{tenant}".records ORDER BY id')
        assert [r["id"] for r in history] == ids
        assert [(r["id"], r["version"]) for r in records] == versions
        # The live streams get each event with its own tenant's seq.
        live = {e.seq for e in result.live if e.tenant == tenant}
        assert live == {r["seq"] for r in history}


def _log(envelopes: list[dict[str, Any]], start: int = 0) -> list[LogEvent]:
    return [
        LogEvent(0, start + i, 0, CloudEvent.model_validate(env)) for i, env in enumerate(envelopes)
    ]


async def test_a_failed_state_read_fails_the_whole_batch(lane: Lane) -> None:
    t, u = lane.tenant, new_tenant_id()  # two tenants: their state is read ahead
    topic = lane.settings.events_topic
    async with lane.pool.acquire() as conn:
        await apply_batch(
            conn, consumer="reads", topic=topic, events=_log([created(t), created(u)])
        )
        batch = _log([upsert(t, 1, 1), upsert(u, 2, 2)], start=2)
        closed = await open_pool(lane.settings)
        await closed.close()
        with pytest.raises(asyncpg.InterfaceError):
            await apply_batch(conn, consumer="reads", topic=topic, events=batch, reads=closed)
        # Nothing of the batch committed: no record, the checkpoint still after creation.
        for tenant in (t, u):
            assert await lane.scalar(f'SELECT count(*) FROM "t_{tenant}".records') == 0
        again = await apply_batch(
            conn, consumer="reads", topic=topic, events=batch, reads=lane.pool
        )
    assert (again.applied, again.duplicates) == (2, 0)
    assert again.positions == {0: 4}
    assert await lane.scalar(f'SELECT version FROM "t_{u}".records') == 1


async def test_state_reads_are_bound_by_the_batch_budget(lane: Lane) -> None:
    t, u = lane.tenant, new_tenant_id()
    topic = lane.settings.events_topic
    async with lane.pool.acquire() as conn, lane.pool.acquire() as holder:
        await apply_batch(
            conn, consumer="budget", topic=topic, events=_log([created(t), created(u)])
        )
        async with holder.transaction():
            # An operator's DDL (or a stuck migration) holding a tenant's table.
            await holder.execute(f'LOCK TABLE "t_{u}".records IN ACCESS EXCLUSIVE MODE')
            # Either bound may fire first: both make the processor isolate tenants.
            with pytest.raises((asyncpg.LockNotAvailableError, asyncpg.QueryCanceledError)):
                await asyncio.wait_for(
                    apply_batch(
                        conn,
                        consumer="budget",
                        topic=topic,
                        events=_log([upsert(t, 1, 1), upsert(u, 2, 1)], start=2),
                        budget_ms=300,
                        reads=lane.pool,
                    ),
                    20,
                )


async def _waiting_on_a_lock(pool: asyncpg.Pool, pid: int) -> None:
    async with pool.acquire() as conn:
        while not await conn.fetchval(
            "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid
        ):
            await asyncio.sleep(0.02)  # another backend's state: nothing to await on


async def test_two_processors_meeting_new_tenants_in_other_orders_do_not_deadlock(
    lane: Lane,
) -> None:
    first, second = sorted([new_tenant_id(), new_tenant_id()])
    topic = lane.settings.events_topic
    async with lane.pool.acquire() as one, lane.pool.acquire() as two:
        async with one.transaction():
            # Processor one, mid-batch: it has created ``first``'s schema, not yet committed.
            await apply_events(
                one, consumer="order", items=_log([upsert(first, 1, 1)]), result=BatchResult()
            )
            # Processor two's batch (another partition) meets ``second`` before ``first``.
            other = asyncio.create_task(
                apply_batch(
                    two,
                    consumer="order",
                    topic=topic,
                    events=[
                        LogEvent(1, 0, 0, CloudEvent.model_validate(upsert(second, 2, 2))),
                        LogEvent(1, 1, 0, CloudEvent.model_validate(upsert(first, 3, 3))),
                    ],
                )
            )
            await asyncio.wait_for(_waiting_on_a_lock(lane.pool, two.get_server_pid()), 10)
            # Then one meets ``second`` too: with locks taken in batch order each would
            # hold the lock the other waits for, and PostgreSQL would abort one of them.
            await apply_events(
                one, consumer="order", items=_log([upsert(second, 4, 4)]), result=BatchResult()
            )
        result = await asyncio.wait_for(other, 10)
    assert result.applied == 2
    for tenant in (first, second):
        assert await lane.scalar(f'SELECT count(*) FROM "t_{tenant}".records') == 2


async def test_records_before_tenant_created_and_junk_on_the_topic(lane: Lane) -> None:
    t = lane.tenant
    # Record events first (other partitions, or a replay reading them sooner), junk, then creation.
    await lane.produce([upsert(t, 1, 1), upsert(t, 2, 2)], raw=[b"not json", b'{"id": 1}'])
    await lane.produce([created(t)])
    projector = lane.projector()
    await projector.run(burst=True)
    assert projector.metrics.projector_events.labels("parked")._value.get() == 2
    async with lane.pool.acquire() as conn:
        parked = await conn.fetch(
            "SELECT tenant, error FROM eventfold.parked WHERE consumer = $1", projector.group
        )
    assert [(r["tenant"], r["error"]) for r in parked] == [
        ("", "undecodable envelope or no valid tenant")
    ] * 2
    assert await lane.scalar(f'SELECT count(*) FROM "t_{t}".records') == 2
    assert await lane.scalar(f"SELECT name FROM eventfold.tenants WHERE id = '{t}'") == "lane"


async def test_personal_data_opened_as_it_is_read_is_folded_only_while_its_key_lives(
    lane: Lane,
) -> None:
    """The projector opens encrypted data as it reads a batch, ahead of its fold: an
    erasure folded in between (the key destroyed and forgotten) leaves the data out, as
    a replay would; a dead letter carries the envelope as the log holds it (sealed)."""
    t, topic, cache = lane.tenant, lane.settings.events_topic, datakeys.cache()
    async with lane.pool.acquire() as conn:
        await apply_batch(conn, consumer="opened", topic=topic, events=_log([created(t)]))
        keys = await datakeys.live_keys(conn, cache.keyring, t, ["k/1", "k/2"])

    def sealed(i: int, key: int, name: str) -> bytes:
        ev = CloudEvent.model_validate(upsert(t, i, key, name=name))
        return datakeys.encrypt(ev, keys[f"k/{key}"]).to_json()

    kay, kay_again = sealed(1, 1, "Kay"), sealed(2, 1, "Kay K.")
    [item] = await read_events([(0, 1, 0, kay)], cache, lane.pool)
    [later] = await read_events([(0, 2, 0, kay_again)], cache, lane.pool)
    assert item.event is not None
    assert item.event.data == {"i": 1, "name": "Kay"}
    assert later.event is not None
    assert later.event.data == {"i": 2, "name": "Kay K."}
    assert (item.sealed, item.logged) == (kay, kay)  # the log's envelope: ciphertext
    assert orjson.loads(item.raw or b"") == {**orjson.loads(kay), "data": item.event.data}
    async with lane.pool.acquire() as conn:
        first = await apply_batch(conn, consumer="opened", topic=topic, events=[item])
        # The record's erasure, as folding its record.erased does it: key destroyed, forgotten.
        assert await datakeys.destroy(conn, t, "k/1") == 1
        cache.forget(t, "k/1")
        second = await apply_batch(conn, consumer="opened", topic=topic, events=[later])
        rows = await conn.fetch(
            f'SELECT id, envelope FROM "t_{t}".events WHERE subject = $1 ORDER BY seq', "k/1"
        )
    assert (first.applied, second.applied + second.rejected) == (1, 1)
    history = {r["id"]: r["envelope"] for r in rows}
    assert history["u-1"]["data"] == {"i": 1, "name": "Kay"}
    assert "data" not in history["u-2"], history["u-2"]

    # An event parked behind another (whose data does not open) is parked as the log has it.
    forged = orjson.loads(sealed(3, 2, "Ray"))
    forged["data"] = forged["data"][:-4] + "AAAA"
    ray = sealed(4, 2, "Ray")
    batch = await read_events([(0, 3, 0, orjson.dumps(forged)), (0, 4, 0, ray)], cache, lane.pool)
    assert batch[0].sealed is None
    assert batch[1].sealed == ray
    async with lane.pool.acquire() as conn:
        parked = await apply_batch(conn, consumer="opened", topic=topic, events=batch, careful=True)
    assert [(p.event_id, p.raw) for p in parked.dead_letters] == [
        ("u-3", orjson.dumps(forged)),
        ("u-4", ray),
    ]
    assert "does not open" in parked.dead_letters[0].error

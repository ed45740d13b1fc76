"""Peer: the day-one *batched* consumer, aiokafka ``getmany`` + asyncpg, one transaction per batch.

    python -m benchmarks.suite.peer_batched --bootstrap … --topic … --dsn … --tenants a,b,…

What a competent engineer writes on day one when told "batch it": read up to
2,000 events with ``getmany``, and per batch, in ONE transaction:

- per tenant, one read of the batch's records and of which of its event ids
  the history already holds (duplicates are skipped);
- the fold in Python, with the projector's own pure fold;
- ``executemany`` of the changed records (upsert) and of the history rows;
- ``executemany`` of the checkpoint rows (next offset per partition).

So it is exactly-once like Eventfold's projector: the positions commit with
the rows, and a restart seeks to them. Its tables are Eventfold's: each
tenant's schema ``pb_<tenant>`` holds ``records`` and ``events`` created
``LIKE`` the projection's own tables ``INCLUDING ALL`` (columns, keys, the 4
secondary indexes: records by update time, the GIN index on the data, events by
type and by subject), with a sequence of its own for ``events.seq``; the
caller checks the index definitions match. Eventfold's tenant schemas must
exist (the suite runs this after the projection).

Prints one JSON line: events consumed, seconds, batches, and the seconds the
tables took to create (``setup_seconds``: not consuming).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer

from benchmarks.suite.check import partitions
from eventfold.fold import RECORD_TYPES, Record, apply
from eventfold.ids import tenant_schema

#: Events per transaction, as Eventfold's projector's largest batch.
BATCH = 2000
#: The peer's checkpoint table lives here.
CHECKPOINTS = "peer_batched"


def schema_of(tenant: str) -> str:
    """The peer's schema for ``tenant`` (quoted; tenant ids are ``[a-z0-9_]``)."""
    return f'"pb_{tenant}"'


def ddl(tenant: str) -> str:
    """The tenant's peer schema: Eventfold's two tables and their indexes, a sequence of its own."""
    s, ef = schema_of(tenant), tenant_schema(tenant)
    return f"""
    DROP SCHEMA IF EXISTS {s} CASCADE;
    CREATE SCHEMA {s};
    CREATE TABLE {s}.records (LIKE {ef}.records INCLUDING ALL);
    CREATE TABLE {s}.events (LIKE {ef}.events INCLUDING ALL EXCLUDING DEFAULTS);
    CREATE SEQUENCE {s}.events_seq_seq OWNED BY {s}.events.seq;
    ALTER TABLE {s}.events ALTER COLUMN seq SET DEFAULT nextval('{s}.events_seq_seq');
    """


CHECKPOINT_DDL = f"""
CREATE SCHEMA IF NOT EXISTS {CHECKPOINTS};
DROP TABLE IF EXISTS {CHECKPOINTS}.checkpoints;
CREATE TABLE {CHECKPOINTS}.checkpoints (
    topic text NOT NULL, partition integer NOT NULL, next_offset bigint NOT NULL,
    PRIMARY KEY (topic, partition));
"""


def _state_sql(s: str) -> str:
    return f"""
    SELECT NULL::text AS collection, id, NULL::bigint AS version, NULL::text AS data,
           NULL::timestamptz AS created_at, NULL::timestamptz AS updated_at,
           NULL::boolean AS deleted
    FROM {s}.events WHERE id = ANY($1::text[])
    UNION ALL
    SELECT r.collection, r.id, r.version, r.data::text, r.created_at, r.updated_at, r.deleted
    FROM {s}.records r JOIN unnest($2::text[], $3::text[]) AS k(c, i)
      ON r.collection = k.c AND r.id = k.i"""


def _upsert_sql(s: str) -> str:
    return f"""
    INSERT INTO {s}.records
      (collection, id, version, data, created_at, updated_at, deleted, last_event_id)
    VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7, $8)
    ON CONFLICT (collection, id) DO UPDATE SET
      version = EXCLUDED.version, data = EXCLUDED.data, created_at = EXCLUDED.created_at,
      updated_at = EXCLUDED.updated_at, deleted = EXCLUDED.deleted,
      last_event_id = EXCLUDED.last_event_id"""


def _history_sql(s: str) -> str:
    return f"""
    INSERT INTO {s}.events (id, type, subject, time, status, reason, partition, "offset", envelope)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::json)"""


_CHECKPOINT_SQL = f"""
INSERT INTO {CHECKPOINTS}.checkpoints (topic, partition, next_offset) VALUES ($1, $2, $3)
ON CONFLICT (topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset"""


def _time(ev: dict[str, Any], timestamp_ms: int) -> datetime:
    raw = ev.get("time")
    if isinstance(raw, str):
        return datetime.fromisoformat(raw)
    return datetime.fromtimestamp(timestamp_ms / 1000, UTC)


async def _apply_tenant(
    conn: asyncpg.Connection, tenant: str, items: list[tuple[Any, dict[str, Any]]]
) -> None:
    """Read the tenant's state for ``items``, fold them, write records and history."""
    s = schema_of(tenant)
    keys: list[tuple[str, str]] = []
    for _, ev in items:
        if ev.get("type") in RECORD_TYPES:
            collection, _, rid = str(ev.get("subject") or "").partition("/")
            keys.append((collection, rid))
    wanted = list(dict.fromkeys(keys))
    rows = await conn.fetch(
        _state_sql(s),
        [ev["id"] for _, ev in items],
        [k[0] for k in wanted],
        [k[1] for k in wanted],
    )
    seen: set[str] = set()
    state: dict[tuple[str, str], Record | None] = {}
    for r in rows:
        if r["collection"] is None:
            seen.add(r["id"])
        else:
            data = None if r["deleted"] else orjson.loads(r["data"])
            state[(r["collection"], r["id"])] = Record(
                r["version"], data, r["created_at"], r["updated_at"]
            )
    changed: dict[tuple[str, str], tuple[Record, str]] = {}
    history: list[tuple[Any, ...]] = []
    for msg, ev in items:
        if ev["id"] in seen:
            continue
        seen.add(ev["id"])
        at = _time(ev, msg.timestamp)
        status, reason = "applied", None
        if ev.get("type") in RECORD_TYPES:
            collection, _, rid = str(ev.get("subject") or "").partition("/")
            key = (collection, rid)
            new, outcome = apply(state.get(key), ev["type"], ev.get("data"), at=at,
                                 expected_version=ev.get("expectedversion"))  # fmt: skip
            status, reason = outcome.status, outcome.reason
            if outcome.status == "applied" and new is not None:
                state[key] = new
                changed[key] = (new, ev["id"])
        history.append((ev["id"], ev["type"], ev.get("subject"), at, status, reason,
                        msg.partition, msg.offset, msg.value.decode()))  # fmt: skip
    if changed:
        await conn.executemany(_upsert_sql(s), [
            (c, i, rec.version, None if rec.data is None else orjson.dumps(rec.data).decode(),
             rec.created_at, rec.updated_at, not rec.live, event_id)
            for (c, i), (rec, event_id) in changed.items()
        ])  # fmt: skip
    if history:
        await conn.executemany(_history_sql(s), history)


async def apply_batch(conn: asyncpg.Connection, topic: str, messages: list[Any]) -> None:
    """One transaction: every tenant of the batch, then the batch's checkpoint rows."""
    groups: dict[str, list[tuple[Any, dict[str, Any]]]] = defaultdict(list)
    positions: dict[int, int] = {}
    for msg in messages:
        positions[msg.partition] = msg.offset + 1
        ev = orjson.loads(msg.value)
        tenant = ev.get("tenant")
        if isinstance(tenant, str) and tenant:
            groups[tenant].append((msg, ev))
    async with conn.transaction():
        for tenant, items in groups.items():
            await _apply_tenant(conn, tenant, items)
        await conn.executemany(_CHECKPOINT_SQL, [(topic, p, o) for p, o in positions.items()])


async def run(bootstrap: str, topic: str, dsn: str, tenants: list[str]) -> dict[str, Any]:
    """Consume ``topic`` to the end offsets seen at start, a batch per transaction."""
    t_setup = time.perf_counter()
    conn = await asyncpg.connect(dsn)
    await conn.execute(CHECKPOINT_DDL + "".join(ddl(t) for t in tenants))
    setup = time.perf_counter() - t_setup
    parts = await partitions(bootstrap, topic)
    # A group it never joins (offsets live in PostgreSQL): see ``check.reader``.
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=f"peer-batched-{uuid.uuid4().hex[:6]}",
        enable_auto_commit=False, isolation_level="read_committed", max_poll_records=BATCH,
        fetch_max_bytes=4 * 1024 * 1024, max_partition_fetch_bytes=1024 * 1024,
    )  # fmt: skip
    await consumer.start()
    batches = done = 0
    try:
        consumer.assign(parts)
        stored = {
            r["partition"]: r["next_offset"]
            for r in await conn.fetch(
                f"SELECT partition, next_offset FROM {CHECKPOINTS}.checkpoints WHERE topic = $1",
                topic,
            )
        }
        for tp in parts:  # exactly-once: start where the committed rows say
            consumer.seek(tp, stored.get(tp.partition, 0))
        ends = await consumer.end_offsets(parts)
        total = sum(ends.values()) - sum(stored.values())
        t0 = time.perf_counter()
        while done < total:
            fetched = await consumer.getmany(timeout_ms=1000, max_records=BATCH)
            messages = [m for ms in fetched.values() for m in ms]
            while messages and len(messages) < BATCH:  # fill the batch from what is buffered
                more = await consumer.getmany(timeout_ms=0, max_records=BATCH - len(messages))
                if not more:
                    break
                messages += [m for ms in more.values() for m in ms]
            if not messages:
                continue
            await apply_batch(conn, topic, messages)
            batches += 1
            done += len(messages)
        elapsed = time.perf_counter() - t0
    finally:
        await consumer.stop()
        await conn.close()
    return {"events": done, "seconds": round(elapsed, 3), "batches": batches,
            "setup_seconds": round(setup, 3),
            "events_per_second": round(done / elapsed, 1)}  # fmt: skip


def main() -> None:
    """Parse arguments, run, print the JSON result."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--dsn", required=True)
    p.add_argument("--tenants", required=True, help="comma-separated tenant ids")
    args = p.parse_args()
    out = asyncio.run(run(args.bootstrap, args.topic, args.dsn, args.tenants.split(",")))
    sys.stdout.write(orjson.dumps(out).decode() + "\n")


if __name__ == "__main__":
    main()

"""Correctness after every phase: the projection must equal the fold of the log.

The log is read back from Kafka (every partition, start to end), events are
deduplicated by id and folded per record in partition order with the
projector's own pure fold (:func:`eventfold.fold.apply`); the result
is compared with Eventfold's tenant tables and with each peer's table. A fast
wrong result therefore cannot pass.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from eventfold.fold import RECORD_TYPES, Record, apply
from eventfold.ids import tenant_schema

#: (tenant, collection, id) → (version, data) of every live record.
State = dict[tuple[str, str, str], tuple[int, Any]]


@dataclass(frozen=True, slots=True)
class Verdict:
    """How a projection compares with the fold of the log."""

    records: int
    missing: int
    extra: int
    different: int

    @property
    def equal(self) -> bool:
        """True when nothing differs."""
        return not (self.missing or self.extra or self.different)

    def as_dict(self) -> dict[str, Any]:
        """JSON form for the results file."""
        return {"equal": self.equal, "records": self.records, "missing": self.missing,
                "extra": self.extra, "different": self.different}  # fmt: skip


async def partitions(bootstrap: str, topic: str) -> list[TopicPartition]:
    """The partitions of ``topic`` (from the broker's metadata)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return [TopicPartition(topic, p["partition"]) for p in described[0]["partitions"]]


def reader(bootstrap: str) -> AIOKafkaConsumer:
    """A consumer for manual assignment.

    It names a group it never joins: aiokafka 0.14's group-less consumer can
    raise CancelledError from ``stop()``.
    """
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id="eventfold-bench-reader",
        enable_auto_commit=False, isolation_level="read_committed",
        fetch_max_bytes=32 * 1024 * 1024, max_partition_fetch_bytes=8 * 1024 * 1024,
    )  # fmt: skip


async def end_offsets(bootstrap: str, topic: str) -> int:
    """Messages in ``topic``: the sum of its end offsets."""
    parts = await partitions(bootstrap, topic)
    consumer = reader(bootstrap)
    await consumer.start()
    try:
        return sum((await consumer.end_offsets(parts)).values())
    finally:
        await consumer.stop()


async def fold_log(bootstrap: str, topic: str, tenants: set[str]) -> State:
    """Fold every record event of ``tenants`` in ``topic`` into the expected state."""
    parts = await partitions(bootstrap, topic)
    consumer = reader(bootstrap)
    await consumer.start()
    records: dict[tuple[str, str, str], Record | None] = {}
    seen: set[str] = set()
    epoch = datetime.fromtimestamp(0, UTC)
    try:
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        pending = {tp for tp in parts if ends[tp] > 0}
        while pending:
            batch = await consumer.getmany(*pending, timeout_ms=1000, max_records=20_000)
            for tp, messages in batch.items():
                for msg in messages:
                    ev = orjson.loads(msg.value)
                    tenant = ev.get("tenant")
                    if tenant not in tenants or ev.get("type") not in RECORD_TYPES:
                        continue
                    if ev["id"] in seen:
                        continue
                    seen.add(ev["id"])
                    collection, _, rid = ev["subject"].partition("/")
                    key = (tenant, collection, rid)
                    new, _outcome = apply(
                        records.get(key), ev["type"], ev.get("data"), at=epoch,
                        expected_version=ev.get("expectedversion"),
                    )  # fmt: skip
                    records[key] = new
                if messages and messages[-1].offset + 1 >= ends[tp]:
                    pending.discard(tp)
            for tp in list(pending):
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
    finally:
        await consumer.stop()
    return {k: (r.version, r.data) for k, r in records.items() if r is not None and r.live}


async def eventfold_state(
    pool: asyncpg.Pool, tenants: list[str], schema: Callable[[str], str] = tenant_schema
) -> State:
    """Live records of ``tenants`` in Eventfold's projection (or in tables of its shape,
    one schema per tenant named by ``schema``)."""
    state: State = {}
    async with pool.acquire() as conn:
        for tenant in tenants:
            rows = await conn.fetch(
                f"SELECT collection, id, version, data::text AS data"
                f" FROM {schema(tenant)}.records WHERE NOT deleted"
            )
            for r in rows:
                state[(tenant, r["collection"], r["id"])] = (r["version"], orjson.loads(r["data"]))
    return state


async def peer_state(pool: asyncpg.Pool, schema: str) -> State:
    """Live records in a peer's ``{schema}.records`` table (see :mod:`.sink`)."""
    rows = await pool.fetch(
        f"SELECT tenant, collection, id, version, data::text AS data FROM {schema}.records"
        " WHERE NOT deleted"
    )
    return {(r["tenant"], r["collection"], r["id"]): (r["version"], orjson.loads(r["data"]))
            for r in rows}  # fmt: skip


def compare(expected: State, actual: State) -> Verdict:
    """Count records missing, extra and different (version or data)."""
    missing = sum(1 for k in expected if k not in actual)
    extra = sum(1 for k in actual if k not in expected)
    different = sum(1 for k, v in expected.items() if k in actual and actual[k] != v)
    return Verdict(len(expected), missing, extra, different)


async def index_definitions(
    conn: asyncpg.Connection, schema: str, tables: tuple[str, ...] = ("records", "events")
) -> list[str]:
    """The indexes of ``schema``'s ``tables`` as ``[UNIQUE] table USING …``, sorted.

    Two schemas whose tables have the same indexes give the same list: index
    and schema names are left out (``LIKE … INCLUDING ALL`` names its copies itself).
    Only the tables a peer writes are compared: a tenant schema also holds tables
    of features the benchmark's workload does not touch (workflow runs).
    """
    name = schema.strip('"')
    rows = await conn.fetch(
        "SELECT indexdef FROM pg_indexes WHERE schemaname = $1 AND tablename = ANY($2::text[])",
        name,
        list(tables),
    )
    shapes = []
    for r in rows:
        head, _, table_on = r["indexdef"].partition(" ON ")
        unique = "UNIQUE " if head.startswith("CREATE UNIQUE") else ""
        shapes.append(unique + table_on.replace(f"{name}.", "", 1).replace(f'"{name}".', "", 1))
    return sorted(shapes)


def checksum(state: State) -> str:
    """A short digest of a state, for the results file."""
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(orjson.dumps([key, state[key]], option=orjson.OPT_SORT_KEYS))
    return h.hexdigest()[:16]

"""Peer: the ``eventsourcing`` library (PostgreSQL backend) on the same workload.

Run as its own process so its CPU and memory are measured alone:

    python -m benchmarks.suite.peer_eventsourcing append  --events N --tenants a,b,… --dsn … \
        [--concurrency 64]
    python -m benchmarks.suite.peer_eventsourcing project --dsn …

``append`` records the workload's events on one aggregate per record, one
``save`` per event (the library's unit of consistency), ``--concurrency``
writers at once (the suite uses Eventfold's single-event ingest concurrency); ``project`` runs a
:class:`~eventsourcing.projection.ProjectionRunner` whose view folds them with
Eventfold's own fold into ``peer_es_view.records`` (tracking in the same
transaction) and stops when it has caught up. Each prints one JSON line.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
import zlib
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from functools import singledispatchmethod
from typing import Any
from urllib.parse import urlparse

import orjson
import psycopg
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import Tracking
from eventsourcing.postgres import PostgresTrackingRecorder
from eventsourcing.projection import Projection, ProjectionRunner

from benchmarks.suite.workload import Workload
from eventfold.fold import Record, apply

SCHEMA = "peer_es"
VIEW_SCHEMA = "peer_es_view"
_EPOCH = datetime.fromtimestamp(0, UTC)
#: Connections of the library's pool at most, whatever the writers.
MAX_POOL = 32
_NS = uuid.UUID("6f1d0c1e-7d1e-4c55-9a0a-2a54f1a0b0e1")


class RecordAggregate(Aggregate):
    """One record: its events carry tenant and subject so the view needs no lookup."""

    @event("Opened")
    def __init__(self, tenant: str, subject: str) -> None:
        self.tenant = tenant
        self.subject = subject

    @classmethod
    def create_id(cls, tenant: str, subject: str) -> uuid.UUID:
        """A stable id per (tenant, subject)."""
        return uuid.uuid5(_NS, f"{tenant}/{subject}")

    @event("Changed")
    def change(self, tenant: str, subject: str, kind: str, data: Any) -> None:
        """Record one upsert, patch or delete."""


class Records(Application[uuid.UUID]):
    """The event-sourced application of the peer."""

    name = "benchrecords"


class RecordsView(PostgresTrackingRecorder):
    """The materialised view: records folded like Eventfold's, tracking in the same tx."""

    def apply_change(self, tracking: Tracking, tenant: str, subject: str, kind: str,
                     data: Any) -> None:  # fmt: skip
        """Fold one change into ``peer_es_view.records`` with its tracking record."""
        collection, _, rid = subject.partition("/")
        with self.datastore.transaction(commit=True) as curs:
            self._insert_tracking(curs, tracking)
            curs.execute(
                f"SELECT version, data, deleted FROM {VIEW_SCHEMA}.records"
                " WHERE tenant = %s AND collection = %s AND id = %s FOR UPDATE",
                (tenant, collection, rid),
            )
            row = curs.fetchone()
            current = None
            if row is not None:
                current = Record(row["version"], None if row["deleted"] else row["data"],
                                 _EPOCH, _EPOCH)  # fmt: skip
            new, outcome = apply(current, kind, data, at=_EPOCH)
            if outcome.status != "applied" or new is None:
                return
            curs.execute(
                f"INSERT INTO {VIEW_SCHEMA}.records VALUES (%s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (tenant, collection, id) DO UPDATE SET version = excluded.version,"
                " data = excluded.data, deleted = excluded.deleted",
                (tenant, collection, rid, new.version,
                 orjson.dumps(new.data).decode() if new.data is not None else None, not new.live),
            )  # fmt: skip


class RecordsProjection(Projection[RecordsView]):
    """Sends each ``Changed`` event to the view; ``Opened`` only moves the tracking."""

    @singledispatchmethod
    def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        """Project one domain event."""
        if isinstance(domain_event, RecordAggregate.Changed):  # type: ignore[attr-defined]
            self.view.apply_change(tracking, domain_event.tenant, domain_event.subject,
                                   domain_event.kind, domain_event.data)  # fmt: skip
        else:
            self.view.insert_tracking(tracking)


def _env(dsn: str, schema: str) -> dict[str, str]:
    url = urlparse(dsn)
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": url.path.lstrip("/"),
        "POSTGRES_HOST": url.hostname or "127.0.0.1",
        "POSTGRES_PORT": str(url.port or 5432),
        "POSTGRES_USER": url.username or "",
        "POSTGRES_PASSWORD": url.password or "",
        "POSTGRES_SCHEMA": schema,
        "POSTGRES_POOL_SIZE": "2",
    }


def reset(dsn: str) -> None:
    """Drop and create the peer's schemas."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for schema in (SCHEMA, VIEW_SCHEMA):
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(
            f"CREATE TABLE {VIEW_SCHEMA}.records (tenant text, collection text, id text,"
            " version bigint NOT NULL, data jsonb, deleted boolean NOT NULL,"
            " PRIMARY KEY (tenant, collection, id))"
        )


def append(
    dsn: str, tenants: list[str], count: int, seed: int, concurrency: int = 1
) -> dict[str, Any]:
    """Record ``count`` workload events, one save per event, ``concurrency`` writers at once.

    Each record's events go to one writer (picked by the record's key), in order,
    so optimistic concurrency never conflicts and the result is the same fold. The
    writers are threads sharing the library's connection pool (at most
    :data:`MAX_POOL` connections: PostgreSQL's are shared with other work).
    """
    app = Records(env={**_env(dsn, SCHEMA), "POSTGRES_POOL_SIZE": str(min(concurrency, MAX_POOL)),
                       "POSTGRES_MAX_OVERFLOW": "0"})  # fmt: skip
    lanes: list[list[tuple[str, dict[str, Any]]]] = [[] for _ in range(concurrency)]
    for tenant, ev in Workload(tenants, seed=seed).events(count):
        lanes[zlib.crc32(f"{tenant}/{ev['subject']}".encode()) % concurrency].append((tenant, ev))

    def write(lane: list[tuple[str, dict[str, Any]]]) -> None:
        aggregates: dict[tuple[str, str], RecordAggregate] = {}
        for tenant, ev in lane:
            key = (tenant, ev["subject"])
            agg = aggregates.get(key)
            if agg is None:
                agg = aggregates[key] = RecordAggregate(tenant, ev["subject"])
            agg.change(tenant, ev["subject"], ev["type"], ev.get("data"))
            app.save(agg)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for done in [pool.submit(write, lane) for lane in lanes if lane]:
            done.result()
    elapsed = time.perf_counter() - t0
    return {"events": count, "seconds": round(elapsed, 3), "concurrency": concurrency,
            "pool_size": min(concurrency, MAX_POOL),
            "events_per_second": round(count / elapsed, 1)}  # fmt: skip


def project(dsn: str) -> dict[str, Any]:
    """Run the projection until it has processed every recorded event."""
    env = _env(dsn, VIEW_SCHEMA)
    env["BENCHRECORDS_POSTGRES_SCHEMA"] = SCHEMA
    app = Records(env=_env(dsn, SCHEMA))
    last = app.recorder.max_notification_id() or 0
    t0 = time.perf_counter()
    with ProjectionRunner(
        application_class=Records, projection_class=RecordsProjection,
        view_class=RecordsView, env=env,
    ) as runner:  # fmt: skip
        runner.wait(last, timeout=3600)
    elapsed = time.perf_counter() - t0
    return {"notifications": last, "seconds": round(elapsed, 3),
            "events_per_second": round(last / elapsed, 1)}  # fmt: skip


def main() -> None:
    """Parse arguments and run one phase; print its JSON result."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("phase", choices=("append", "project"))
    p.add_argument("--dsn", required=True)
    p.add_argument("--events", type=int, default=0)
    p.add_argument("--tenants", default="")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--concurrency", type=int, default=1, help="append: writers at once")
    args = p.parse_args()
    if args.phase == "append":
        reset(args.dsn)
        out = append(args.dsn, args.tenants.split(","), args.events, args.seed, args.concurrency)
    else:
        out = project(args.dsn)
    sys.stdout.write(orjson.dumps(out).decode() + "\n")
    sys.stdout.flush()
    os._exit(0)  # the library's pool threads would otherwise delay exit


if __name__ == "__main__":
    main()

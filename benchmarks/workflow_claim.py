"""The workflow processor's claim of due runs: milliseconds per claim against a backlog.

A private database, migrated; one topic holding ``--backlog`` due, unleased runs of
one tenant (a tenant waiting for room, as at the workflows benchmark's saturation)
beside ``--leased`` runs in flight, and ``--tenants`` other tenants with one due run
each. Each claim runs in a savepoint that is rolled back, so every claim sees the
same table. Measures the processor's statement (``store._CLAIM_RUNS``) and, as the
peer, the statement it replaced (a ``DISTINCT`` over every claimable run), alternated
``--rounds`` times; per statement the mean and p50 / p99 of ``--claims`` claims.
Writes ``benchmarks/results/<date>-workflow-claim.json``; nothing here asserts a time.

    .venv/bin/python -m benchmarks.workflow_claim [--backlog 1500 --leased 200 --tenants 20]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from typing import Any

import asyncpg

from benchmarks import provenance
from benchmarks.privatedb import private_database
from consumers.workflows import store
from eventfold import db
from eventfold.settings import Settings

#: The statement ``store._CLAIM_RUNS`` replaced (f4e6b33 and before): the tenants
#: with a claimable run found by a DISTINCT over all of them.
DISTINCT_CLAIM = (
    """
WITH t AS (
    SELECT DISTINCT tenant FROM eventfold.workflow_runs
    WHERE topic = $1 AND wake_at <= now() AND lease_until < now()
      AND NOT (tenant = ANY($2::text[]))
      AND NOT EXISTS (SELECT 1 FROM eventfold.tenants s
                      WHERE s.id = workflow_runs.tenant AND s.status <> 'active')
"""
    # The picking and leasing that follow are the processor's own, unchanged.
    + store._CLAIM_RUNS[store._CLAIM_RUNS.index("), picked AS (") :]
)

STATEMENTS = {
    "skip scan (store._CLAIM_RUNS)": store._CLAIM_RUNS,
    "distinct (before)": DISTINCT_CLAIM,
}


async def _fill(conn: asyncpg.Connection, topic: str, args: argparse.Namespace) -> None:
    rows: list[tuple[str, str, str, int]] = []
    for n in range(args.backlog):
        rows.append((f"{topic}-w{n}", "waiting", topic, -1))
    for n in range(args.leased):
        rows.append((f"{topic}-l{n}", "waiting", topic, 1))
    for n in range(args.tenants):
        rows.append((f"{topic}-o{n}", f"other{n:03d}", topic, -1))
    await conn.executemany(
        "INSERT INTO eventfold.workflow_runs (id, tenant, topic, workflow, depth, status,"
        " state, wake_at, lease_until) VALUES ($1, $2, $3, 'w', 1, 'running', '{}',"
        " now() - interval '1 second', now() + $4 * interval '1 hour')",
        rows,
    )
    await conn.execute("ANALYZE eventfold.workflow_runs")


async def _claims(conn: asyncpg.Connection, sql: str, topic: str, count: int) -> list[float]:
    times = []
    for _ in range(count):
        try:
            async with conn.transaction():
                started = time.perf_counter()
                await conn.fetch(sql, topic, [], 16, 64, 30.0)
                times.append(time.perf_counter() - started)
                raise _RolledBack  # every claim sees the same table
        except _RolledBack:
            pass
    return times


class _RolledBack(Exception):
    """Leaves a claim's transaction rolled back."""


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Claims per statement against one table state; their times in milliseconds."""
    settings = Settings.from_env()
    run = uuid.uuid4().hex[:8]
    topic = f"claim-{run}"
    async with private_database(settings.database_url, f"claim{run}") as dsn:
        pool = await db.create_pool(dsn, min_size=1, max_size=1)
        try:
            await db.migrate(pool)
            async with pool.acquire() as conn:
                await _fill(conn, topic, args)
                samples: dict[str, list[float]] = {name: [] for name in STATEMENTS}
                for _ in range(args.rounds):
                    for name, sql in STATEMENTS.items():
                        samples[name] += await _claims(conn, sql, topic, args.claims)
        finally:
            await pool.close()
    out: dict[str, Any] = {}
    for name, times in samples.items():
        ordered = sorted(times)
        out[name] = {
            "claims": len(times),
            "mean_ms": round(statistics.fmean(times) * 1000, 3),
            "p50_ms": round(ordered[len(ordered) // 2] * 1000, 3),
            "p99_ms": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000, 3),
        }
    return out


def main() -> None:
    """Run it and save the result file."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backlog", type=int, default=1500, help="due runs of the waiting tenant")
    p.add_argument("--leased", type=int, default=200, help="its runs in flight (leased)")
    p.add_argument("--tenants", type=int, default=20, help="other tenants, one due run each")
    p.add_argument("--claims", type=int, default=50, help="claims per statement per round")
    p.add_argument("--rounds", type=int, default=4, help="rounds, the statements alternated")
    args = p.parse_args()
    doc = {
        "benchmark": "workflow-claim",
        "provenance": provenance.stamp(),
        "args": vars(args),
        "claim": asyncio.run(measure(args)),
    }
    path = provenance.save(doc, "workflow-claim")
    print(doc["claim"])
    print(f"saved {path}")


if __name__ == "__main__":
    main()

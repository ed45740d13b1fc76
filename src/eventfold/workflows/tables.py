"""The tenant tables of workflows: definitions with their versions, runs and their steps.

Folded by the projector from ``workflow.*`` events (:mod:`eventfold.projection.workflows`)
like every tenant table, so ``eventfold replay`` rebuilds them and
``eventfold verify`` compares them. A schema made before these tables existed
gets them with its first workflow (:func:`present`, the projector's
``workflow.created`` handler creates them): thousands of tenants that never use
workflows are not given four tables each by a migration, nor rebuilt for them;
until then its reads answer as if it had no workflow.
"""

from __future__ import annotations

from typing import Any

import asyncpg


def tenant_ddl(schema: str) -> str:
    """DDL of the workflow tables in the quoted tenant ``schema`` (idempotent)."""
    s = schema
    return f"""
    CREATE TABLE IF NOT EXISTS {s}.workflows (
        id          text PRIMARY KEY,
        version     integer NOT NULL,
        name        text NOT NULL,
        enabled     boolean NOT NULL,
        definition  jsonb NOT NULL,
        created_at  timestamptz NOT NULL,
        updated_at  timestamptz NOT NULL,
        deleted_at  timestamptz
    );
    CREATE TABLE IF NOT EXISTS {s}.workflow_versions (
        id          text NOT NULL,
        version     integer NOT NULL,
        definition  jsonb NOT NULL,
        created_at  timestamptz NOT NULL,
        PRIMARY KEY (id, version)
    );
    CREATE TABLE IF NOT EXISTS {s}.runs (
        id                text PRIMARY KEY,
        workflow          text NOT NULL,
        workflow_version  integer NOT NULL,
        status            text NOT NULL,
        trigger_event     text NOT NULL,
        depth             integer NOT NULL,
        reason            text,
        started_at        timestamptz NOT NULL,
        finished_at       timestamptz
    );
    CREATE INDEX IF NOT EXISTS runs_by_workflow ON {s}.runs (workflow, started_at DESC, id DESC);
    CREATE TABLE IF NOT EXISTS {s}.run_steps (
        run          text NOT NULL,
        position     integer NOT NULL,
        id           text NOT NULL,
        kind         text NOT NULL,
        status       text NOT NULL,
        attempts     integer NOT NULL DEFAULT 0,
        output       jsonb,
        error        text,
        started_at   timestamptz,
        finished_at  timestamptz,
        PRIMARY KEY (run, position)
    );
    """


#: The tables above, for ``eventfold verify`` (name → the columns that make a row's identity).
TABLES = {
    "workflows": ("id",),
    "workflow_versions": ("id", "version"),
    "runs": ("id",),
    "run_steps": ("run", "position"),
}


async def present(conn: asyncpg.Connection, schema: str) -> bool:
    """Whether the quoted tenant ``schema`` has the workflow tables."""
    return await conn.fetchval("SELECT to_regclass($1)", f"{schema}.runs") is not None


async def compare(
    conn: asyncpg.Connection, live: str, shadow: str, limit: int
) -> tuple[int, list[dict[str, Any]]]:
    """How many rows of the workflow tables differ between the quoted schemas ``live``
    and ``shadow`` (a rebuild's), and up to ``limit`` of them (``{"table", "key", "change"}``)."""
    if not await present(conn, live):
        # A schema from before workflows (none defined since): the fold's rows are new.
        parts = [f"SELECT '{name}' AS \"table\", NULL::text AS key, 'added' AS change"
                 f" FROM {shadow}.{name}" for name in TABLES]  # fmt: skip
        union = " UNION ALL ".join(parts)
        count = await conn.fetchval(f"SELECT count(*) FROM ({union}) d")
        rows = await conn.fetch(f"SELECT * FROM ({union}) d LIMIT {int(limit)}")
        return int(count), [dict(r) for r in rows]
    parts = []
    for name, key in TABLES.items():
        on = " AND ".join(f"n.{c} = o.{c}" for c in key)
        ident = " || '/' || ".join(f"coalesce(o.{c}, n.{c})::text" for c in key)
        parts.append(
            f"""SELECT '{name}' AS "table", {ident} AS key,
                   CASE WHEN o.{key[0]} IS NULL THEN 'added' WHEN n.{key[0]} IS NULL
                        THEN 'removed' ELSE 'changed' END AS change
                FROM {live}.{name} o FULL JOIN {shadow}.{name} n ON {on}
                WHERE o.{key[0]} IS NULL OR n.{key[0]} IS NULL OR to_jsonb(o) <> to_jsonb(n)"""
        )
    union = " UNION ALL ".join(parts)
    count = await conn.fetchval(f"SELECT count(*) FROM ({union}) d")
    rows = await conn.fetch(f"SELECT * FROM ({union}) d ORDER BY 1, 2 LIMIT {int(limit)}")
    return int(count), [dict(r) for r in rows]

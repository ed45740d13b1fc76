"""The tenant tables of workflows: definitions with their versions, runs and their steps.

Folded by the projector from ``workflow.*`` events (``consumers.projector.workflows``)
like every tenant table, so ``eventfold replay`` rebuilds them and
``eventfold verify`` compares them.
"""

from __future__ import annotations


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

"""Platform tables the projector's handlers write, and a rebuild's copies of them.

API keys, webhooks, integrations and tenant event types are folded from
``apikey.*``, ``webhook.*``, ``integration.*`` and ``eventtype.*`` events into
tables of the ``eventfold`` schema, shared by every tenant. A handler's
outcome (``applied``, or ``rejected`` with a reason) depends on what those
tables hold when its event is folded. A rebuild
folds the tenant's log from its start again: against the live tables, which
already hold the end state, the same events would meet their own rows and be
rejected ("webhook … exists already").

So while a rebuild folds a tenant into its shadow schema (a
:class:`~eventfold.readmodel.Target` with ``shadow`` set), the handlers
write copies of these tables inside the shadow (:func:`table`): the fold starts from empty tables,
as the live fold did, and every event meets the state its predecessors left,
so it gets the outcome it got live. When the rebuild swaps the shadow in, the
log-derived columns of the tenant's live rows are set from the copies
(:func:`reconcile`: a lost or drifted row is repaired; columns the runtime
owns, such as a webhook's failure streak or an integration's cursor, are
left alone) and the copies are dropped. ``eventfold verify`` compares them
(:func:`compare`).
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from eventfold import readmodel
from eventfold.apikeys import APIKEY_CHANNEL
from eventfold.readmodel import Target


@dataclass(frozen=True, slots=True)
class PlatformTable:
    """A table of schema ``eventfold`` written by handlers, keyed by ``id`` (with ``tenant``)."""

    name: str
    #: Columns folded from the log alone: compared by verify, set from the copy by a swap.
    folded: tuple[str, ...]
    #: Log-derived columns a swap sets but verify does not compare: positions in the
    #: tenant's history, which a rebuild may number differently.
    renumbered: tuple[str, ...] = ()
    #: Notified with the id of every row a swap changes (other processes cache them).
    channel: str | None = None


#: The handlers' platform tables. Runtime columns (an integration's state, cursor,
#: lease and ``paused``, which the sync runner sets on a 401; a webhook's
#: ``disabled_*`` and failure streak) are not the log's and never reconciled.
TABLES: dict[str, PlatformTable] = {
    t.name: t
    for t in (
        PlatformTable(
            "api_keys",
            folded=("name", "roles", "secret_hash", "created_at", "revoked_at", "event_id"),
            channel=APIKEY_CHANNEL,
        ),
        PlatformTable(
            "webhooks",
            folded=("url", "types", "secret_sealed", "created_at", "deleted_at"),
            renumbered=("start_seq",),
        ),
        PlatformTable(
            "integrations",
            folded=(
                "kind",
                "config",
                "headers_sealed",
                "webhook_secret_sealed",
                "created_at",
                "deleted_at",
                "event_id",
            ),
        ),
        PlatformTable(
            "event_types",
            folded=(
                "type",
                "version",
                "schema",
                "compatibility",
                "projection",
                "upcast",
                "created_at",
                "event_id",
            ),
        ),
    )
}
#: Copies in a shadow schema are named ``platform_<table>``.
_COPY_PREFIX = "platform_"


def table(target: Target, name: str) -> str:
    """The table a handler folding into ``target`` writes for platform table ``name``.

    ``eventfold.<name>``, or inside a rebuild's shadow the shadow's copy of it.
    """
    if name not in TABLES:
        raise ValueError(f"{name} is not a platform table")
    if target.shadow:
        return _copy(target.schema, name)
    return f"eventfold.{name}"


def _copy(schema: str, name: str) -> str:
    return f"{schema}.{_COPY_PREFIX}{name}"


def copies_ddl(schema: str) -> str:
    """DDL creating empty copies of every platform table in the quoted ``schema`` (idempotent).

    ``LIKE`` keeps the columns, defaults, checks and unique indexes (an id taken
    twice is refused as in the live table); not the foreign keys.
    """
    return "".join(
        f"CREATE TABLE IF NOT EXISTS {_copy(schema, name)}"
        f" (LIKE eventfold.{name} INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES);"
        for name in TABLES
    )


async def copies_present(conn: asyncpg.Connection, schema: str) -> bool:
    """Whether the quoted ``schema`` holds a copy of every platform table (a shadow
    started before the copies existed has none: its rebuild starts afresh)."""
    for name in TABLES:
        if await conn.fetchval("SELECT to_regclass($1)", _copy(schema, name)) is None:
            return False
    return True


def drop_copies_ddl(schema: str) -> str:
    """DDL dropping the copies in the quoted ``schema`` (before it becomes a live schema)."""
    return "".join(f"DROP TABLE IF EXISTS {_copy(schema, name)};" for name in TABLES)


def _differing(spec: PlatformTable, schema: str) -> str:
    """SQL of the rows where the tenant's live table (``$1``) and the copy differ."""
    cols = spec.folded
    live = ", ".join(f"o.{c}" for c in cols)
    rebuilt = ", ".join(f"n.{c}" for c in cols)
    return f"""
        SELECT '{spec.name}' AS "table", coalesce(n.id, o.id) AS id,
               CASE WHEN o.id IS NULL THEN 'added' WHEN n.id IS NULL THEN 'removed'
                    ELSE 'changed' END AS change
        FROM (SELECT * FROM eventfold.{spec.name} WHERE tenant = $1) o
        FULL JOIN {_copy(schema, spec.name)} n ON n.id = o.id
        WHERE o.id IS NULL OR n.id IS NULL OR ({live}) IS DISTINCT FROM ({rebuilt})"""


async def compare(
    conn: asyncpg.Connection, tenant: str, schema: str, limit: int
) -> tuple[int, list[dict[str, str]]]:
    """How many of ``tenant``'s platform rows differ from the copies in ``schema``, and
    up to ``limit`` of them (``{"table", "id", "change"}``: added, changed or removed).

    ``added``: the fold has a row the live table lacks (or holds for another
    tenant); ``removed``: a live row no event of the log read explains.
    """
    union = " UNION ALL ".join(_differing(spec, schema) for spec in TABLES.values())
    count = await conn.fetchval(f"SELECT count(*) FROM ({union}) d", tenant)
    rows = await conn.fetch(f"SELECT * FROM ({union}) d ORDER BY 1, 2 LIMIT {int(limit)}", tenant)
    return int(count), [dict(r) for r in rows]


async def reconcile(conn: asyncpg.Connection, tenant: str, schema: str) -> int:
    """Set ``tenant``'s live platform rows from the copies in ``schema``; rows changed.

    Rows the fold has and the live table lacks are inserted whole (the copy's
    runtime columns hold what a first fold sets); rows of both get the folded
    columns. Live rows the fold does not have (a fold from a later time) stay.
    Runs in the swap's transaction; listeners hear of each change at commit.
    """
    changed = 0
    for spec in TABLES.values():
        cols = spec.folded + spec.renumbered
        copy = _copy(schema, spec.name)
        updated = await conn.fetch(
            f"""UPDATE eventfold.{spec.name} o SET ({", ".join(cols)}) =
                    ({", ".join(f"n.{c}" for c in cols)})
                FROM {copy} n
                WHERE o.id = n.id AND o.tenant = $1 AND n.tenant = $1
                  AND ({", ".join(f"o.{c}" for c in cols)})
                      IS DISTINCT FROM ({", ".join(f"n.{c}" for c in cols)})
                RETURNING o.id""",
            tenant,
        )
        # The copy's own columns, named: a later migration may have added others.
        names = ", ".join(
            f'"{r["attname"]}"'
            for r in await conn.fetch(
                "SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass"
                " AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                copy,
            )
        )
        inserted = await conn.fetch(
            f"""INSERT INTO eventfold.{spec.name} ({names}) SELECT {names} FROM {copy}
                WHERE tenant = $1 ON CONFLICT (id) DO NOTHING RETURNING id""",
            tenant,
        )
        if spec.name == "webhooks" and inserted:
            await _position_at_end(conn, tenant, schema)
        ids = [r["id"] for r in (*updated, *inserted)]
        if spec.channel is not None:
            for key in ids:
                await conn.execute("SELECT pg_notify($1, $2)", spec.channel, key)
        changed += len(ids)
    return changed


async def _position_at_end(conn: asyncpg.Connection, tenant: str, schema: str) -> None:
    """Give the notifier a position in ``tenant``'s history if it has none (a restored
    endpoint's tenant): the end of the rebuilt history, so what the endpoint may have
    been sent before its row was lost is not sent again."""
    last = await readmodel.last_event(conn, schema)
    seq, anchor = last if last is not None else (0, None)
    await conn.execute(
        "INSERT INTO eventfold.webhook_positions (tenant, seq, anchor) VALUES ($1, $2, $3)"
        " ON CONFLICT (tenant) DO NOTHING",
        tenant,
        seq,
        anchor,
    )

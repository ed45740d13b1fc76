"""The registered versions of tenant event types, read from their projection and cached.

``eventfold.event_types`` holds one row per version, folded from ``eventtype.*``
events (:mod:`eventfold.projection.eventtypes` writes it, this module reads
it). A version never changes once registered, so a process keeps what it read;
only *which version is the latest* can change. :class:`Registry` re-reads that
at most every ``ttl`` seconds (0.5 s: a version added through one gateway is
used by every other within a second) and at once when asked for a version it
has not seen, or with ``fresh`` (a request carrying a consistency token): a
miss always falls through to PostgreSQL, so the first event after a
registration is never refused for a stale cache. Unknown types are not cached.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
from pydantic import TypeAdapter

from eventfold.eventtypes import names, schemas
from eventfold.eventtypes.projection import Projection
from eventfold.eventtypes.upcast import Default, Drop, Rename, Step, apply, implicit_defaults
from eventfold.placement import Placement, pool_of

#: How long a process trusts that it knows a type's latest version.
LATEST_TTL_SECONDS = 0.5
#: Types a process keeps (least recently used go first).
MAX_TYPES = 10_000
#: A lookup's bound (PostgreSQL slow or down: the request fails instead of hanging).
LOOKUP_TIMEOUT = 5.0
_STEPS = TypeAdapter(list[Step])
#: The extension naming the version an event was accepted (and is folded) as.
FOLD_VERSION = "typeversion"
_COLUMNS = "type, version, schema, compatibility, projection, upcast, created_at"


@dataclass(slots=True)
class TypeVersion:
    """One registered version; its validator is compiled on first use."""

    type: str
    version: int
    schema: Any
    compatibility: str
    projection: Projection | None
    upcast: list[Rename | Default | Drop]
    created_at: datetime
    #: ``upcast`` and the defaults of properties this version newly requires.
    lift: list[Rename | Default | Drop] = field(default_factory=list)
    _validator: schemas.Validator | None = None

    @property
    def validator(self) -> schemas.Validator:
        """The compiled validator of :attr:`schema` (compiled once per process)."""
        if self._validator is None:
            self._validator = schemas.compile_schema(self.schema)
        return self._validator

    def as_dict(self) -> dict[str, Any]:
        """The version as the read API shows it."""
        return {
            "type": self.type,
            "version": self.version,
            "schema": self.schema,
            "compatibility": self.compatibility,
            "projection": None
            if self.projection is None
            else self.projection.model_dump(mode="json", exclude_none=True),
            "upcast": [s.model_dump(mode="json", by_alias=True) for s in self.upcast],
            "created_at": self.created_at.isoformat(),
        }


@dataclass(slots=True)
class TypeHistory:
    """Every known version of one type, from 1 up to :attr:`latest` (no gaps)."""

    type: str
    versions: dict[int, TypeVersion] = field(default_factory=dict)

    @property
    def latest(self) -> int:
        """The newest version known (0 when none)."""
        return len(self.versions)

    def extend(self, row: asyncpg.Record | dict[str, Any]) -> None:
        """Add the next version from a row of ``eventfold.event_types``."""
        version = int(row["version"])
        if version != self.latest + 1:
            return  # a gap cannot happen (versions are folded in order); ignore a stray row
        steps = _STEPS.validate_python(row["upcast"] or [])
        projection = row["projection"]
        entry = TypeVersion(
            type=str(row["type"]),
            version=version,
            schema=row["schema"],
            compatibility=str(row["compatibility"]),
            projection=None if projection is None else Projection.model_validate(projection),
            upcast=steps,
            created_at=row["created_at"],
        )
        previous = self.versions.get(version - 1)
        entry.lift = [
            *steps,
            *implicit_defaults(previous.schema if previous else None, row["schema"]),
        ]
        if version == 1:
            entry.lift = []
        self.versions[version] = entry

    def upcast(self, data: Any, from_version: int, to_version: int) -> Any:
        """``data`` of ``from_version`` lifted step by step to ``to_version``."""
        for version in range(from_version + 1, to_version + 1):
            data = apply(data, self.versions[version].lift)
        return data


async def fetch(
    conn: asyncpg.Connection, tenant: str, type_name: str, after: int = 0
) -> list[asyncpg.Record]:
    """The rows of ``type_name``'s versions above ``after``, oldest first."""
    return list(
        await conn.fetch(
            f"SELECT {_COLUMNS} FROM eventfold.event_types"
            " WHERE tenant = $1 AND type = $2 AND version > $3 ORDER BY version",
            tenant,
            type_name,
            after,
        )
    )


async def latest_versions(
    conn: asyncpg.Connection, tenant: str, after: str, limit: int
) -> list[asyncpg.Record]:
    """Up to ``limit`` of ``tenant``'s types named after ``after``, by name: each one's
    latest version (``type, version, compatibility, projected, updated_at``) and when
    its version 1 was registered (``created_at``)."""
    return list(
        await conn.fetch(
            """SELECT DISTINCT ON (e.type) e.type, e.version, e.compatibility,
                      e.projection IS NOT NULL AS projected, e.created_at AS updated_at,
                      (SELECT f.created_at FROM eventfold.event_types f
                        WHERE f.tenant = $1 AND f.type = e.type AND f.version = 1) AS created_at
               FROM eventfold.event_types e WHERE e.tenant = $1 AND e.type > $2
               ORDER BY e.type, e.version DESC LIMIT $3""",
            tenant,
            after,
            limit,
        )
    )


async def type_exists(conn: asyncpg.Connection | asyncpg.Pool, tenant: str, type_name: str) -> bool:
    """Whether ``tenant`` has registered ``type_name`` (workflow triggers ask this)."""
    found = await conn.fetchval(
        "SELECT true FROM eventfold.event_types WHERE tenant = $1 AND type = $2 LIMIT 1",
        tenant,
        type_name,
    )
    return bool(found)


class Registry:
    """A process's cache of tenant types in front of ``eventfold.event_types``.

    Every HTTP process has one (:data:`eventfold.appkeys.EVENT_TYPES`): the
    gateway validates with it, the read side upcasts the events it serves; the
    notifier keeps its own for the deliveries.
    """

    def __init__(self, pool: asyncpg.Pool | Placement, *, ttl: float = LATEST_TTL_SECONDS) -> None:
        #: One pool, or every server's: a tenant's types are on its server.
        self._pool = pool
        self._ttl = ttl
        #: (tenant, type) -> (when the latest version was last checked, the history).
        self._known: OrderedDict[tuple[str, str], tuple[float, TypeHistory]] = OrderedDict()

    async def history(
        self,
        tenant: str,
        type_name: str,
        *,
        fresh: bool = False,
        version: int | None = None,
        conn: asyncpg.Connection | None = None,
    ) -> TypeHistory | None:
        """``type_name``'s versions, or None when ``tenant`` has not registered it.

        Re-read when older than the TTL, with ``fresh``, or when ``version`` is
        above the latest known; on ``conn`` when given (a caller holding one
        inside a transaction), else on a connection of the pool.
        """
        key = (tenant, type_name)
        now = time.monotonic()
        hit = self._known.get(key)
        if hit is not None:
            checked, known = hit
            stale = fresh or now - checked >= self._ttl
            if not stale and (version is None or version <= known.latest):
                self._known.move_to_end(key)
                return known
        known = hit[1] if hit is not None else TypeHistory(type_name)
        if conn is not None:
            rows = await fetch(conn, tenant, type_name, known.latest)
        else:
            async with asyncio.timeout(LOOKUP_TIMEOUT):
                pool = await pool_of(self._pool, tenant)
                async with pool.acquire() as own:
                    rows = await fetch(own, tenant, type_name, known.latest)
        for row in rows:
            known.extend(row)
        if not known.latest:
            return None
        self._known[key] = (now, known)
        self._known.move_to_end(key)
        while len(self._known) > MAX_TYPES:
            self._known.popitem(last=False)
        return known

    async def histories(
        self,
        tenant: str,
        type_names: set[str],
        *,
        fresh: bool = False,
        conn: asyncpg.Connection | None = None,
    ) -> dict[str, TypeHistory]:
        """The registered ones of ``type_names`` (custom names only are looked up)."""
        out: dict[str, TypeHistory] = {}
        for name in sorted(type_names):
            if names.is_custom(name):
                found = await self.history(tenant, name, fresh=fresh, conn=conn)
                if found is not None:
                    out[name] = found
        return out

    async def upcast(
        self,
        tenant: str,
        envelopes: list[dict[str, Any]],
        *,
        fresh: bool = False,
        conn: asyncpg.Connection | None = None,
    ) -> list[dict[str, Any]]:
        """``envelopes`` (JSON-format CloudEvents) with custom types' data in the latest shape.

        Never older than the version an event was accepted under (its
        ``typeversion``: a version this process has not seen is read at once);
        ``fresh`` for a read carrying a consistency token: a version that token's
        write added is used at once.
        """
        wanted: dict[str, int] = {}
        for envelope in envelopes:
            name = str(envelope.get("type"))
            if names.is_custom(name):
                stamped = envelope.get(FOLD_VERSION)
                seen = stamped if isinstance(stamped, int) and not isinstance(stamped, bool) else 0
                wanted[name] = max(wanted.get(name, 0), seen)
        if not wanted:
            return envelopes
        found: dict[str, TypeHistory] = {}
        for name, version in sorted(wanted.items()):
            history = await self.history(
                tenant, name, fresh=fresh, version=version or None, conn=conn
            )
            if history is not None:
                found[name] = history
        return [latest_shape(e, found.get(str(e.get("type"))), tenant) for e in envelopes]


def data_version(envelope: dict[str, Any], tenant: str) -> int:
    """The version an envelope's data follows (its ``dataschema``; 1 if it names none)."""
    uri = envelope.get("dataschema")
    if isinstance(uri, str):
        try:
            return names.dataschema_version(uri, str(envelope.get("type")), tenant)
        except ValueError:
            pass
    return 1


def latest_shape(
    envelope: dict[str, Any], history: TypeHistory | None, tenant: str
) -> dict[str, Any]:
    """``envelope`` with its data lifted to the type's latest version (``dataschema`` too)."""
    if history is None or "data" not in envelope:
        return envelope
    version = data_version(envelope, tenant)
    if version >= history.latest or version not in history.versions:
        return envelope
    lifted = dict(envelope)
    lifted["data"] = history.upcast(envelope["data"], version, history.latest)
    lifted["dataschema"] = names.schema_uri(tenant, history.type, history.latest)
    return lifted


#: Versions the projector has read, per (tenant, type): never changed once registered.
_FOLDED: OrderedDict[tuple[str, str], TypeHistory] = OrderedDict()


async def history_upto(
    conn: asyncpg.Connection, tenant: str, type_name: str, version: int
) -> TypeHistory | None:
    """``type_name``'s versions up to at least ``version`` for the fold, or None.

    Read from the live table: a version is the same fact wherever it was folded,
    and a rebuild may fold an event before its type's registration (they sit on
    different partitions), which the live table has had since before the event
    was accepted.
    """
    key = (tenant, type_name)
    known = _FOLDED.get(key)
    if known is None or known.latest < version:
        known = known or TypeHistory(type_name)
        for row in await fetch(conn, tenant, type_name, known.latest):
            known.extend(row)
        if not known.latest:
            return None
        _FOLDED[key] = known
    _FOLDED.move_to_end(key)
    while len(_FOLDED) > MAX_TYPES:
        _FOLDED.popitem(last=False)
    return known if known.latest >= version else None

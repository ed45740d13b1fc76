"""Tenant isolation enforced by PostgreSQL itself, and cross-tenant attempts over HTTP.

Each tenant's reads run as its own NOLOGIN role (``ef_t_<tenant>``) that may
read its schema and nothing else; these tests talk to the real database.
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
import pytest
import pytest_asyncio
from yarl import URL

from eventfold import db, readmodel
from eventfold.ids import tenant_role, tenant_schema
from eventfold.settings import Settings
from eventfold.tenancy import (
    _NEEDS_REPAIR,
    ensure_tenant_roles,
    tenant_connection,
    tenant_role_ddl,
)
from tests.integration.conftest import Api, TenantApi

R = "/collections/orders/records"


@dataclass
class Pair:
    """Tenant A (the caller) and tenant B (the target), each with one record."""

    a: TenantApi
    b: TenantApi
    #: A string that appears only in B's data: no answer to A may contain it.
    marker: str
    b_event_id: str


@pytest_asyncio.fixture(loop_scope="session")
async def pair(api: Api, tenant: TenantApi) -> Pair:
    other = TenantApi(api, (await api.create_tenant())["id"])
    marker = f"secret-of-b-{uuid.uuid4().hex}"
    wa = await tenant.write("PUT", f"{R}/o1", json={"status": "a-data"})
    wb = await other.write("PUT", f"{R}/o1", json={"status": "paid", "secret": marker})
    await tenant.read_json(f"{R}/o1", wa["consistency_token"])
    await other.read_json(f"{R}/o1", wb["consistency_token"])
    return Pair(tenant, other, marker, wb["event_id"])


async def _as_role(
    pool: asyncpg.Pool, tenant: str, sql: str, *, readonly: bool = False
) -> list[asyncpg.Record]:
    """Run ``sql`` under ``SET LOCAL ROLE`` to the tenant's role, in a transaction of its own."""
    async with pool.acquire() as conn, conn.transaction(readonly=readonly):
        await conn.execute(f"SET LOCAL ROLE {tenant_role(tenant)}")
        rows: list[asyncpg.Record] = await conn.fetch(sql)
        return rows


# --- the database refuses what the role must not do -----------------------------------


async def test_tenant_role_reads_its_own_schema_only(pool: asyncpg.Pool, pair: Pair) -> None:
    a, b = pair.a.id, pair.b.id
    own = await _as_role(pool, a, f"SELECT id, data FROM {tenant_schema(a)}.records")
    assert [(r["id"], r["data"]) for r in own] == [("o1", {"status": "a-data"})]
    assert await _as_role(pool, a, f"SELECT count(*) FROM {tenant_schema(a)}.events")

    for sql in (
        f"SELECT * FROM {tenant_schema(b)}.records",
        f"SELECT * FROM {tenant_schema(b)}.events",
        "SELECT * FROM eventfold.tenants",
        "SELECT * FROM eventfold.checkpoints",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await _as_role(pool, a, sql)


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO {s}.records (collection, id, version, created_at, updated_at,"
        " last_event_id) VALUES ('c', 'x', 1, now(), now(), 'e')",
        "UPDATE {s}.records SET version = version + 1",
        "DELETE FROM {s}.records",
        "DELETE FROM {s}.events",
        "TRUNCATE {s}.events",
        "CREATE TABLE {s}.extra (x int)",
        "DROP TABLE {s}.records",
        "SELECT nextval('{s}.events_seq_seq')",
    ],
)
async def test_tenant_role_cannot_write_even_its_own_tables(
    pool: asyncpg.Pool, pair: Pair, statement: str
) -> None:
    # A read-write transaction: the role's privileges refuse, not READ ONLY.
    sql = statement.format(s=tenant_schema(pair.a.id))
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await _as_role(pool, pair.a.id, sql)


async def test_tenant_role_has_no_privilege_beyond_its_schema(
    pool: asyncpg.Pool, pair: Pair
) -> None:
    name = tenant_role(pair.a.id).strip('"')
    async with pool.acquire() as conn:
        role = await conn.fetchrow(
            "SELECT rolcanlogin, rolsuper, rolcreaterole, rolcreatedb, rolbypassrls"
            " FROM pg_roles WHERE rolname = $1",
            name,
        )
        assert role is not None
        assert not any(role.values())
        other_schemas = await conn.fetch(
            "SELECT nspname FROM pg_namespace"
            " WHERE nspname <> $2 AND has_schema_privilege($1, oid, 'USAGE')",
            name,
            f"t_{pair.a.id}",
        )
        # Only the built-in schemas every role sees (pg_catalog, information_schema, public).
        assert {r["nspname"] for r in other_schemas} <= {
            "pg_catalog",
            "information_schema",
            "public",
            "pg_toast",
        }
        assert not await conn.fetchval(
            "SELECT has_schema_privilege($1, 'eventfold', 'USAGE')", name
        )
        # Nobody but the owner and the tenant's role has any right on the tenant schema.
        acl = await conn.fetchval(
            "SELECT nspacl::text[] FROM pg_namespace WHERE nspname = $1", f"t_{pair.b.id}"
        )
        assert not any(entry.startswith("=") for entry in acl), acl
        assert not any(entry.startswith(f"{name}=") for entry in acl), acl


async def test_tenant_connection_runs_read_only_as_the_role_and_never_leaks_it(
    stack: Settings, pair: Pair
) -> None:
    one = await db.create_pool(stack.database_url, max_size=1)
    try:
        async with tenant_connection(one, pair.a.id) as conn:
            who = await conn.fetchrow(
                "SELECT current_user AS cur, current_setting('transaction_read_only') AS ro"
            )
            assert who is not None
            assert (who["cur"], who["ro"]) == (tenant_role(pair.a.id).strip('"'), "on")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.fetch(f"SELECT * FROM {tenant_schema(pair.b.id)}.records")
        with pytest.raises(RuntimeError):
            await _fail_inside(one, pair.a.id)
        # The same (only) pooled connection is back to the login role, outside any transaction.
        async with one.acquire() as conn:
            assert await conn.fetchval("SELECT current_user = session_user")
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT count(*) FROM eventfold.tenants") > 0
    finally:
        await one.close()


async def _fail_inside(pool: asyncpg.Pool, tenant: str) -> None:
    async with tenant_connection(pool, tenant) as conn:
        await conn.fetch(f"SELECT * FROM {tenant_schema(tenant)}.records")
        raise RuntimeError("boom")


# --- over HTTP: another tenant's data never comes back ---------------------------------


def _reader(api: Api, tenant: str) -> dict[str, str]:
    return api.auth(tenant, "reader")


async def _get_raw(api: Api, raw_path: str, headers: dict[str, str]) -> tuple[int, str]:
    """GET a path sent byte for byte (no client-side normalisation of ``..`` or ``//``)."""
    root = str(api.client.make_url("/")).rstrip("/")
    url = URL(root + raw_path, encoded=True)
    async with api.client.session.get(url, headers=headers) as resp:
        return resp.status, await resp.text()


async def test_a_pooled_session_changed_is_reset_on_release_and_only_that_one(
    stack: Settings,
) -> None:
    """A kept connection's session settings never reach the pool's next user; a pooled
    use that marks no change goes back without a reset round trip."""
    one = await db.create_pool(stack.database_url, max_size=1)
    try:
        kept = db.KeptConnection(one, "SET statement_timeout = 4321")
        conn = await kept.get()
        assert await conn.fetchval("SHOW statement_timeout") == "4321ms"
        await kept.drop()
        async with one.acquire() as conn:
            assert await conn.fetchval("SHOW statement_timeout") != "4321ms"
            # A use that marks nothing goes back as it is: no reset is sent.
            await conn.execute("SET application_name = 'unmarked'")
        async with one.acquire() as conn:
            assert await conn.fetchval("SHOW application_name") == "unmarked"
            db.session_changed(conn)
        async with one.acquire() as conn:
            assert await conn.fetchval("SHOW application_name") != "unmarked"
    finally:
        await one.close()


async def test_other_tenants_paths_with_my_token_are_403(api: Api, pair: Pair) -> None:
    headers = _reader(api, pair.a.id)
    for rest in ("", R, f"{R}/o1", "/events", f"/events/{pair.b_event_id}"):
        resp = await api.client.get(pair.b.path(rest), headers=headers)
        body = await resp.text()
        assert resp.status == 403, (rest, body)
        assert pair.marker not in body


def _tamper(token: str, **claims: Any) -> str:
    header, payload, signature = token.split(".")
    doc = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    doc.update(claims)
    forged = base64.urlsafe_b64encode(orjson.dumps(doc)).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


async def test_tampered_claims_are_401(api: Api, pair: Pair) -> None:
    token = api.token(pair.a.id, "reader")
    for claims in ({"tenant": pair.b.id}, {"tenant": "*", "roles": ["platform-admin"]}):
        forged = {"Authorization": f"Bearer {_tamper(token, **claims)}"}
        for path in (pair.b.path(f"{R}/o1"), pair.a.path(f"{R}/o1")):
            resp = await api.client.get(path, headers=forged)
            body = await resp.text()
            assert resp.status == 401, (claims, path, body)
            assert pair.marker not in body


async def test_path_traversal_never_reaches_the_other_tenant(api: Api, pair: Pair) -> None:
    a, b = pair.a.id, pair.b.id
    tail = "/collections/orders/records/o1"
    paths = [
        f"/v1/tenants/{a}/../{b}{tail}",
        f"/v1/tenants/{a}/..%2f{b}{tail}",
        f"/v1/tenants/{a}/%2e%2e%2f{b}{tail}",
        f"/v1/tenants/{a}/%2e%2e/{b}{tail}",
        f"/v1/tenants/{a}%2f..%2f{b}{tail}",
        f"/v1/tenants/{a}%2F%2E%2E%2F{b}{tail}",
        f"/v1/tenants//{b}{tail}",
        f"/v1//tenants/{b}{tail}",
        f"//v1/tenants/{b}{tail}",
        f"/v1/tenants/{b}//collections/orders/records/o1",
        f"/v1/tenants/{a}/collections/orders/records/..%2f..%2f..%2f..%2f{b}{tail}",
        f"/v1/tenants/{a}/collections/orders/records/%2e%2e%2f%2e%2e%2f{b}",
        f"/v1/tenants/{a}/collections/..%2f..%2f{b}/collections/orders/records/o1",
        f"/v1/tenants/{a}/collections/orders/records/o1/../../../../{b}{tail}",
    ]
    headers = _reader(api, a)
    for raw in paths:
        status, body = await _get_raw(api, raw, headers)
        assert status in (403, 404, 422), (raw, status, body)
        assert pair.marker not in body, raw


HOSTILE_TENANTS = [
    "pg_catalog",
    "information_schema",
    "eventfold",
    "public",
    "t_{b}",
    '{b}"',
    "{b}'",
    "{b};",
    "{b}%3B%20DROP%20SCHEMA%20eventfold",
    "%22t_{b}%22",
    "t%C3%A9nant",  # é
    "%D0%B0bc",  # Cyrillic a
    "{b}%00",
    "%2A",  # *
]


@pytest.mark.parametrize("hostile", HOSTILE_TENANTS)
async def test_hostile_tenant_ids_never_reach_other_data(
    api: Api, pair: Pair, hostile: str
) -> None:
    value = hostile.format(b=pair.b.id)
    for caller in (pair.a.id, "*"):
        roles = ("platform-admin",) if caller == "*" else ("reader",)
        headers = api.auth(caller, *roles)
        for rest in ("", f"{R}/o1", R, "/events"):
            status, body = await _get_raw(api, f"/v1/tenants/{value}{rest}", headers)
            assert status in (400, 403, 404, 422), (value, rest, status, body)
            assert pair.marker not in body


HOSTILE_COLLECTIONS = [
    "pg_catalog",
    "information_schema",
    "eventfold",
    "public",
    "t_{b}",
    "records",
]


@pytest.mark.parametrize("hostile", HOSTILE_COLLECTIONS)
async def test_sql_names_as_collection_and_record_ids_are_plain_data(
    api: Api, pair: Pair, hostile: str
) -> None:
    collection = hostile.format(b=pair.b.id)
    headers = _reader(api, pair.a.id)
    for record_id in ("o1", collection, f"t_{pair.b.id}.records", "..", "pg_catalog.pg_roles"):
        resp = await api.client.get(
            pair.a.path(f"/collections/{collection}/records/{record_id}"), headers=headers
        )
        assert resp.status == 404, (collection, record_id)
        assert pair.marker not in await resp.text()
    listing = await pair.a.read_json(f"/collections/{collection}/records")
    assert listing == {"items": [], "next": None}
    # Such names are ordinary identifiers: they can be written and read back.
    w = await pair.a.write("PUT", f"/collections/{collection}/records/information_schema", json={})
    doc = await pair.a.read_json(
        f"/collections/{collection}/records/information_schema", w["consistency_token"]
    )
    assert (doc["collection"], doc["id"]) == (collection, "information_schema")


@pytest.mark.parametrize(
    "raw",
    [
        "orders%22",
        "orders'",
        "orders%3B",
        "orders%3B%20DROP%20TABLE%20records",
        "%22t_{b}%22.records",
        "t_{b}.records",
        "ord%C3%A9rs",
        "Orders",
        "..",
        "%2e%2e",
    ],
)
async def test_malformed_collection_ids_are_422(api: Api, pair: Pair, raw: str) -> None:
    path = pair.a.path(f"/collections/{raw.format(b=pair.b.id)}/records")
    for rest in ("", "/o1"):
        status, body = await _get_raw(api, path + rest, _reader(api, pair.a.id))
        assert status in (404, 422), (raw, status, body)
        assert pair.marker not in body


@pytest.mark.parametrize(
    "raw", ["o1'", "o1%22", "o1%3B", "o1%20OR%201%3D1", "%C3%A9", "o1%00", "a%2Fb"]
)
async def test_malformed_record_ids_are_422(api: Api, pair: Pair, raw: str) -> None:
    status, body = await _get_raw(api, pair.a.path(f"{R}/{raw}"), _reader(api, pair.a.id))
    assert status in (400, 404, 422), (raw, status, body)
    assert pair.marker not in body


@pytest.mark.parametrize(
    "value",
    [
        "' OR '1'='1",
        "paid' OR '1'='1",
        "x'); DROP TABLE records; --",
        'x"); DROP SCHEMA eventfold CASCADE; --',
        "a-data' UNION SELECT * FROM eventfold.tenants --",
        "\u0000",
        "ünïcode",
    ],
)
async def test_sql_in_filter_values_is_plain_data(api: Api, pair: Pair, value: str) -> None:
    headers = _reader(api, pair.a.id)
    resp = await api.client.get(pair.a.path(R), params={"filter[status]": value}, headers=headers)
    body = await resp.text()
    # NUL cannot be stored in PostgreSQL text: a 422, never a 500 nor extra rows.
    assert resp.status in (200, 422), (value, resp.status, body)
    if resp.status == 200:
        assert orjson.loads(body) == {"items": [], "next": None}
    for name in ("type", "subject"):
        resp = await api.client.get(pair.a.path("/events"), params={name: value}, headers=headers)
        assert resp.status in (200, 422), (name, value, resp.status)
        if resp.status == 200:
            assert (await resp.json())["items"] == []
    # Nothing was broken: both tenants' data are still there and still apart.
    assert [r["id"] for r in (await pair.a.read_json(R))["items"]] == ["o1"]
    theirs = await pair.b.read_json(R)
    assert [r["data"]["secret"] for r in theirs["items"]] == [pair.marker]


@pytest.mark.parametrize("field", ["a'", "a;b", "a b", "a)", "ünï", "1a", "a.b"])
async def test_malformed_filter_fields_are_422(api: Api, pair: Pair, field: str) -> None:
    resp = await api.client.get(
        pair.a.path(R), params={f"filter[{field}]": "x"}, headers=_reader(api, pair.a.id)
    )
    assert resp.status == 422, field


# --- tenants created before roles existed are repaired ---------------------------------


async def _drop_role(pool: asyncpg.Pool, tenant: str) -> None:
    """Undo the role part of the tenant DDL, as if the tenant predated it."""
    role = tenant_role(tenant)
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(f"DROP OWNED BY {role}")  # its privileges in this database
        await conn.execute(f"DROP ROLE {role}")
        assert not await conn.fetchval(
            "SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = $1)", role.strip('"')
        )


async def _needs_repair(pool: asyncpg.Pool) -> set[str]:
    async with pool.acquire() as conn:
        return {r["id"] for r in await conn.fetch(_NEEDS_REPAIR)}


async def test_tenant_without_role_is_repaired_at_start_up(
    api: Api, pool: asyncpg.Pool, tenant: TenantApi
) -> None:
    w = await tenant.write("PUT", f"{R}/r1", json={"n": 1})
    await tenant.read_json(f"{R}/r1", w["consistency_token"])
    await _drop_role(pool, tenant.id)

    await ensure_tenant_roles(pool)
    assert tenant.id not in await _needs_repair(pool)
    rows = await _as_role(pool, tenant.id, f"SELECT id FROM {tenant_schema(tenant.id)}.records")
    assert [r["id"] for r in rows] == ["r1"]
    doc = await tenant.read_json(f"{R}/r1")
    assert doc["data"] == {"n": 1}
    # Idempotent: nothing left to do for it.
    assert tenant.id not in await ensure_tenant_roles(pool)


async def test_tenant_made_by_the_old_ddl_is_repaired(api: Api, pool: asyncpg.Pool) -> None:
    tid = f"t{uuid.uuid4().hex[:12]}"
    old_ddl = readmodel.tenant_ddl(tid).replace(tenant_role_ddl(tid), "")
    assert "ROLE" not in old_ddl
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(old_ddl)
        await conn.execute(
            "INSERT INTO eventfold.tenants (id, name, limits, created_at, event_id)"
            " VALUES ($1, 'Old', '{}'::jsonb, now(), $2)",
            tid,
            f"tenant.created:{tid}",
        )
        await conn.execute(
            f"INSERT INTO {tenant_schema(tid)}.records"
            " (collection, id, version, data, created_at, updated_at, last_event_id)"
            " VALUES ('orders', 'legacy', 1, '{\"old\": true}'::jsonb, now(), now(), 'e1')"
        )

    await ensure_tenant_roles(pool)
    assert tid not in await _needs_repair(pool)
    old = TenantApi(api, tid)
    doc = await old.read_json(f"{R}/legacy")
    assert doc["data"] == {"old": True}
    listing = await old.read_json(R)
    assert [r["id"] for r in listing["items"]] == ["legacy"]


async def test_a_read_repairs_a_role_lost_while_running(
    api: Api, pool: asyncpg.Pool, tenant: TenantApi
) -> None:
    w = await tenant.write("PUT", f"{R}/x1", json={"n": 2})
    await tenant.read_json(f"{R}/x1", w["consistency_token"])
    await _drop_role(pool, tenant.id)
    # No start-up in between: the read itself restores the role, then answers. (The
    # token makes it read PostgreSQL: without one, the record cache would answer.)
    doc = await tenant.read_json(f"{R}/x1", w["consistency_token"])
    assert doc["data"] == {"n": 2}
    assert tenant.id not in await _needs_repair(pool)


@pytest.mark.parametrize(
    "raw", ["%00", "x%00y", "'%20OR%20'1'%3D'1", "{b_event}%27%3B--", "..%2f..%2f{b}%2fevents"]
)
async def test_hostile_event_ids_are_404(api: Api, pair: Pair, raw: str) -> None:
    value = raw.format(b=pair.b.id, b_event=pair.b_event_id)
    status, body = await _get_raw(api, pair.a.path(f"/events/{value}"), _reader(api, pair.a.id))
    assert status == 404, (raw, status, body)
    assert pair.marker not in body

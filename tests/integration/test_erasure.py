"""Crypto-shredding: personal records are encrypted in the log and an erasure forgets one.

Through the real stack: the gateway encrypts the data of events in a tenant's
personal collections before Kafka has them, the projector folds them in clear,
``POST …/erasure`` destroys a record's key and publishes ``record.erased``:
the record reads 404, its history keeps no data, the other records stay, and a
replay and ``verify`` (another process, from the log) agree with the live fold.
"""

from __future__ import annotations

import secrets
from typing import Any

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from entrypoints.keys import COLUMNS, reseal
from eventfold import consistency, datakeys
from eventfold.appkeys import PUBLISHER
from eventfold.envelope import CloudEvent
from eventfold.sealing import Keyring, dev_keyring, new_key_spec
from tests.integration.conftest import Api, TenantApi
from tests.integration.test_replay import verify_replay_verify

pytestmark = pytest.mark.integration

C = "/collections/customers/records"


async def make_personal(api: Api, tenant: TenantApi, *collections: str) -> None:
    """Mark ``collections`` personal and wait until the gateway knows."""
    resp = await api.request(
        "PATCH", f"/v1/tenants/{tenant.id}", json={"personal_collections": list(collections)}
    )
    assert resp.status == 202, await resp.text()
    token = (await resp.json())["consistency_token"]
    shown = await api.request(
        "GET", f"/v1/tenants/{tenant.id}", headers={"X-Consistency-Token": token}
    )
    assert (await shown.json())["personal_collections"] == sorted(collections)


async def logged(api: Api, token: str) -> dict[str, Any]:
    """The envelope as Kafka holds it, at the (one) position ``token`` names."""
    [(partition, offset)] = consistency.decode(token).items()
    consumer = AIOKafkaConsumer(bootstrap_servers=api.settings.kafka_bootstrap)
    await consumer.start()
    try:
        tp = TopicPartition(api.settings.events_topic, partition)
        consumer.assign([tp])
        consumer.seek(tp, offset)
        record = await consumer.getone()
        assert record.value is not None
        doc: dict[str, Any] = orjson.loads(record.value)
        return doc
    finally:
        await consumer.stop()


async def history(tenant: TenantApi, subject: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = (await tenant.read_json(f"/events?subject={subject}"))["items"]
    return items


async def test_a_personal_record_is_encrypted_in_the_log_and_an_erasure_forgets_it(
    api: Api, tenant: TenantApi
) -> None:
    await make_personal(api, tenant, "customers")
    ada = await tenant.write("PUT", f"{C}/c1", json={"name": "Ada Lovelace", "city": "London"})
    await tenant.write("PUT", f"{C}/c2", json={"name": "Grace Hopper"})
    moved = await tenant.write(
        "PATCH", f"{C}/c1", json={"city": "Paris"},
        headers={"Content-Type": "application/merge-patch+json"},
    )  # fmt: skip
    note = await tenant.write("PUT", "/collections/notes/records/n1", json={"text": "plain"})

    # Kafka holds ciphertext for the personal record, clear text for the others.
    sealed = await logged(api, ada["consistency_token"])
    assert sealed["datakey"].startswith("dk_")
    assert isinstance(sealed["data"], str)
    assert "Ada" not in orjson.dumps(sealed).decode()
    assert (sealed["type"], sealed["subject"]) == ("record.upserted", "customers/c1")
    assert (await logged(api, note["consistency_token"]))["data"] == {"text": "plain"}

    # The projection reads in clear.
    doc = await tenant.read_json(f"{C}/c1", moved["consistency_token"])
    assert (doc["version"], doc["data"]) == (2, {"name": "Ada Lovelace", "city": "Paris"})
    assert [e["data"] for e in await history(tenant, "customers/c1")] == [
        {"name": "Ada Lovelace", "city": "London"},
        {"city": "Paris"},
    ]

    # Not personal, or not a record: refused, and nothing destroyed.
    refused = await tenant.call("POST", "/erasure", roles=("admin",), json={"subject": "notes/n1"})
    assert refused.status == 409, await refused.text()
    assert "not a personal collection" in (await refused.json())["detail"]
    bad = await tenant.call("POST", "/erasure", roles=("admin",), json={"subject": "c1"})
    assert bad.status == 422, await bad.text()
    writer = await tenant.call("POST", "/erasure", json={"subject": "customers/c1"})
    assert writer.status == 403

    resp = await tenant.call("POST", "/erasure", roles=("admin",), json={"subject": "customers/c1"})
    assert resp.status == 202, await resp.text()
    erased = await resp.json()
    assert (erased["subject"], erased["keys_destroyed"]) == ("customers/c1", 1)

    gone = await tenant.read(f"{C}/c1", erased["consistency_token"])
    assert gone.status == 404
    items = await history(tenant, "customers/c1")
    assert [(e["type"], e["status"]) for e in items] == [
        ("record.upserted", "applied"),
        ("record.patched", "applied"),
        ("record.erased", "applied"),
    ]
    assert all("data" not in e for e in items), items
    assert all(e["time"] for e in items)
    assert (await tenant.read_json(f"{C}/c2"))["data"] == {"name": "Grace Hopper"}

    # A replay (from the log, in another process) folds the erased record as erased.
    settings = api.settings
    await verify_replay_verify(settings, tenant.id)
    assert (await tenant.read(f"{C}/c1")).status == 404
    assert all("data" not in e for e in await history(tenant, "customers/c1"))
    assert (await tenant.read_json(f"{C}/c2"))["data"] == {"name": "Grace Hopper"}

    # The record can be written again: a new key, readable.
    again = await tenant.write("PUT", f"{C}/c1", json={"name": "A. L."})
    back = await tenant.read_json(f"{C}/c1", again["consistency_token"])
    assert back["data"] == {"name": "A. L."}
    assert (await logged(api, again["consistency_token"]))["datakey"] != sealed["datakey"]


async def test_a_client_cannot_name_a_data_key(api: Api, tenant: TenantApi) -> None:
    """The gateway leaves an event that names a key as it is (it is encrypted already):
    a client naming one would put a personal record's data in the log in clear."""
    await make_personal(api, tenant, "customers")
    event = {
        "specversion": "1.0", "id": "named-key", "source": "test", "type": "record.upserted",
        "subject": "customers/n1", "data": {"name": "Nell"}, "datakey": "dk_mine",
    }  # fmt: skip
    resp = await tenant.call("POST", "/events", json=event)
    assert resp.status == 422, await resp.text()
    assert [e["path"] for e in (await resp.json())["errors"]] == ["/datakey"]
    clean = {k: v for k, v in event.items() if k != "datakey"}
    batch = await tenant.call("POST", "/events", json=[{**clean, "id": "ok"}, event])
    assert batch.status == 422
    assert [e["path"] for e in (await batch.json())["errors"]] == ["/1/datakey"]
    # Without it, the same event goes out encrypted with the record's own key.
    published = await tenant.write("POST", "/events", json=clean)
    sealed = await logged(api, published["consistency_token"])
    assert sealed["datakey"].startswith("dk_")
    assert "Nell" not in orjson.dumps(sealed).decode()


async def test_a_tampered_ciphertext_is_a_dead_letter_not_data(
    api: Api, tenant: TenantApi, pool: asyncpg.Pool
) -> None:
    """An event whose data does not open with its key is parked, never folded as erased."""
    await make_personal(api, tenant, "customers")
    first = await tenant.write("PUT", f"{C}/t1", json={"n": 1})
    sealed = await logged(api, first["consistency_token"])
    forged = {**sealed, "id": sealed["id"] + "-forged", "data": sealed["data"][:-4] + "AAAA"}
    publisher = api.client.server.app[PUBLISHER]
    [landed] = await publisher.publish_stamped(tenant.id, [CloudEvent.model_validate(forged)])
    token = consistency.from_offsets([(landed.partition, landed.offset)])
    # Folded past (parked): the read is consistent, and nothing changed the record.
    assert (await tenant.read_json(f"{C}/t1", token))["data"] == {"n": 1}
    async with pool.acquire() as conn:
        parked = await conn.fetch(
            "SELECT error FROM eventfold.parked WHERE tenant = $1 AND event_id = $2",
            tenant.id, forged["id"],
        )  # fmt: skip
    assert [r["error"] for r in parked] == [
        f"DataKeyError: event {forged['id']}: its data does not open with its key"
    ], parked


async def test_keys_rotate_reseals_the_data_keys_and_they_still_open(
    api: Api, tenant: TenantApi, pool: asyncpg.Pool
) -> None:
    await make_personal(api, tenant, "customers")
    wrote = await tenant.write("PUT", f"{C}/r1", json={"n": 1})
    await tenant.read_json(f"{C}/r1", wrote["consistency_token"])
    dev = dev_keyring(api.settings.home)
    new = Keyring(Keyring.parse(new_key_spec("rot2")).keys + dev.keys)
    [column] = [c for c in COLUMNS if c.table == "data_keys"]
    try:
        assert await reseal(pool, new, column) >= 1
        assert await reseal(pool, new, column) == 0  # idempotent
        async with pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT id, sealed FROM eventfold.data_keys WHERE tenant = $1", tenant.id
            )
        assert row["sealed"].split(".")[1] == "rot2"
        key = datakeys.DataKey.of(
            row["id"], new.open(row["sealed"], purpose=f"datakey:{tenant.id}")
        )
        assert datakeys.decrypt(
            CloudEvent.model_validate(await logged(api, wrote["consistency_token"])), key
        ).data == {"n": 1}
    finally:
        # Back under the session's key: the session's processes open data keys with it.
        await reseal(pool, Keyring(dev.keys + new.keys[:1]), column)
    later = await tenant.write("PUT", f"{C}/r1", json={"n": 2})
    assert (await tenant.read_json(f"{C}/r1", later["consistency_token"]))["data"] == {"n": 2}


async def test_keys_of_several_tenants_are_made_in_one_statement_and_found_again(
    pool: asyncpg.Pool, api: Api
) -> None:
    ring = dev_keyring(api.settings.home)
    a, b = f"lk_{secrets.token_hex(4)}", f"lk_{secrets.token_hex(4)}"
    wanted = {(a, "customers/1"), (a, "customers/2"), (b, "customers/1")}
    try:
        async with pool.acquire() as conn:
            made = await datakeys.live_keys_of(conn, ring, wanted)
            again = await datakeys.live_keys_of(conn, ring, wanted | {(b, "customers/2")})
            rows = await conn.fetch(
                "SELECT tenant, subject, id FROM eventfold.data_keys WHERE tenant = ANY($1)",
                [a, b],
            )
    finally:
        async with pool.acquire() as conn:
            await conn.execute("DELETE FROM eventfold.data_keys WHERE tenant = ANY($1)", [a, b])
    assert set(made) == wanted
    assert len({k.id for k in made.values()}) == 3  # a key per record, tenants apart
    # Found again, not made again: the same ids, and keys that open each other's data.
    assert {r: again[r].id for r in wanted} == {r: k.id for r, k in made.items()}
    assert sorted((r["tenant"], r["subject"]) for r in rows) == sorted(
        wanted | {(b, "customers/2")}
    )
    nonce = datakeys.nonces(1)[0]
    sealed = made[(a, "customers/1")].cipher.encrypt(nonce, b"x", b"ad")
    assert again[(a, "customers/1")].cipher.decrypt(nonce, sealed, b"ad") == b"x"

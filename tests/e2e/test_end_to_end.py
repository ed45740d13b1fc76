"""End to end: the real `eventfold` processes, driven over HTTP like a user would."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from eventfold.auth import issue_token
from eventfold.consistency import decode, encode
from eventfold.sealing import new_key_spec
from eventfold.settings import Settings
from tests.conftest import free_port, new_tenant_id, output, process, wait_until_ready


def env_for(settings: Settings, port: int) -> dict[str, str]:
    return {
        **os.environ,
        "EVENTFOLD_HTTP_PORT": str(port),
        "EVENTFOLD_EVENTS_TOPIC": settings.events_topic,
        "EVENTFOLD_DLQ_TOPIC": settings.dlq_topic,
        "EVENTFOLD_CONSUMER_GROUP_PREFIX": settings.consumer_group_prefix + ".e2e",
        "EVENTFOLD_JWT_SECRET": settings.jwt_secret,
    }


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
        yield s


async def scenario(
    session: aiohttp.ClientSession, settings: Settings, write: str, read: str
) -> None:
    """Create a tenant, write through commands and events, read everything back."""
    secret = settings.jwt_secret
    admin = {"Authorization": f"Bearer {issue_token(secret, tenant='*', roles=['platform-admin'])}"}
    t = new_tenant_id()
    async with session.post(
        f"{write}/v1/tenants", json={"id": t, "name": "E2E"}, headers=admin
    ) as r:
        assert r.status == 202, await r.text()
        token = (await r.json())["consistency_token"]
    writer = {"Authorization": f"Bearer {issue_token(secret, tenant=t, roles=['writer'])}"}
    async with session.get(
        f"{read}/v1/tenants/{t}", headers={**writer, "X-Consistency-Token": token}
    ) as r:
        assert r.status == 200, await r.text()
        assert (await r.json())["name"] == "E2E"

    base = f"/v1/tenants/{t}/collections/tasks/records"
    async with session.post(
        f"{write}{base}",
        json={"id": "t1", "data": {"title": "write docs", "done": False}},
        headers=writer,
    ) as r:
        assert r.status == 202, await r.text()
    async with session.patch(
        f"{write}{base}/t1",
        data=b'{"done": true}',
        headers={**writer, "Content-Type": "application/merge-patch+json", "If-Match": '"1"'},
    ) as r:
        assert r.status == 202, await r.text()
        patch_token = (await r.json())["consistency_token"]
    events: list[dict[str, Any]] = [
        {
            "specversion": "1.0",
            "id": f"imp-{i}",
            "source": "e2e/import",
            "type": "record.upserted",
            "subject": f"tasks/imp{i}",
            "data": {"title": f"imported {i}"},
        }
        for i in range(20)
    ]
    async with session.post(f"{write}/v1/tenants/{t}/events", json=events, headers=writer) as r:
        assert r.status == 202, await r.text()
        batch = await r.json()
    assert all(not e["duplicate"] for e in batch["events"])

    # One token covering both writes (they sit on different partitions).
    covered = decode(patch_token)
    for p, o in decode(batch["consistency_token"]).items():
        covered[p] = max(o, covered.get(p, -1))
    read_headers = {**writer, "X-Consistency-Token": encode(covered)}
    async with session.get(f"{read}{base}/t1", headers=read_headers) as r:
        doc = await r.json()
        assert r.status == 200, doc
    assert (doc["version"], doc["data"]) == (2, {"title": "write docs", "done": True})
    assert r.headers["ETag"] == '"2"'
    async with session.get(f"{read}/v1/tenants/{t}/events?subject=tasks/t1", headers=writer) as r:
        history = await r.json()
    assert [e["type"] for e in history["items"]] == ["record.upserted", "record.patched"]
    async with session.get(f"{read}{base}?limit=1000", headers=read_headers) as r:
        listing = await r.json()
    assert len(listing["items"]) == 21
    assert {e["status"] for e in history["items"]} <= {"applied"}


@pytest.mark.usefixtures("stack")
async def test_all_in_one_process(session: aiohttp.ClientSession, settings: Settings) -> None:
    port = free_port()
    with process("run", env=env_for(settings, port)) as proc:
        base = f"http://127.0.0.1:{port}"
        await wait_until_ready(session, base, proc)
        await scenario(session, settings, base, base)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 20) == 0
        out = output(proc)
    assert f"serving on {base}" in out
    assert "dev platform-admin token" in out
    # The secret came from the environment, so it is not echoed.
    assert settings.jwt_secret not in out


@pytest.mark.usefixtures("stack")
async def test_production_run_prints_no_credential(
    session: aiohttp.ClientSession, settings: Settings
) -> None:
    port = free_port()
    keys = new_key_spec("k1")
    production = {
        **env_for(settings, port),
        "EVENTFOLD_MODE": "production",
        "EVENTFOLD_JWT_SECRET": "5e" * 32,
        "EVENTFOLD_SECRET_KEYS": keys,
    }
    with process("run", env=production) as proc:
        base = f"http://127.0.0.1:{port}"
        await wait_until_ready(session, base, proc)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 20) == 0
        out = output(proc)
    assert f"serving on {base}" in out
    # Logs are read by more people than may hold a platform-admin token.
    assert "platform-admin token" not in out
    assert "eyJ" not in out  # no JWT at all
    assert "5e" * 32 not in out
    assert keys.split(":")[1] not in out


@pytest.mark.usefixtures("stack")
async def test_each_part_in_its_own_process(
    session: aiohttp.ClientSession, settings: Settings
) -> None:
    ingest_port, api_port = free_port(), free_port()
    with (
        process("serve", "ingest", env=env_for(settings, ingest_port)) as ingest,
        process("serve", "api", env=env_for(settings, api_port)) as api,
        process("process", "projector", env=env_for(settings, free_port())) as projector,
    ):
        await wait_until_ready(session, f"http://127.0.0.1:{ingest_port}", ingest)
        await wait_until_ready(session, f"http://127.0.0.1:{api_port}", api)
        await scenario(
            session, settings, f"http://127.0.0.1:{ingest_port}", f"http://127.0.0.1:{api_port}"
        )
        assert projector.poll() is None
        # The write route lives in the ingest process only (the API lists tenants).
        async with session.post(f"http://127.0.0.1:{api_port}/v1/tenants", json={}) as r:
            assert r.status == 405


@pytest.mark.usefixtures("stack")
async def test_one_http_process_for_reads_and_writes_beside_the_processors(
    session: aiohttp.ClientSession, settings: Settings
) -> None:
    """docker-compose.yml's shape: `serve api ingest` is the one entry point (the README's
    walkthrough all on one port); the processors run in processes of their own."""
    port, projector_port = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    with (
        process("serve", "api", "ingest", env=env_for(settings, port)) as http,
        process("process", "projector", env=env_for(settings, projector_port)) as projector,
    ):
        await wait_until_ready(session, base, http)
        await wait_until_ready(session, f"http://127.0.0.1:{projector_port}", projector)
        await scenario(session, settings, base, base)
        async with session.get(f"{base}/health/ready") as r:
            # No processor in the HTTP process: its readiness names none.
            assert "projector" not in (await r.json())["checks"]
        http.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(http.wait, 20) == 0
        assert f"eventfold: serving api and ingest on {base}" in output(http)

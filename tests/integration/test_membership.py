"""Consumer-group membership and readiness: static members, slots, ready only when consuming.

CONTRACT: a process is ready only once it can do its job (a stream processor has
its partitions and consumes); a restarted process (also after kill -9) takes its
work back without waiting for its dead predecessor's session to time out.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
from aiokafka.admin import AIOKafkaAdminClient

from consumers.projector.processor import Projector
from consumers.runtime import membership
from entrypoints.bootstrap import Parts
from eventfold.auth import issue_token
from eventfold.metrics import Metrics
from eventfold.settings import Settings
from tests.conftest import free_port, new_tenant_id, wait_until_ready
from tests.integration.conftest import kill_9_after_assignment, process_env, serving

EVENTFOLD = str(Path(sys.executable).with_name("eventfold"))


async def members(admin: AIOKafkaAdminClient, group: str) -> list[str]:
    """The member ids of the group's members: a static member's begins with its instance id."""
    [response] = await admin.describe_consumer_groups([group])
    # (error, group, state, protocol type, protocol, members), a member starting with its id.
    return sorted(m[0] for m in response.groups[0][5])


async def test_slots_are_unique_among_running_processes_and_reused_once_free(
    lane: Settings,
) -> None:
    group = f"{lane.consumer_group_prefix}.slots"
    async with membership.claim(lane.database_url, group) as first:
        async with membership.claim(lane.database_url, group) as second:
            assert (first.instance_id, second.instance_id) == (f"{group}#0", f"{group}#1")
        # #1 is free again; #0 still held.
        async with membership.claim(lane.database_url, group) as third:
            assert third.instance_id == f"{group}#1"
    async with membership.claim(lane.database_url, group) as again:
        assert again.instance_id == f"{group}#0"


async def test_a_slot_taken_while_its_connection_was_down_is_reported_lost(
    lane: Settings,
) -> None:
    group = f"{lane.consumer_group_prefix}.lost"
    async with membership.claim(lane.database_url, group) as member:
        pid = await member.conn.fetchval("SELECT pg_backend_pid()")
        other = await asyncpg.connect(lane.database_url)
        try:
            await other.execute("SELECT pg_terminate_backend($1)", pid)
            # Another process takes the slot before the member can take it again.
            async with asyncio.timeout(10):
                while not await other.fetchval(
                    "SELECT pg_try_advisory_lock($1, 0)", membership._lock_key(group)
                ):
                    await asyncio.sleep(0.05)
            async with asyncio.timeout(3 * membership.WATCH_SECONDS + 5):
                await member.lost.wait()
            try:
                member.check()
            except membership.SlotLost:
                pass
            else:
                raise AssertionError("check() did not raise once the slot was lost")
        finally:
            await other.close()


async def test_two_projectors_are_distinct_static_members_and_a_clean_stop_leaves(
    lane: Settings, admin: AIOKafkaAdminClient, pool: asyncpg.Pool
) -> None:
    group = f"{lane.consumer_group_prefix}.projector"
    first, second = Projector(lane, pool, Metrics()), Projector(lane, pool, Metrics())
    stop_first, stop_second = asyncio.Event(), asyncio.Event()
    tasks = [
        asyncio.create_task(first.run(stop_first)),
        asyncio.create_task(second.run(stop_second)),
    ]
    try:
        async with asyncio.timeout(60):
            while (
                not (first.is_ready() and second.is_ready())
                or len(await members(admin, group)) != 2
            ):
                for task in tasks:
                    if task.done():
                        task.result()  # a projector that failed fails the test
                await asyncio.sleep(0.1)
        ids = await members(admin, group)
        assert [i.startswith(f"{group}#{n}-") for n, i in enumerate(ids)] == [True, True], ids
        # A clean stop leaves the group at once (a static member would otherwise
        # stay in it, its partitions idle, until its session timed out).
        stop_second.set()
        await asyncio.wait_for(tasks[1], 30)
        assert not second.is_ready()
        assert len(await members(admin, group)) == 1
    finally:
        stop_first.set()
        stop_second.set()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_ready_only_once_the_projector_has_its_partitions(lane: Settings) -> None:
    """A member killed with -9 holds the group's rebalance until its session times out:
    meanwhile the new process must not say it is ready (issue 21 item 7)."""
    await kill_9_after_assignment(lane, f"{lane.consumer_group_prefix}.projector")
    tenant = new_tenant_id()
    admin_auth = {"Authorization": f"Bearer {_token(lane, '*', 'platform-admin')}"}
    async with serving(lane, Parts(processors=("projector",))) as client:
        resp = await client.get("/health/ready")
        doc = await resp.json()
        assert (resp.status, doc["status"]) == (503, "down"), doc
        assert doc["checks"]["projector"] == {"status": "down", "error": "NotConsuming"}
        created = await client.post(
            "/v1/tenants", json={"id": tenant, "name": "m"}, headers=admin_auth
        )
        assert created.status == 202, await created.text()
        async with asyncio.timeout(60):
            while (await (await client.get("/health/ready")).json())["status"] != "ok":
                await asyncio.sleep(0.1)
        # Ready: the projector consumes, so the creation made before is projected at once.
        seen = await client.get(
            f"/v1/tenants/{tenant}",
            headers={
                **admin_auth,
                "X-Consistency-Token": (await created.json())["consistency_token"],
            },
        )
        assert seen.status == 200, await seen.text()


def _token(settings: Settings, tenant: str, *roles: str) -> str:
    return issue_token(settings.jwt_secret, tenant=tenant, roles=roles, ttl_seconds=600)


async def _write_then_read(
    http: aiohttp.ClientSession, base: str, settings: Settings, tenant: str, n: int
) -> tuple[int, Any]:
    """PUT a record, GET it back with the write's token (one wait of at most 5 s)."""
    path = f"{base}/v1/tenants/{tenant}/collections/c/records/r{n}"
    writer = {"Authorization": f"Bearer {_token(settings, tenant, 'writer')}"}
    async with http.put(path, data=orjson.dumps({"n": n}), headers=writer) as resp:
        assert resp.status == 202, await resp.text()
        token = (await resp.json())["consistency_token"]
    reader = {
        "Authorization": f"Bearer {_token(settings, tenant, 'reader')}",
        "X-Consistency-Token": token,
    }
    async with http.get(path, headers=reader) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_after_kill_9_a_write_made_when_ready_is_visible_with_its_token(
    lane: Settings, tmp_path: Path
) -> None:
    """``eventfold run`` killed with -9 and started again: once it says ready, a write
    reads back with its token within the read's normal wait (issue 21 item 7: the
    restarted projector waited for its dead predecessor's session, the read 503'd)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = process_env(lane, port)
    tenant = new_tenant_id()
    output = (tmp_path / "run.log").open("ab")

    def spawn() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [EVENTFOLD, "run", "--no-token"], env=env, stdout=output, stderr=subprocess.STDOUT
        )

    proc = spawn()
    try:
        async with aiohttp.ClientSession() as http:
            await wait_until_ready(http, base, proc)
            auth = {"Authorization": f"Bearer {_token(lane, '*', 'platform-admin')}"}
            async with http.post(
                f"{base}/v1/tenants", data=orjson.dumps({"id": tenant, "name": "m"}), headers=auth
            ) as resp:
                assert resp.status == 202, await resp.text()
                token = (await resp.json())["consistency_token"]
            async with http.get(
                f"{base}/v1/tenants/{tenant}", headers={**auth, "X-Consistency-Token": token}
            ) as resp:
                assert resp.status == 200, await resp.text()
            assert (await _write_then_read(http, base, lane, tenant, 0))[0] == 200
            for n in (1, 2):
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                proc = spawn()
                await wait_until_ready(http, base, proc)
                status, doc = await _write_then_read(http, base, lane, tenant, n)
                assert (status, doc.get("data")) == (200, {"n": n}), doc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, 30)
            except subprocess.TimeoutExpired:
                proc.kill()
        output.close()

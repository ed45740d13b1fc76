"""Workflows across kill -9: real ``eventfold`` processes, SIGKILLed mid-step.

A run's completed steps never run again and its effect in flight runs again
with the same Idempotency-Key; a delay's durable timer survives the process
that set it. The receiver is a real aiohttp server on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import aiohttp
import pytest

from eventfold.auth import issue_token
from eventfold.settings import Settings
from tests.conftest import free_port, new_tenant_id, wait_until_ready
from tests.e2e.test_end_to_end import env_for, process
from tests.integration.workflow_helpers import Receiver, receiver  # noqa: F401 - the fixture

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.usefixtures("stack")]


def workflow_env(settings: Settings, port: int) -> dict[str, str]:
    return {
        **env_for(settings, port),
        "EVENTFOLD_WEBHOOK_ALLOW_HOSTS": "127.0.0.1",
        # A killed processor's runs are taken over once their lease runs out.
        "EVENTFOLD_WORKFLOW_LEASE_SECONDS": "2",
        "EVENTFOLD_LOG_LEVEL": "WARNING",
    }


class Client:
    """A tenant's admin over HTTP against the processes under test."""

    def __init__(
        self, http: aiohttp.ClientSession, settings: Settings, base: str, read: str = ""
    ) -> None:
        self.http, self.settings, self.base, self.read = http, settings, base, read or base
        self.tenant = new_tenant_id()
        self.auth = self._auth(self.tenant, "admin")

    def _auth(self, tenant: str, role: str) -> dict[str, str]:
        token = issue_token(self.settings.jwt_secret, tenant=tenant, roles=[role])
        return {"Authorization": f"Bearer {token}"}

    async def call(self, method: str, path: str, **kw: Any) -> tuple[int, Any]:
        headers = {**self.auth, **kw.pop("headers", {})}
        base = kw.pop("base", self.base)
        async with self.http.request(method, base + path, headers=headers, **kw) as r:
            return r.status, await r.json(content_type=None)

    async def setup(self, definition: dict[str, Any]) -> None:
        admin = self._auth("*", "platform-admin")
        async with self.http.post(
            f"{self.base}/v1/tenants", json={"id": self.tenant, "name": "x"}, headers=admin
        ) as r:
            assert r.status == 202, await r.text()
            token = (await r.json())["consistency_token"]
        t = f"/v1/tenants/{self.tenant}"
        status, _ = await self.call(
            "GET", t, headers={"X-Consistency-Token": token}, base=self.read
        )
        assert status == 200
        status, doc = await self.call("POST", f"{t}/workflows", json=definition)
        assert status == 202, doc
        status, doc = await self.call(
            "GET", f"{t}/workflows/{definition['id']}", base=self.read,
            headers={"X-Consistency-Token": doc["consistency_token"]},
        )  # fmt: skip
        assert status == 200, doc

    async def runs(self, workflow: str) -> list[dict[str, Any]]:
        status, doc = await self.call("GET", f"/v1/tenants/{self.tenant}/workflows/{workflow}/runs")
        assert status == 200, doc
        items: list[dict[str, Any]] = doc["items"]
        return items

    async def wait_run(self, workflow: str, done: Any, within: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + within
        while True:
            try:
                runs = await self.runs(workflow)
            except aiohttp.ClientConnectionError:
                runs = []
            if runs and done(runs[0]):
                return runs[0]
            assert time.monotonic() < deadline, runs
            await asyncio.sleep(0.2)


async def test_kill_9_during_an_http_step_resumes_with_the_same_key(
    settings: Settings,
    receiver: Receiver,  # noqa: F811 - the imported fixture
) -> None:
    def decide(path: str, nth: int) -> tuple[int, Any]:
        return 200, {"path": path, "nth": nth}

    receiver.decide = decide
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    definition = {
        "id": "three",
        "trigger": {"types": ["record.upserted"], "collection": "orders"},
        "steps": [
            {"id": "a", "kind": "http", "url": f"{receiver.base}/a"},
            {"id": "slow", "kind": "http", "url": f"{receiver.base}/slow",
             "timeout_seconds": 60},
            {"id": "c", "kind": "http", "url": f"{receiver.base}/c"},
        ],
    }  # fmt: skip
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        client = Client(http, settings, base)
        with process("run", "--no-token", env=workflow_env(settings, port)) as first:
            await wait_until_ready(http, base, first)
            await client.setup(definition)
            receiver.hang_first.add("/slow")
            status, _ = await client.call(
                "PUT", f"/v1/tenants/{client.tenant}/collections/orders/records/o1", json={}
            )
            assert status == 202
            await asyncio.wait_for(receiver.hung.wait(), 60)
            first.send_signal(signal.SIGKILL)
            first.wait(10)
        with process("run", "--no-token", env=workflow_env(settings, port)) as second:
            await wait_until_ready(http, base, second)
            run = await client.wait_run("three", lambda r: r["status"] == "succeeded")
    slow = receiver.to("/slow")
    assert len(slow) >= 2  # the call in flight when the process died, and the one after
    assert {c.headers["Idempotency-Key"] for c in slow} == {f"{run['id']}:slow"}
    assert len(receiver.to("/a")) == 1  # a completed step is not run again
    assert len(receiver.to("/c")) == 1
    assert [s["status"] for s in run["steps"]] == ["succeeded"] * 3


async def test_kill_9_of_the_workflows_process_during_a_delay(
    settings: Settings,
    receiver: Receiver,  # noqa: F811 - the imported fixture
) -> None:
    ingest, api = free_port(), free_port()
    delay = 4.0
    definition = {
        "id": "later",
        "trigger": {"types": ["record.upserted"], "collection": "orders"},
        "steps": [
            {"id": "before", "kind": "http", "url": f"{receiver.base}/before"},
            {"id": "wait", "kind": "delay", "seconds": delay},
            {"id": "after", "kind": "http", "url": f"{receiver.base}/after"},
        ],
    }
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        with (
            process("serve", "ingest", env=workflow_env(settings, ingest)) as ingest_proc,
            process("serve", "api", env=workflow_env(settings, api)) as api_proc,
            process("process", "projector", env=workflow_env(settings, free_port())),
        ):
            await wait_until_ready(http, f"http://127.0.0.1:{ingest}", ingest_proc)
            await wait_until_ready(http, f"http://127.0.0.1:{api}", api_proc)
            writer = Client(http, settings, f"http://127.0.0.1:{ingest}", f"http://127.0.0.1:{api}")
            reader = Client(http, settings, f"http://127.0.0.1:{api}")
            reader.tenant, reader.auth = writer.tenant, writer.auth
            workflows_port = free_port()
            env = workflow_env(settings, workflows_port)
            await writer.setup(definition)
            # (``eventfold process`` serves no health routes here: the run's progress
            # through the API is what shows the processor at work.)
            with process("process", "workflows", env=env) as first:
                status, _ = await writer.call(
                    "PUT", f"/v1/tenants/{writer.tenant}/collections/orders/records/o1", json={}
                )
                assert status == 202
                waiting = await reader.wait_run(
                    "later", lambda r: r["steps"][1]["status"] == "waiting"
                )
                first.send_signal(signal.SIGKILL)
                first.wait(10)
            started = waiting["steps"][1]["started_at"]
            due = _epoch(started) + delay
            with process("process", "workflows", env=env):
                run = await reader.wait_run("later", lambda r: r["status"] == "succeeded")
    [after] = receiver.to("/after")
    assert len(receiver.to("/before")) == 1
    fired = _epoch(run["steps"][1]["finished_at"])
    assert fired >= due - 0.01, (fired, due)  # never early
    assert after.headers["Idempotency-Key"] == f"{run['id']}:after"


def _epoch(value: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()

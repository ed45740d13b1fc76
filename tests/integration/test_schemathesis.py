"""Property-based API testing: Schemathesis against a live `eventfold run`, from /openapi.json.

Every operation of the document is called with generated parameters and bodies,
authenticated as a platform admin and as the admin of a real tenant (the
``tenant`` path parameter is pinned to it, so calls get past 403). Each answer
must be no 5xx and conform to the document: status code, content type, headers
and body schema. Examples are bounded so the run stays under a minute.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks

from eventfold.auth import issue_token
from eventfold.infra import ensure_topics
from eventfold.settings import Settings
from tests.conftest import _delete_topics, free_port, new_tenant_id, wait_until_ready

EVENTFOLD = str(Path(sys.executable).with_name("eventfold"))
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
]


@dataclasses.dataclass(frozen=True)
class Live:
    """The server under test, a tenant of it, and tokens."""

    base: str
    tenant: str
    tokens: dict[str, str]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def live(stack: Settings) -> AsyncIterator[Live]:
    """`eventfold run` on its own topics and port, with one tenant created and projected."""
    own = dataclasses.replace(
        stack,
        events_topic=stack.events_topic + ".st",
        dlq_topic=stack.dlq_topic + ".st",
        consumer_group_prefix=stack.consumer_group_prefix + ".st",
    )
    await ensure_topics(own)
    port = free_port()
    env = {
        **os.environ,
        "EVENTFOLD_HTTP_PORT": str(port),
        "EVENTFOLD_EVENTS_TOPIC": own.events_topic,
        "EVENTFOLD_DLQ_TOPIC": own.dlq_topic,
        "EVENTFOLD_CONSUMER_GROUP_PREFIX": own.consumer_group_prefix,
        "EVENTFOLD_JWT_SECRET": own.jwt_secret,
        "EVENTFOLD_LOG_LEVEL": "WARNING",
    }
    proc = subprocess.Popen(
        [EVENTFOLD, "run"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            await wait_until_ready(http, base, proc)
            tenant = new_tenant_id()
            admin = issue_token(own.jwt_secret, tenant="*", roles=["platform-admin"])
            headers = {"Authorization": f"Bearer {admin}"}
            async with http.post(
                f"{base}/v1/tenants", json={"id": tenant, "name": "ST"}, headers=headers
            ) as r:
                assert r.status == 202, await r.text()
                token = (await r.json())["consistency_token"]
            async with http.get(
                f"{base}/v1/tenants/{tenant}",
                headers={**headers, "X-Consistency-Token": token},
            ) as r:
                assert r.status == 200, await r.text()
        tokens = {
            "platform-admin": admin,
            "tenant-admin": issue_token(own.jwt_secret, tenant=tenant, roles=["admin"]),
        }
        yield Live(base, tenant, tokens)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        errors = proc.stderr.read().decode() if proc.stderr else ""
        if proc.stderr:
            proc.stderr.close()
        await _delete_topics(own, [own.events_topic, own.dlq_topic])
        # Unhandled errors are logged at ERROR with "unhandled": none may have happened.
        assert '"unhandled error"' not in errors, errors[-5000:]


@pytest.fixture(scope="module")
def api_schema(live: Live) -> Any:
    """The document as the live server serves it."""
    return schemathesis.openapi.from_url(f"{live.base}/openapi.json")


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_api_conforms_to_its_document(case: Any, live: Live, http: requests.Session) -> None:
    if "tenant" in (case.path_parameters or {}):
        case.path_parameters["tenant"] = live.tenant
    # A generated consistency token names offsets that never come: a 5 s wait each.
    if case.headers:
        case.headers.pop("X-Consistency-Token", None)
    for token in live.tokens.values():  # each case as a platform admin and a tenant admin
        case.call_and_validate(
            base_url=live.base,
            session=http,
            headers={"Authorization": f"Bearer {token}"},
            checks=CHECKS,
            timeout=30,
        )

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
import re
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import pytest_asyncio
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks

from devstack import ensure_topics
from eventfold import signing
from eventfold.auth import issue_token
from eventfold.settings import Settings
from eventfold.web import MAX_JSON_DEPTH
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
    # Its log goes to a file: a pipe read only at the end fills up under the fuzz's error
    # logs, and the server then blocks writing to it.
    with tempfile.TemporaryFile() as log_file:
        proc = subprocess.Popen(
            [EVENTFOLD, "run"], env=env, stdout=subprocess.DEVNULL, stderr=log_file
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
            log_file.seek(0)
            errors = log_file.read().decode(errors="replace")
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


#: Operations that would end the live tenant's writes for every case after them.
_ENDS_THE_TENANT = {("DELETE", "/v1/tenants/{tenant}"), ("POST", "/v1/tenants/{tenant}/suspend")}


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
        if (case.method, case.path) in _ENDS_THE_TENANT:
            # Deleting or suspending the one live tenant would end every case after it:
            # these go to a tenant that does not exist (their 404 is checked all the same).
            case.path_parameters["tenant"] = "fzmissing" + live.tenant[9:]
    # A generated consistency token names offsets that never come: a 5 s wait each.
    if case.headers:
        case.headers.pop("X-Consistency-Token", None)
    # /health/ready's 503 is its documented answer while a part is not doing its job
    # (a processor rebalancing on a loaded machine), not a server error: its status,
    # body and headers must still conform to the document.
    case_checks = [
        c for c in CHECKS if c is not checks.not_a_server_error or case.path != "/health/ready"
    ]
    for token in live.tokens.values():  # each case as a platform admin and a tenant admin
        case.call_and_validate(
            base_url=live.base,
            session=http,
            headers={"Authorization": f"Bearer {token}"},
            checks=case_checks,
            timeout=30,
        )


# ---------------------------------------------------------------------------------------
# Hostile bodies, ids and headers on every write route (issue 21's fuzz pass): deep
# nesting at and past the limit, sizes near and past the limit, odd unicode in ids, keys
# and values, wrong JSON types everywhere, huge numbers, duplicate keys. No answer may be
# a 5xx; errors are problem+json; routes with a documented body conform to the document.
# ---------------------------------------------------------------------------------------

UNKNOWN_ID = "0" * 16
_LIMIT = Settings(home=Path(".")).max_body_bytes


@dataclasses.dataclass(frozen=True)
class Targets:
    """Resources the write routes act on: a webhook and a (paused) integration."""

    webhook: str
    integration: str
    integration_secret: str


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def targets(live: Live) -> Targets:
    headers = {"Authorization": f"Bearer {live.tokens['tenant-admin']}"}
    base = f"{live.base}/v1/tenants/{live.tenant}"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        # Types that match nothing, a paused integration: nothing leaves the machine.
        hook = {"url": "https://example.com/h", "types": ["none.none"]}
        async with http.post(f"{base}/webhooks", json=hook, headers=headers) as r:
            assert r.status == 202, await r.text()
            webhook = await r.json()
        poll = {"kind": "http-poll", "url": "https://example.com/x", "collection": "things",
                "interval_seconds": 60, "paused": True}  # fmt: skip
        async with http.post(f"{base}/integrations", json=poll, headers=headers) as r:
            assert r.status == 202, await r.text()
            integration = await r.json()
        seen = {**headers, "X-Consistency-Token": integration["consistency_token"]}
        async with http.get(f"{base}/integrations/{integration['id']}", headers=seen) as r:
            assert r.status == 200, await r.text()
    return Targets(webhook["id"], integration["id"], integration["webhook_secret"])


def nested(depth: int, leaf: bytes = b"{}") -> bytes:
    """``depth`` levels of objects (``{"a": …}``), the innermost ``leaf``."""
    return b'{"a":' * (depth - 1) + leaf + b"}" * (depth - 1)


#: Values put in place of each field in turn (raw JSON text: some are not Python values).
HOSTILE_VALUES: dict[str, bytes] = {
    "null": b"null",
    "true": b"true",
    "zero": b"0",
    "negative": b"-1",
    "fraction": b"0.5",
    "u64-max+1": b"18446744073709551616",
    "i64-min-1": b"-9223372036854775809",
    "i64-max+1": b"9223372036854775808",
    "huge-int": b"1" + b"0" * 400,
    "1e400": b"1e400",
    "-1e400": b"-1e400",
    "1e-400": b"1e-400",
    "max-double": b"1.7976931348623157e308",
    "empty-string": b'""',
    "nul": b'"a\\u0000b"',
    "lone-high-surrogate": b'"\\ud800"',
    "lone-low-surrogate": b'"x\\udc00"',
    "rtl-override": b'"\\u202egnp.exe"',
    "zero-width": b'"\\u200b\\ufeff"',
    "nonchars": b'"\\uffff\\ufffe"',
    "emoji": '"😀 ü ✓ \U0001d518"'.encode(),
    "long-string": b'"' + b"x" * 70_000 + b'"',
    "empty-list": b"[]",
    "empty-object": b"{}",
    "list-of-junk": b'[null, 1, "a", [], {}]',
    "odd-keys": b'{"\\u202e": 1, "": 2, "a\\u0000": 3, "\\ud83d\\ude00": 4}',
    "deep": nested(300),
}


def _raw(value: Any) -> bytes:
    return orjson.dumps(value)


def with_field(base: dict[str, Any], key: str, raw: bytes) -> bytes:
    """``base`` as JSON with ``key``'s value replaced by the raw text ``raw``."""
    parts = [_raw(k) + b":" + (raw if k == key else _raw(v)) for k, v in base.items()]
    return b"{" + b",".join(parts) + b"}"


def sized(base: dict[str, Any], key: str, size: int) -> bytes:
    """``base`` with ``key`` a string that makes the body ``size`` bytes long."""
    empty = with_field(base, key, b'""')
    return with_field(base, key, b'"' + b"x" * max(0, size - len(empty)) + b'"')


def hostile_bodies(base: Any) -> Iterator[tuple[str, bytes]]:
    """Every hostile body derived from the valid ``base`` (None: a route without a body)."""
    yield "empty", b""
    yield "nul-byte", b"\x00"
    yield "not-utf8", b'{"a": "\xff\xfe"}'
    yield "overlong-utf8", b'{"a": "\xc0\x80"}'
    yield "cesu-surrogate", b'{"a": "\xed\xa0\x80"}'
    yield "bom", b"\xef\xbb\xbf{}"
    yield "truncated", b'{"a": [1, 2'
    yield "trailing-garbage", b"{} {}"
    for name, raw in (("null", b"null"), ("true", b"true"), ("int", b"7"), ("string", b'"x"'),
                      ("list", b"[]"), ("object", b"{}"), ("list-of-objects", b"[{}, {}]"),
                      ("1e400", b"1e400"), ("u64-max+1", b"18446744073709551616")):  # fmt: skip
        yield f"top-level-{name}", raw
    yield "depth-at-limit", nested(MAX_JSON_DEPTH)
    yield "depth-past-limit", nested(MAX_JSON_DEPTH + 1)
    yield "depth-300", nested(300)
    yield "depth-past-parser", b"[" * 1100 + b"]" * 1100
    yield "wide-array", b"[" + b",".join([b"0"] * 200_000) + b"]"
    yield "many-keys", b"{" + b",".join(b'"k%d":0' % i for i in range(50_000)) + b"}"
    yield "past-size-limit", b'{"a": "' + b"x" * _LIMIT + b'"}'
    if not isinstance(base, dict):
        return
    first = next(iter(base))
    yield "duplicate-key-bad-last", _raw(base)[:-1] + b"," + _raw(first) + b":[{}]}"
    yield "duplicate-key-bad-first", b"{" + _raw(first) + b":null," + _raw(base)[1:]
    yield "extra-odd-keys", _raw(base)[:-1] + b',"\\u202e":1,"":2,"\\ud83d\\ude00":3}'
    yield "near-size-limit", sized(base, first, _LIMIT - 64)
    yield "at-size-limit", sized(base, first, _LIMIT)
    for key, value in base.items():
        for name, raw in HOSTILE_VALUES.items():
            yield f"{key}={name}", with_field(base, key, raw)
        if isinstance(value, dict) and value:
            for name, raw in HOSTILE_VALUES.items():
                yield (
                    f"{key}.*={name}",
                    with_field(base, key, with_field(value, next(iter(value)), raw)),
                )
            # The field nested exactly to the limit, and one level past it.
            yield f"{key}-depth-at-limit", with_field(base, key, nested(MAX_JSON_DEPTH - 1))
            yield f"{key}-depth-past-limit", with_field(base, key, nested(MAX_JSON_DEPTH))


#: Path segments put in place of each identifier (already percent-encoded).
HOSTILE_IDS = [
    "%00", "a%00b", "%ED%A0%80", "%C0%80", "%FF", "%E2%80%AEabc", "%E2%80%8Babc",
    "%F0%9F%98%80", "a%2Fb", "%2E%2E", "..", "a%20b", "%25", "abc__def", "ABC", "_a",
    "pg_catalog", "%0D%0AX-Injected:%201", "%22q%22", "a;b", "x" * 300, "%C3%A9t%C3%A9",
]  # fmt: skip


HOSTILE_HEADERS: list[tuple[str, bytes]] = [
    *(("Idempotency-Key", v) for v in (b"\xff\xfe", "é😀".encode(), b"\xed\xa0\x80",
                                       b"x" * 300, b"a\x7fb", b"a b")),
    *(("If-Match", v) for v in (b'"\xff"', b'"99999999999999999999"', b'W/"1"', b'"-1"',
                                b'"1.5"', '"\u0661"'.encode(), b'""', b"*", b'"1", "2"')),
    *(("Content-Type", v) for v in (b"application/json; charset=utf-16", b"multipart/form-data",
                                    b"text/plain", b"\xff/\xff", b"application/json; x=\xff")),
    *(("Authorization", v) for v in (b"Bearer \xff\xfe", b"Bearer " + b"a" * 10_000,
                                     b"Bearer a.b.c", b"Bearer \xed\xa0\x80.e30.e30",
                                     b"Basic eDp5", b"Bearer", b"\xff")),
    *(("X-API-Key", v) for v in (b"efk_\xff", b"efk_" + b"0" * 16 + b"_" + b"\xff" * 43,
                                 b"efk_" + b"0" * 16 + b"_" + b"A" * 43, b"x" * 10_000)),
    *(("X-Consistency-Token", v) for v in (b"\xff", b"ct1.\xff\xfe", b"ct1." + b"A" * 5000,
                                           b"ct1.eyIwIjotMX0", b"ct1.eyIwIjoxZTQwMH0",
                                           b"ct1.W10", b"ct1.bnVsbA")),
    *(("X-Request-ID", v) for v in (b"\xff", b"x" * 5000)),
    *(("traceparent", v) for v in (b"\xff", b"00-" + b"0" * 32 + b"-" + b"0" * 16 + b"-01",
                                   b"ff-" + b"f" * 32 + b"-" + b"f" * 16 + b"-ff", b"x" * 5000)),
]  # fmt: skip


@dataclasses.dataclass(frozen=True)
class WriteRoute:
    """One write route: its template, method, valid body and how to call it."""

    method: str
    template: str
    base: Any
    params: dict[str, str]
    token: str = "tenant-admin"
    media_type: str = "application/json"
    signed: bool = False

    def path(self, params: dict[str, str]) -> str:
        path = self.template
        for name, value in params.items():
            path = path.replace("{" + name + "}", value)
        return path


def write_routes(live: Live, t: Targets) -> list[WriteRoute]:
    """Every write route, with a valid body of its own to derive hostile ones from."""
    tenant = {"tenant": live.tenant}
    record = {**tenant, "collection": "things", "id": "r1"}
    event = {"specversion": "1.0", "id": "fz-1", "source": "fuzz", "type": "record.upserted",
             "subject": "things/r1", "data": {"n": 1, "tags": ["a"]}, "expectedversion": 0,
             "correlationid": "fz", "fuzzext": "x"}  # fmt: skip
    t_ = "/v1/tenants/{tenant}"
    rec = t_ + "/collections/{collection}/records"
    return [
        WriteRoute("POST", "/v1/tenants", {"id": "fz" + live.tenant[1:], "name": "Fuzz"}, {},
                   token="platform-admin"),
        WriteRoute("POST", t_ + "/events", event, tenant),
        WriteRoute("POST", t_ + "/events", [event, {**event, "id": "fz-2"}], tenant),
        WriteRoute("POST", rec, {"id": "r2", "data": {"n": 1}}, {**tenant, "collection": "things"}),
        WriteRoute("PUT", rec + "/{id}", {"n": 1, "s": "x", "o": {"k": 1}}, record),
        WriteRoute("PATCH", rec + "/{id}", {"n": 2, "o": {"k": None}}, record,
                   media_type="application/merge-patch+json"),
        WriteRoute("DELETE", rec + "/{id}", None, record),
        WriteRoute("POST", t_ + "/api-keys", {"name": "fuzz", "roles": ["reader"]}, tenant),
        WriteRoute("DELETE", t_ + "/api-keys/{id}", None, {**tenant, "id": UNKNOWN_ID}),
        WriteRoute("POST", t_ + "/webhooks",
                   {"url": "https://example.com/h", "types": ["none.none"]}, tenant),
        WriteRoute("DELETE", t_ + "/webhooks/{id}", None, {**tenant, "id": UNKNOWN_ID}),
        WriteRoute("POST", t_ + "/webhooks/{id}/redrive", {"since": "2026-01-01T00:00:00Z"},
                   {**tenant, "id": t.webhook}),
        WriteRoute("POST", t_ + "/integrations",
                   {"kind": "http-poll", "url": "https://example.com/x", "collection": "things",
                    "interval_seconds": 60, "paused": True, "headers": {"X-A": "b"}}, tenant),
        WriteRoute("PATCH", t_ + "/integrations/{id}", {"paused": True, "interval_seconds": 60},
                   {**tenant, "id": t.integration}),
        WriteRoute("DELETE", t_ + "/integrations/{id}", None, {**tenant, "id": UNKNOWN_ID}),
        WriteRoute("POST", t_ + "/integrations/{id}/sync", None, {**tenant, "id": t.integration}),
        WriteRoute("POST", t_ + "/integrations/{id}/webhook", {"items": [{"id": "i1", "n": 1}]},
                   {**tenant, "id": t.integration}, signed=True),
    ]  # fmt: skip


def _send(
    http: requests.Session, method: str, url: str, body: bytes, headers: dict[str, Any]
) -> requests.Response | str:
    """The answer, or what came instead of one (nothing within 30 s, a dropped connection)."""
    try:
        return http.request(method, url, data=body, headers=headers, timeout=30)
    except requests.RequestException as exc:
        return f"no answer: {type(exc).__name__}"


def _problem_failures(resp: requests.Response | str) -> list[str]:
    """What is wrong with an answer besides the document's checks: 5xx, non-problem errors."""
    if isinstance(resp, str):
        return [resp]
    wrong = []
    if resp.status_code >= 500:
        wrong.append(f"{resp.status_code}: {resp.text[:300]}")
    elif resp.status_code >= 400:
        if not resp.headers.get("Content-Type", "").startswith("application/problem+json"):
            wrong.append(f"{resp.status_code} not problem+json: {resp.text[:200]}")
        elif resp.json().get("status") != resp.status_code:
            wrong.append(f"{resp.status_code} with a problem saying {resp.text[:200]}")
    return wrong


def test_hostile_input_on_every_write_route_gets_no_server_error(
    live: Live, targets: Targets, api_schema: Any, http: requests.Session
) -> None:
    failures: list[str] = []
    calls = 0
    for route in write_routes(live, targets):
        operation = api_schema[route.template][route.method]
        documented_body = route.base is not None
        auth = {"Authorization": f"Bearer {live.tokens[route.token]}"}
        for name, body in hostile_bodies(route.base):
            headers = {**auth, "Content-Type": route.media_type}
            if route.signed:
                msg = f"msg_{calls}_{uuid.uuid4().hex}"
                signed = signing.signed_headers(targets.integration_secret, msg, body)
                headers = {"Content-Type": route.media_type, **signed}
            case = operation.Case(path_parameters=route.params, headers=headers)
            resp = _send(http, route.method, live.base + route.path(route.params), body, headers)
            calls += 1
            wrong = _problem_failures(resp)
            if documented_body and not wrong and not isinstance(resp, str):
                try:
                    case.validate_response(resp, checks=CHECKS)
                except (Exception, BaseExceptionGroup) as exc:  # schemathesis' FailureGroup
                    wrong.append(f"{resp.status_code} does not conform: {exc!s:.300}")
            failures += [f"{route.method} {route.template} [{name}] {w}" for w in wrong]
        # Identifiers: each path parameter in turn, and the tenant of the tenant route's body.
        for param in route.params:
            for raw_id in HOSTILE_IDS:
                params = {**route.params, param: raw_id}
                body = b"{}" if route.base is not None else b""
                headers = {**auth, "Content-Type": route.media_type}
                resp = _send(http, route.method, live.base + route.path(params), body, headers)
                calls += 1
                failures += [
                    f"{route.method} {route.template} [{param}={raw_id[:20]}] {w}"
                    for w in _problem_failures(resp)
                ]
    # Headers a write reads, as raw bytes (credentials too: a key or token sent instead).
    path = f"{live.base}/v1/tenants/{live.tenant}/collections/things/records/r1"
    auth = {"Authorization": f"Bearer {live.tokens['tenant-admin']}"}
    for header, value in HOSTILE_HEADERS:
        for method in ("PUT", "PATCH", "DELETE"):
            body = b"" if method == "DELETE" else b'{"n": 1}'
            sent = {**auth, header: value}
            if header == "X-API-Key":
                del sent["Authorization"]
            resp = _send(http, method, path, body, sent)
            calls += 1
            # The HTTP parser itself refuses control characters and header lines over
            # 8190 bytes with a plain-text 400, before any middleware runs.
            parser_refuses = len(value) > 8000 or re.search(rb"[\x00-\x08\x0a-\x1f\x7f]", value)
            if not isinstance(resp, str) and resp.status_code == 400 and parser_refuses:
                continue
            failures += [f"{method} [{header}: {value!r:.60}] {w}" for w in _problem_failures(resp)]
    assert not failures, f"{len(failures)} of {calls} calls failed:\n" + "\n".join(failures[:60])

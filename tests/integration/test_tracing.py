"""One trace from an HTTP write to its webhook delivery (CONTRACT "Operations": trace context).

The request's W3C ``traceparent`` becomes the parent of its server span; the publish
is its child and puts its own context into the event (the CloudEvents ``traceparent``
extension) and the Kafka headers; the projector's batch, the cache refresh and the
archived segment pick it up (linked, and the child when a batch is one trace's); the
notifier's delivery is a child of the event's context and hands its own to the
receiver; each workflow step of the run the write triggered is a child of it too.
Spans are read from an in-memory exporter; the app runs on a private topic.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import signal
import subprocess
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from entrypoints.bootstrap import Parts
from eventfold.settings import Settings
from tests.conftest import EVENTFOLD, free_port, output, process, wait_until_ready
from tests.integration.conftest import Api, TenantApi, process_env, serving
from tests.integration.test_webhooks import subscribe
from tests.integration.workflow_helpers import (
    Mailbox,
    Receiver,
    define,
    finished,
    step,
    wait_run,
)

pytestmark = pytest.mark.integration

PUT_ROUTE = "PUT /v1/tenants/{tenant}/collections/{collection}/records/{id}"


@pytest.fixture
async def traced_api(lane: Settings, span_exporter: InMemorySpanExporter) -> AsyncIterator[Api]:
    """API, gateway, projector, cache processor, notifier and archiver (closing segments at
    the end of the log after a second), built while tracing is on."""
    parts = Parts(processors=("projector", "cache", "notifier", "archiver"))
    settings = dataclasses.replace(lane, archive_segment_seconds=1.0)
    async with serving(settings, parts) as client:
        async with asyncio.timeout(60):
            while (await (await client.get("/health/ready")).json())["status"] != "ok":
                await asyncio.sleep(0.1)
        yield Api(client, settings)


class TracedReceiver:
    """A webhook receiver accepting only deliveries that carry a trace context of ``trace_id``.

    The notifiers of other test sessions on the shared database deliver any tenant's
    webhooks too, without tracing: those are refused (503), so the delivery that counts
    is a traced one (this test's notifier, or another of this session's, all tracing
    into the exporter here); what they exhaust is redriven (see the test).
    """

    def __init__(self, trace_id: int) -> None:
        self.trace_id = f"{trace_id:032x}"
        #: The ``traceparent`` header and the body of each delivery accepted.
        self.accepted: list[tuple[str, bytes]] = []
        self.refused = 0
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> TracedReceiver:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/hook"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        traceparent = request.headers.get("traceparent", "")
        if self.trace_id not in traceparent:
            self.refused += 1
            return web.Response(status=503)
        self.accepted.append((traceparent, body))
        return web.Response(status=200)


async def until_span(
    exporter: InMemorySpanExporter, name: str, trace_id: int | None = None
) -> list[ReadableSpan]:
    """The finished spans named ``name`` (of ``trace_id`` if given), once there is one."""
    async with asyncio.timeout(30):
        while True:
            found = [
                s
                for s in exporter.get_finished_spans()
                if s.name == name and (trace_id is None or s.context.trace_id == trace_id)
            ]
            if found:
                return found
            await asyncio.sleep(0.05)


def linked_to(span: ReadableSpan, target: ReadableSpan) -> bool:
    return any(link.context.span_id == target.context.span_id for link in span.links)


async def test_one_trace_from_the_http_request_to_the_webhook_delivery(
    traced_api: Api, span_exporter: InMemorySpanExporter, lane: Settings
) -> None:
    tenant = TenantApi(traced_api, (await traced_api.create_tenant())["id"])
    trace_id, caller = secrets.randbits(128), secrets.randbits(64)
    async with TracedReceiver(trace_id) as receiver:
        hook = await subscribe(tenant, receiver.url, ["record.upserted"])
        since = datetime.now(UTC).isoformat()
        written = await tenant.write(
            "PUT",
            "/collections/things/records/t1",
            json={"n": 1},
            headers={
                "traceparent": f"00-{trace_id:032x}-{caller:016x}-01",
                "X-Request-ID": f"trace-{tenant.id}",
            },
        )
        async with asyncio.timeout(60):
            while not receiver.accepted:
                await asyncio.sleep(0.5)
                # Exhausted by untraced notifiers of other sessions: pending again.
                redrive = await tenant.call(
                    "POST", f"/webhooks/{hook['id']}/redrive", roles=("admin",),
                    json={"since": since},
                )  # fmt: skip
                assert redrive.status == 200, await redrive.text()
    (delivery,) = await until_span(span_exporter, "webhook delivery", trace_id)
    (server,) = await until_span(span_exporter, PUT_ROUTE, trace_id)
    (publish,) = await until_span(span_exporter, f"publish {lane.events_topic}", trace_id)

    # HTTP -> publish -> (Kafka, the event) -> delivery: one trace, parent by parent.
    assert server.parent is not None
    assert (server.parent.span_id, server.parent.is_remote) == (caller, True)
    assert publish.parent is not None
    assert publish.parent.span_id == server.context.span_id
    assert delivery.parent is not None
    assert delivery.parent.span_id == publish.context.span_id
    assert _attrs(server)["http.response.status_code"] == 202
    assert _attrs(server)["eventfold.request_id"] == f"trace-{tenant.id}"
    assert _attrs(publish)["messaging.destination.name"] == lane.events_topic
    assert _attrs(delivery)["http.response.status_code"] == 200
    assert _attrs(delivery)["eventfold.event.id"] == written["event_id"]

    # The event carries the publish span's context; the receiver gets the delivery's.
    ((traceparent, body),) = receiver.accepted
    assert orjson.loads(body)["traceparent"] == _header(publish)
    assert traceparent == _header(delivery)

    # The processors' batches picked the context up (from the envelope, from the Kafka
    # headers, from the archived line): linked to the publish span, each a child of it
    # when alone in its batch.
    for name in ("projector batch", "cache refresh", "archive segment"):
        async with asyncio.timeout(30):
            while not (batches := [s for s in await until_span(span_exporter, name)
                                   if linked_to(s, publish)]):  # fmt: skip
                await asyncio.sleep(0.05)
        batch = batches[0]  # (a refresh retried after a Redis failure is a second span)
        if len(batch.links) == 1:
            assert batch.parent is not None
            assert batch.parent.span_id == publish.context.span_id, name


@pytest.fixture
async def traced_workflows(
    lane: Settings, span_exporter: InMemorySpanExporter
) -> AsyncIterator[tuple[Api, Receiver, Mailbox]]:
    """API, gateway, projector and workflows processor, built while tracing is on, with a
    third party's HTTP server and an SMTP server of their own."""
    receiver, mailbox = Receiver(), Mailbox()
    await receiver.start()
    mailbox.start()
    settings = dataclasses.replace(lane, smtp_url=mailbox.url)
    try:
        async with serving(settings, Parts(processors=("projector", "workflows"))) as client:
            async with asyncio.timeout(60):
                while (await (await client.get("/health/ready")).json())["status"] != "ok":
                    await asyncio.sleep(0.1)
            yield Api(client, settings), receiver, mailbox
    finally:
        mailbox.stop()
        await receiver.stop()


async def test_every_workflow_step_joins_the_trigger_events_trace(
    traced_workflows: tuple[Api, Receiver, Mailbox],
    span_exporter: InMemorySpanExporter,
    lane: Settings,
) -> None:
    api, receiver, mailbox = traced_workflows
    tenant = TenantApi(api, (await api.create_tenant())["id"])
    receiver.decide = lambda _path, _n: (200, {"id": "crm-1"})
    await define(tenant, {
        "id": "traced", "name": "Traced", "enabled": True,
        "trigger": {"types": ["record.upserted"], "collection": "orders"},
        "steps": [
            {"id": "crm", "kind": "http", "url": f"{receiver.base}/crm", "body": {"n": 1}},
            {"id": "note", "kind": "record", "op": "upsert", "collection": "notes",
             "record": "${/record/id}", "data": {"crm": {"$from": "/steps/crm/output/id"}}},
            {"id": "mail", "kind": "email", "to": ["ops@example.com"], "subject": "s",
             "text": "t"},
            {"id": "wait", "kind": "delay", "seconds": 0.2},
            {"id": "ok", "kind": "approval", "timeout_seconds": 3600},
        ],
    })  # fmt: skip
    trace_id, caller = secrets.randbits(128), secrets.randbits(64)
    written = await tenant.write(
        "PUT",
        "/collections/orders/records/o1",
        json={"total": 5},
        headers={"traceparent": f"00-{trace_id:032x}-{caller:016x}-01"},
    )
    [run] = await wait_run(tenant, "traced", lambda r: step(r, "ok")["status"] == "waiting")
    # Approved by a request of another trace: the step still belongs to the trigger's.
    await tenant.write("POST", f"/runs/{run['id']}/steps/ok/approve", json={})
    [run] = await wait_run(tenant, "traced", finished)
    assert run["status"] == "succeeded", run

    (server,) = await until_span(span_exporter, PUT_ROUTE, trace_id)
    (publish,) = [
        s
        for s in await until_span(span_exporter, f"publish {lane.events_topic}", trace_id)
        if s.parent is not None and s.parent.span_id == server.context.span_id
    ]
    steps = {}
    for kind in ("http", "record", "email", "delay", "approval"):
        (span,) = await until_span(span_exporter, f"workflow step {kind}", trace_id)
        assert span.parent is not None
        assert span.parent.span_id == publish.context.span_id, kind
        attrs = _attrs(span)
        assert attrs["eventfold.workflow.run"] == run["id"], kind
        assert attrs["eventfold.workflow.step.kind"] == kind
        assert attrs["eventfold.event.id"] == written["event_id"]
        assert attrs["eventfold.tenant"] == tenant.id
        steps[kind] = span
    assert [_attrs(steps[k])["eventfold.workflow.step"] for k in steps] == [
        "crm", "note", "mail", "wait", "ok",
    ]  # fmt: skip
    # A wait spans the step, from its start to its end: the delay at least its 0.2 s.
    delay = steps["delay"]
    assert delay.end_time is not None
    assert delay.start_time is not None
    assert delay.end_time - delay.start_time >= 0.2e9
    assert _attrs(steps["approval"])["eventfold.workflow.step.status"] == "succeeded"
    # The http step hands its context to the third party; the record step's publish is
    # its child, and the note it wrote carries that publish's context on.
    [crm] = receiver.to("/crm")
    assert crm.headers["traceparent"] == _header(steps["http"])
    noted = [
        s
        for s in await until_span(span_exporter, f"publish {lane.events_topic}", trace_id)
        if s.parent is not None and s.parent.span_id == steps["record"].context.span_id
    ]
    assert len(noted) == 1
    # The run's own events (workflow.run.started, workflow.step.*) join the trace too.
    published = await until_span(span_exporter, f"publish {lane.events_topic}", trace_id)
    assert any(
        s.parent is not None and s.parent.span_id == publish.context.span_id for s in published
    )
    assert len(mailbox.of(run["id"])) == 1


def _attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def _header(span: ReadableSpan) -> str:
    """The W3C ``traceparent`` naming ``span``."""
    return f"00-{span.context.trace_id:032x}-{span.context.span_id:016x}-01"


async def test_a_process_traces_as_the_standard_variables_say(lane: Settings) -> None:
    """OTEL_TRACES_EXPORTER turns it on in a real process; the spans are flushed at exit."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = process_env(lane, port, OTEL_TRACES_EXPORTER="console")
    env.pop("OTEL_SERVICE_NAME", None)
    trace_id = secrets.randbits(128)
    with process("serve", "api", env=env) as proc:
        async with aiohttp.ClientSession() as http:
            await wait_until_ready(http, base, proc)
            headers = {"traceparent": f"00-{trace_id:032x}-{secrets.randbits(64):016x}-01"}
            async with http.get(f"{base}/v1/me", headers=headers) as r:
                assert r.status == 401
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 20) == 0
        out = output(proc)
    assert f'"trace_id": "0x{trace_id:032x}"' in out
    assert '"name": "GET /v1/me"' in out
    assert '"service.name": "eventfold-api"' in out


def test_an_exporter_that_is_not_installed_stops_the_command(lane: Settings) -> None:
    env = process_env(lane, free_port(), OTEL_TRACES_EXPORTER="no-such-exporter")
    done = subprocess.run(
        [EVENTFOLD, "process", "notifier"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "eventfold: OTEL_TRACES_EXPORTER: no exporter 'no-such-exporter' is installed;"
        " install the package registering the exporter 'no-such-exporter'"
    ]

"""Workflows on the real stack: triggers, every step kind, retries, approvals, cancel, loops.

The session app runs the workflows processor with the other processors; third
parties are a real aiohttp receiver on 127.0.0.1 (allowed through
``webhook_allow_hosts``) and a real SMTP server (aiosmtpd) on the session's
``smtp_url`` port. Crash tests with real processes are in
``tests/e2e/test_workflow_crash.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest

from eventfold.ids import tenant_schema
from eventfold.workflows.ids import run_id
from tests.conftest import SMTP_PORT
from tests.integration.conftest import Api, TenantApi
from tests.integration.test_replay import eventfold
from tests.integration.workflow_helpers import (
    Mailbox,
    Receiver,
    define,
    finished,
    runs_of,
    step,
    wait_record,
    wait_run,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

MERGE = {"Content-Type": "application/merge-patch+json"}


@pytest.fixture(scope="session")
def mailbox() -> Iterator[Mailbox]:
    box = Mailbox(SMTP_PORT)
    box.start()
    try:
        yield box
    finally:
        box.stop()


def paid_order(base: str, **over: Any) -> dict[str, Any]:
    """The contract's example, with short waits and URLs on the receiver."""
    doc: dict[str, Any] = {
        "id": "paid-order",
        "name": "Paid order follow-up",
        "enabled": True,
        "trigger": {
            "types": ["record.upserted", "record.patched"],
            "collection": "orders",
            "when": {"status": {"eq": "paid"}, "total": {"gte": 100}},
        },
        "steps": [
            {"id": "crm", "kind": "http", "method": "POST", "url": f"{base}/crm",
             "headers": {"Authorization": "Bearer s3cret-${/record/id}"},
             "body": {"order": "${/record/id}", "total": {"$from": "/record/data/total"}},
             "retry": {"max_attempts": 3, "backoff_seconds": 0.2}},
            {"id": "mark", "kind": "record", "op": "patch", "collection": "orders",
             "record": "${/record/id}", "data": {"crm_id": {"$from": "/steps/crm/output/id"}}},
            {"id": "mail", "kind": "email", "to": ["ops@example.com"],
             "subject": "Order ${/record/id} paid",
             "text": "Total ${/record/data/total}, crm ${/steps/crm/output/id}"},
            {"id": "wait", "kind": "delay", "seconds": 0.5},
            {"id": "ok", "kind": "approval", "timeout_seconds": 86400},
            {"id": "ship", "kind": "http", "url": f"{base}/ship",
             "if": {"/record/data/total": {"lt": 10000}}},
            {"id": "gift", "kind": "http", "url": f"{base}/gift",
             "if": {"/record/data/total": {"gte": 10000}}},
        ],
    }  # fmt: skip
    doc.update(over)
    return doc


async def test_the_paid_order_runs_every_step_kind_once(
    tenant: TenantApi, receiver: Receiver, mailbox: Mailbox
) -> None:
    receiver.decide = lambda path, _n: (200, {"id": "crm-7"} if path == "/crm" else {})
    await define(tenant, paid_order(receiver.base))
    # Not paid yet: no run. Then paid (a patch): the record AFTER the patch matches.
    await tenant.write(
        "PUT", "/collections/orders/records/o1", json={"status": "new", "total": 150}
    )
    patched = await tenant.write(
        "PATCH",
        "/collections/orders/records/o1",
        data=json.dumps({"status": "paid"}),
        headers=MERGE,
    )
    [run] = await wait_run(tenant, "paid-order", lambda r: step(r, "ok")["status"] == "waiting")
    assert run["id"] == run_id(tenant.id, "paid-order", patched["event_id"])
    assert run["trigger_event"] == patched["event_id"]
    assert run["status"] == "waiting"
    assert run["workflow_version"] == 1
    [crm] = receiver.to("/crm")
    assert crm.body == {"order": "o1", "total": 150}  # ${} is text, $from keeps the number
    assert crm.headers["Idempotency-Key"] == f"{run['id']}:crm"
    assert crm.headers["Authorization"] == "Bearer s3cret-o1"
    # The header's value is sealed: neither the log nor a read holds it in plain text.
    served = await tenant.read_json("/workflows/paid-order")
    assert served["steps"][0]["headers"] == {"Authorization": "(sealed)"}
    assert "headers_sealed" not in served["steps"][0]
    created = await tenant.read_json("/events/workflow.created:paid-order")
    assert "s3cret" not in json.dumps(created)
    assert step(run, "crm")["output"] == {"id": "crm-7"}
    record = await wait_record(
        tenant, "/collections/orders/records/o1", lambda r: "crm_id" in r["data"]
    )
    assert record["data"]["crm_id"] == "crm-7"
    [mail] = mailbox.of(run["id"])
    assert mail["Subject"] == "Order o1 paid"
    assert mail["Message-ID"] == f"<{run['id']}.mail@workflows.eventfold>"
    assert "Total 150, crm crm-7" in mail.get_payload(decode=True).decode()
    assert step(run, "wait")["status"] == "succeeded"
    assert receiver.to("/ship") == []

    approved = await tenant.write(
        "POST", f"/runs/{run['id']}/steps/ok/approve", json={"comment": "fine"}
    )
    assert approved["event_id"] == f"{run['id']}:ok:approved"
    [run] = await wait_run(tenant, "paid-order", finished)
    assert run["status"] == "succeeded", run
    assert [(s["id"], s["status"]) for s in run["steps"]] == [
        ("crm", "succeeded"), ("mark", "succeeded"), ("mail", "succeeded"), ("wait", "succeeded"),
        ("ok", "succeeded"), ("ship", "succeeded"), ("gift", "skipped"),
    ]  # fmt: skip
    assert step(run, "ok")["output"] == {"approved": True, "comment": "fine"}
    assert len(receiver.to("/ship")) == 1
    assert receiver.to("/gift") == []
    # The run's own record write (causationid = the run) starts no second run of it,
    # though the record still matches the trigger.
    await asyncio.sleep(0.5)
    assert len(await runs_of(tenant, "paid-order")) == 1
    # Every change is in the tenant's history.
    history = await tenant.read_json(f"/events?subject=runs/{run['id']}&limit=1000")
    types = [e["type"] for e in history["items"]]
    assert types[0] == "workflow.run.started"
    assert types[-1] == "workflow.run.succeeded"
    assert "workflow.step.approved" in types
    assert types.count("workflow.step.succeeded") == 6
    assert all(e["status"] == "applied" for e in history["items"])
    patch_event = await tenant.read_json(f"/events/{run['id']}:mark:record")
    assert patch_event["causationid"] == run["id"]
    # The run is the actor of what it writes; the approval, its approver's.
    assert patch_event["actor"] == f"workflow:{run['id']}"
    assert {e["actor"] for e in history["items"]} <= {f"workflow:{run['id']}", "user:eventfold-cli"}
    assert history["items"][0]["actor"] == f"workflow:{run['id']}"


async def test_conditions_decide_which_events_start_runs(
    tenant: TenantApi, receiver: Receiver
) -> None:
    await define(
        tenant,
        {"id": "vip", "trigger": {"types": ["record.upserted"], "collection": "customers",
                                  "when": {"/profile/tier": {"in": ["gold", "platinum"]},
                                           "email": {"exists": True}, "age": {"gt": 17},
                                           "status": {"ne": "banned"}}},
         "steps": [{"id": "hello", "kind": "http", "url": f"{receiver.base}/vip",
                    "body": {"who": {"$from": "/record/data/profile"},
                             "v": "${/record/version}"}}]},
    )  # fmt: skip
    writes = {
        "c1": {"profile": {"tier": "gold"}, "email": "a@x", "age": 30},  # matches
        "c2": {"profile": {"tier": "silver"}, "email": "b@x", "age": 30},  # tier
        "c3": {"profile": {"tier": "gold"}, "email": None, "age": 30},  # exists
        "c4": {"profile": {"tier": "gold"}, "email": "d@x", "age": "30"},  # gt on a string
        "c5": {"profile": {"tier": "gold"}, "email": "e@x", "age": 40, "status": "banned"},
        "c6": {"profile": {"tier": "platinum"}, "email": "f@x", "age": 18, "status": "ok"},
    }
    for rid, data in writes.items():
        await tenant.write("PUT", f"/collections/customers/records/{rid}", json=data)
    # A write to another collection, and a patch type the trigger does not name.
    await tenant.write("PUT", "/collections/orders/records/c1", json=writes["c1"])
    await tenant.write("PATCH", "/collections/customers/records/c2",
                       data=json.dumps({"profile": {"tier": "gold"}}), headers=MERGE)  # fmt: skip
    runs = await wait_run(tenant, "vip", finished, count=2)
    await asyncio.sleep(1.0)  # nothing else comes
    runs = await runs_of(tenant, "vip")
    assert len(runs) == 2
    assert all(r["status"] == "succeeded" for r in runs)
    bodies = sorted((c.body["who"]["tier"], c.body["v"]) for c in receiver.to("/vip"))
    assert bodies == [("gold", "1"), ("platinum", "1")]


async def test_retries_keep_the_key_and_a_400_fails_at_once(
    tenant: TenantApi, receiver: Receiver
) -> None:
    receiver.decide = lambda path, n: (
        (503 if n == 1 else 429 if n == 2 else 200, {"n": n}) if path == "/flaky" else (400, {})
    )
    await define(
        tenant,
        {"id": "calls", "trigger": {"types": ["record.upserted"], "collection": "jobs"},
         "steps": [
             {"id": "flaky", "kind": "http", "url": f"{receiver.base}/flaky",
              "retry": {"max_attempts": 3, "backoff_seconds": 0.2}},
             {"id": "bad", "kind": "http", "url": f"{receiver.base}/bad", "method": "PUT",
              "retry": {"max_attempts": 5, "backoff_seconds": 0.2}},
             {"id": "never", "kind": "delay", "seconds": 0}]},
    )  # fmt: skip
    await tenant.write("PUT", "/collections/jobs/records/j1", json={})
    [run] = await wait_run(tenant, "calls", finished)
    assert run["status"] == "failed"
    assert "step bad failed: HTTP 400" in run["reason"]
    flaky = receiver.to("/flaky")
    assert [c.status for c in flaky] == [503, 429, 200]
    assert {c.headers["Idempotency-Key"] for c in flaky} == {f"{run['id']}:flaky"}
    assert step(run, "flaky") | {"started_at": None, "finished_at": None} == {
        "id": "flaky", "kind": "http", "status": "succeeded", "attempts": 3,
        "output": {"n": 3}, "error": None, "started_at": None, "finished_at": None,
    }  # fmt: skip
    assert len(receiver.to("/bad")) == 1  # a 400 is not retried
    assert step(run, "bad")["status"] == "failed"
    assert step(run, "bad")["error"] == "HTTP 400"
    assert step(run, "never")["status"] == "skipped"


async def test_a_step_that_runs_out_of_attempts_fails_the_run(
    tenant: TenantApi, receiver: Receiver
) -> None:
    receiver.decide = lambda _p, _n: (500, {})
    await define(
        tenant,
        {"id": "down", "trigger": {"types": ["record.upserted"], "collection": "jobs"},
         "steps": [{"id": "call", "kind": "http", "url": f"{receiver.base}/down",
                    "retry": {"max_attempts": 2, "backoff_seconds": 0.1}}]},
    )  # fmt: skip
    await tenant.write("PUT", "/collections/jobs/records/j1", json={})
    [run] = await wait_run(tenant, "down", finished)
    assert run["status"] == "failed"
    assert step(run, "call")["attempts"] == 2
    assert step(run, "call")["error"] == "HTTP 500"
    assert len(receiver.to("/down")) == 2


async def test_email_retries_a_temporary_refusal(tenant: TenantApi, mailbox: Mailbox) -> None:
    await define(
        tenant,
        {"id": "mailer", "trigger": {"types": ["record.upserted"], "collection": "notes"},
         "steps": [{"id": "m", "kind": "email", "to": ["a@example.com", "b@example.com"],
                    "subject": "${/record/data/title}", "text": "hello",
                    "retry": {"max_attempts": 3, "backoff_seconds": 0.1}}]},
    )  # fmt: skip
    mailbox.refuse.append(451)
    await tenant.write("PUT", "/collections/notes/records/n1", json={"title": "Hi there"})
    [run] = await wait_run(tenant, "mailer", finished)
    assert run["status"] == "succeeded"
    assert step(run, "m")["attempts"] == 2
    [mail] = mailbox.of(run["id"])
    assert mail["Subject"] == "Hi there"
    assert mail["To"] == "a@example.com, b@example.com"
    assert step(run, "m")["output"]["message_id"] == mail["Message-ID"]


async def test_mail_goes_over_kept_connections_and_a_closed_one_is_replaced() -> None:
    from email.mime.text import MIMEText

    import aiosmtplib

    from consumers.workflows.effects import Mailer, Smtp

    first = Mailbox()
    first.start()
    mailer = Mailer(Smtp.parse(first.url, "wf@example.com"), size=2)

    def mail(n: int) -> MIMEText:
        msg = MIMEText(f"mail {n}")
        msg["From"], msg["To"], msg["Message-ID"] = "wf@example.com", "a@example.com", f"<{n}@t>"
        return msg

    second: Mailbox | None = None
    try:
        for n in range(5):
            await mailer.send(mail(n))
        assert len(first.received) == 5
        assert len(set(first.peers)) == 1  # one connection for all five
        # The server goes away and another takes its port: the kept connection is dead,
        # the next mail goes on a new one.
        first.stop()
        second = Mailbox(first.port)
        second.start()
        await mailer.send(mail(5))
        assert [m["Message-ID"] for m in second.received] == ["<5@t>"]
        # A refused mail's connection is not kept: the next one opens another.
        second.refuse.append(451)
        with pytest.raises(aiosmtplib.SMTPResponseException):
            await mailer.send(mail(6))
        await mailer.send(mail(7))
        assert [m["Message-ID"] for m in second.received] == ["<5@t>", "<7@t>"]
        assert len(set(second.peers)) == 2
    finally:
        await mailer.close()
        for box in (first, second):
            if box is not None:
                with contextlib.suppress(Exception):
                    box.stop()


async def test_approve_reject_timeout_and_cancel(tenant: TenantApi, receiver: Receiver) -> None:
    await define(
        tenant,
        {"id": "gate", "trigger": {"types": ["record.upserted"], "collection": "asks"},
         "steps": [{"id": "ok", "kind": "approval", "timeout_seconds": 60},
                   {"id": "after", "kind": "http", "url": f"{receiver.base}/after"}]},
    )  # fmt: skip
    await define(
        tenant,
        {"id": "quick", "trigger": {"types": ["record.upserted"], "collection": "quick"},
         "steps": [{"id": "ok", "kind": "approval", "timeout_seconds": 0.5},
                   {"id": "after", "kind": "http", "url": f"{receiver.base}/after"}]},
    )  # fmt: skip
    for rid in ("a", "b", "c"):
        await tenant.write("PUT", f"/collections/asks/records/{rid}", json={})
    await tenant.write("PUT", "/collections/quick/records/q", json={})
    runs = await wait_run(tenant, "gate", lambda r: r["status"] == "waiting", count=3)
    a, b, c = runs
    await tenant.write("POST", f"/runs/{a['id']}/steps/ok/approve")
    await tenant.write("POST", f"/runs/{b['id']}/steps/ok/reject", json={"comment": "no stock"})
    await tenant.write("POST", f"/runs/{c['id']}/cancel", json={})
    done = {r["id"]: r for r in await wait_run(tenant, "gate", finished, count=3)}
    assert done[a["id"]]["status"] == "succeeded"
    assert done[b["id"]]["status"] == "failed"
    assert step(done[b["id"]], "ok")["error"] == "rejected: no stock"
    assert step(done[b["id"]], "after")["status"] == "skipped"
    assert done[c["id"]]["status"] == "cancelled"
    assert [s["status"] for s in done[c["id"]]["steps"]] == ["cancelled", "skipped"]
    assert len(receiver.to("/after")) == 1
    [q] = await wait_run(tenant, "quick", finished)
    assert q["status"] == "failed"
    assert step(q, "ok")["error"] == "approval timed out"
    # A finished run takes no more commands; an unknown one is a 404.
    again = await tenant.call("POST", f"/runs/{a['id']}/cancel")
    assert again.status == 409, await again.text()
    step_gone = await tenant.call("POST", f"/runs/{b['id']}/steps/ok/approve")
    assert step_gone.status == 409
    unknown = await tenant.call("POST", f"/runs/r{'0' * 24}/cancel")
    assert unknown.status == 404
    reader = await tenant.call("POST", f"/runs/{a['id']}/cancel", roles=("reader",))
    assert reader.status == 403


async def test_a_chain_of_runs_stops_at_depth_eight(tenant: TenantApi) -> None:
    # ping writes pong/x, pong writes ping/x: each run's write starts the other.
    for me, other in (("ping", "pong"), ("pong", "ping")):
        await define(
            tenant,
            {"id": me, "trigger": {"types": ["record.upserted"], "collection": me},
             "steps": [{"id": "w", "kind": "record", "op": "upsert", "collection": other,
                        "record": "x", "data": {"from": "${/trigger/id}"}}]},
        )  # fmt: skip
    await tenant.write("PUT", "/collections/ping/records/x", json={})
    deadline = asyncio.get_running_loop().time() + 60
    while True:
        runs = await runs_of(tenant, "ping") + await runs_of(tenant, "pong")
        if len(runs) >= 9 and all(finished(r) for r in runs):
            break
        assert asyncio.get_running_loop().time() < deadline, runs
        await asyncio.sleep(0.2)
    await asyncio.sleep(1.0)
    runs = await runs_of(tenant, "ping") + await runs_of(tenant, "pong")
    assert len(runs) == 9
    failed = [r for r in runs if r["status"] == "failed"]
    assert len(failed) == 1
    assert "loop protection" in failed[0]["reason"]
    assert [s["status"] for s in failed[0]["steps"]] == ["skipped"]
    assert sum(r["status"] == "succeeded" for r in runs) == 8


async def test_a_run_never_starts_its_own_workflow(tenant: TenantApi) -> None:
    await define(
        tenant,
        {"id": "self", "trigger": {"types": ["record.upserted", "record.patched"],
                                   "collection": "items"},
         "steps": [{"id": "touch", "kind": "record", "op": "patch", "collection": "items",
                    "record": "${/record/id}", "data": {"touched": True}}]},
    )  # fmt: skip
    await tenant.write("PUT", "/collections/items/records/i1", json={"n": 1})
    [run] = await wait_run(tenant, "self", finished)
    assert run["status"] == "succeeded"
    record = await wait_record(tenant, "/collections/items/records/i1", lambda r: r["version"] >= 2)
    assert record["data"] == {"n": 1, "touched": True}
    assert record["version"] == 2
    await asyncio.sleep(1.0)
    assert len(await runs_of(tenant, "self")) == 1


async def test_bad_definitions_are_422_with_a_pointer_for_every_error(tenant: TenantApi) -> None:
    bad = {
        "id": "bad",
        "trigger": {"types": ["workflow.run.started", "record.upserted", "other.thing"],
                    "collection": "orders", "when": {"total": {"between": [1, 2]}}},
        "steps": [
            {"id": "a", "kind": "teleport"},
            {"id": "b", "kind": "http", "url": "http://10.0.0.1/x",
             "body": {"v": {"$from": "/steps/c/output"}}},
            {"id": "c", "kind": "record", "op": "upsert", "collection": "orders",
             "record": "${/steps/zzz/output/id}", "if": {"/record/data/x": {"like": "y"}}},
            {"id": "d", "kind": "delay"},
        ],
    }  # fmt: skip
    resp = await tenant.call("POST", "/workflows", roles=("admin",), json=bad)
    assert resp.status == 422
    assert resp.headers["Content-Type"].startswith("application/problem+json")
    doc = await resp.json()
    paths = sorted(e["path"] for e in doc["errors"])
    assert paths == sorted([
        "/trigger/types/0", "/trigger/types/2", "/trigger/when/total/between",
        "/steps/0/kind", "/steps/1/url", "/steps/1/body/v/$from", "/steps/2/record",
        "/steps/2/if/~1record~1data~1x/like", "/steps/3/seconds",
    ]), doc  # fmt: skip
    # A writer may not define workflows; nothing was defined.
    resp = await tenant.call("POST", "/workflows", json={**bad, "steps": []})
    assert resp.status == 403
    assert (await tenant.read_json("/workflows"))["items"] == []


async def test_versions_deletion_and_tenant_isolation(api: Api, receiver: Receiver) -> None:
    a = TenantApi(api, (await api.create_tenant())["id"])
    b = TenantApi(api, (await api.create_tenant())["id"])
    wf = {"id": "w", "trigger": {"types": ["record.upserted"], "collection": "c"},
          "steps": [{"id": "s", "kind": "http", "url": f"{receiver.base}/v1"}]}  # fmt: skip
    await define(a, wf)
    await define(b, wf)  # the same id in another tenant is another workflow
    dup = await a.call("POST", "/workflows", roles=("admin",), json=wf)
    assert dup.status == 409
    await a.write("PUT", "/collections/c/records/r1", json={})
    [first] = await wait_run(a, "w", finished)
    replaced = await a.call(
        "PUT", "/workflows/w", roles=("admin",),
        json={**wf, "steps": [{"id": "s", "kind": "http", "url": f"{receiver.base}/v2"}]},
    )  # fmt: skip
    assert replaced.status == 202
    body = await replaced.json()
    assert body["version"] == 2
    current = await a.read_json("/workflows/w", body["consistency_token"])
    assert current["version"] == 2
    assert current["steps"][0]["url"].endswith("/v2")
    await a.write("PUT", "/collections/c/records/r2", json={})
    runs = await wait_run(a, "w", finished, count=2)
    assert [r["workflow_version"] for r in runs] == [2, 1]
    assert len(receiver.to("/v1")) == 1
    assert len(receiver.to("/v2")) == 1
    # b saw nothing of a's writes; a's runs are not b's to read or command.
    assert await runs_of(b, "w") == []
    cross = await b.call("GET", f"/runs/{first['id']}", roles=("reader",))
    assert cross.status == 404
    cross = await b.call("POST", f"/runs/{first['id']}/cancel")
    assert cross.status == 404
    other = await api.request("GET", f"/v1/tenants/{a.id}/workflows", tenant=b.id, roles=("admin",))
    assert other.status == 403
    deleted = await a.call("DELETE", "/workflows/w", roles=("admin",))
    assert deleted.status == 202
    token = (await deleted.json())["consistency_token"]
    gone = await a.read("/workflows/w", token)
    assert gone.status == 404
    await a.write("PUT", "/collections/c/records/r3", json={})
    await asyncio.sleep(1.0)
    assert len(await runs_of(a, "w")) == 2  # a deleted workflow starts nothing


async def test_events_before_the_workflow_and_a_replay_start_nothing(
    api: Api, tenant: TenantApi, receiver: Receiver
) -> None:
    await tenant.write("PUT", "/collections/old/records/o1", json={"x": 1})
    await define(
        tenant,
        {"id": "fresh", "trigger": {"types": ["record.upserted"], "collection": "old"},
         "steps": [{"id": "s", "kind": "http", "url": f"{receiver.base}/fresh"},
                   {"id": "r", "kind": "record", "op": "upsert", "collection": "log",
                    "record": "${/record/id}", "data": {"seen": True}}]},
    )  # fmt: skip
    await tenant.write("PUT", "/collections/old/records/o2", json={"x": 2})
    [run] = await wait_run(tenant, "fresh", finished)
    assert run["status"] == "succeeded"
    assert [c.body for c in receiver.to("/fresh")] == [None]
    before = await tenant.read_json(f"/runs/{run['id']}")
    status, doc, err = await eventfold(api.settings, "replay", "--tenant", tenant.id)
    assert status == 0, err
    status, doc, err = await eventfold(api.settings, "verify", "--tenant", tenant.id)
    assert status == 0, (doc, err)
    await asyncio.sleep(1.5)
    assert len(receiver.to("/fresh")) == 1  # the replay executed nothing
    assert await tenant.read_json(f"/runs/{run['id']}") == before
    assert len(await runs_of(tenant, "fresh")) == 1
    # verify covers the run tables: a drifted step is found, and a replay repairs it.
    conn = await asyncpg.connect(api.settings.database_url)
    try:
        await conn.execute(
            f"UPDATE {tenant_schema(tenant.id)}.run_steps SET status = 'failed' WHERE run = $1",
            run["id"],
        )
    finally:
        await conn.close()
    status, doc, err = await eventfold(api.settings, "verify", "--tenant", tenant.id)
    assert status != 0
    [report] = doc["tenants"] if isinstance(doc, dict) and "tenants" in doc else doc
    assert report["workflows_differs"] == 2, report
    assert {w["table"] for w in report["workflows"]} == {"run_steps"}
    status, doc, err = await eventfold(api.settings, "replay", "--tenant", tenant.id)
    assert status == 0, err
    assert await tenant.read_json(f"/runs/{run['id']}") == before
    assert len(receiver.to("/fresh")) == 1


async def test_the_cli_lists_workflows_and_runs_and_shows_one(
    api: Api, tenant: TenantApi, receiver: Receiver
) -> None:
    await define(
        tenant,
        {"id": "cli", "name": "From the CLI",
         "trigger": {"types": ["record.upserted"], "collection": "c"},
         "steps": [{"id": "s", "kind": "http", "url": f"{receiver.base}/cli"},
                   {"id": "gate", "kind": "approval"}]},
    )  # fmt: skip
    await tenant.write("PUT", "/collections/c/records/r1", json={})
    [run] = await wait_run(tenant, "cli", lambda r: r["status"] == "waiting")
    status, doc, err = await eventfold(api.settings, "workflows", "list", "--tenant", tenant.id)
    assert status == 0, err
    assert [(w["id"], w["version"], w["name"]) for w in doc["items"]] == [
        ("cli", 1, "From the CLI")
    ]
    status, doc, err = await eventfold(
        api.settings, "workflows", "runs", "--tenant", tenant.id, "--workflow", "cli"
    )
    assert status == 0, err
    assert [(r["id"], r["status"]) for r in doc["items"]] == [(run["id"], "waiting")]
    status, doc, err = await eventfold(api.settings, "workflows", "show", run["id"])
    assert status == 0, err
    assert [(s["id"], s["status"]) for s in doc["steps"]] == [
        ("s", "succeeded"), ("gate", "waiting")
    ]  # fmt: skip
    status, doc, err = await eventfold(api.settings, "workflows", "show", f"r{'0' * 24}")
    assert status == 1
    assert "no run" in err


async def test_a_runs_changes_arrive_on_the_sse_stream(
    api: Api, tenant: TenantApi, receiver: Receiver
) -> None:
    from tests.integration.test_stream import next_event, open_stream

    await define(
        tenant,
        {"id": "live", "trigger": {"types": ["record.upserted"], "collection": "c"},
         "steps": [{"id": "s", "kind": "http", "url": f"{receiver.base}/live"},
                   {"id": "n", "kind": "record", "op": "upsert", "collection": "other",
                    "record": "x", "data": {}}]},
    )  # fmt: skip
    resp = await open_stream(api.client, tenant, "?types=workflow.*")
    try:
        await tenant.write("PUT", "/collections/c/records/r1", json={})
        seen: list[tuple[str | None, str]] = []
        while not seen or seen[-1][0] != "workflow.run.succeeded":
            frame = await next_event(resp)
            assert frame.data is not None
            seen.append((frame.event, frame.data["data"].get("step", "")))
    finally:
        resp.close()
    assert seen == [
        ("workflow.run.started", ""), ("workflow.step.started", "s"),
        ("workflow.step.succeeded", "s"), ("workflow.step.started", "n"),
        ("workflow.step.succeeded", "n"), ("workflow.run.succeeded", ""),
    ]  # fmt: skip


async def test_one_tenants_backlog_does_not_hold_up_another(api: Api, receiver: Receiver) -> None:
    busy = TenantApi(api, (await api.create_tenant())["id"])
    quiet = TenantApi(api, (await api.create_tenant())["id"])
    receiver.delays["/slow"] = 5.0
    for t, path in ((busy, "/slow"), (quiet, "/fast")):
        await define(
            t,
            {"id": "w", "trigger": {"types": ["record.upserted"], "collection": "c"},
             "steps": [{"id": "s", "kind": "http", "url": f"{receiver.base}{path}"}]},
        )  # fmt: skip
    backlog = 300
    events = [
        {"specversion": "1.0", "id": f"e{i}", "source": "test", "type": "record.upserted",
         "subject": f"c/r{i}", "data": {"i": i}}
        for i in range(backlog)
    ]  # fmt: skip
    await busy.write("POST", "/events", json=events)
    # The busy tenant has its share of runs in flight (each call answers after 5 s) and
    # the rest of its backlog due: the quiet tenant's run goes ahead of that backlog.
    per_tenant = api.settings.workflow_per_tenant
    await receiver.wait_for(lambda: receiver.started.get("/slow", 0) >= per_tenant)
    await quiet.write("PUT", "/collections/c/records/r1", json={})
    [run] = await wait_run(quiet, "w", finished)
    assert run["status"] == "succeeded"
    assert receiver.to("/slow") == []  # not one busy call has been answered yet
    assert receiver.started["/slow"] == per_tenant  # the busy tenant kept to its share


async def test_a_tenant_from_before_workflows_gets_the_tables_with_its_first(
    api: Api, tenant: TenantApi, receiver: Receiver
) -> None:
    schema = tenant_schema(tenant.id)
    conn = await asyncpg.connect(api.settings.database_url)
    try:
        await conn.execute(
            f"DROP TABLE {schema}.workflows, {schema}.workflow_versions, {schema}.runs,"
            f" {schema}.run_steps"
        )
    finally:
        await conn.close()
    # Its writes and reads go on as before; it has no workflows.
    written = await tenant.write("PUT", "/collections/c/records/r0", json={})
    assert await tenant.read_json("/collections/c/records/r0", written["consistency_token"])
    assert (await tenant.read_json("/workflows"))["items"] == []
    assert (await tenant.read(f"/runs/r{'0' * 24}")).status == 404
    await define(
        tenant,
        {"id": "first", "trigger": {"types": ["record.upserted"], "collection": "c"},
         "steps": [{"id": "s", "kind": "http", "url": f"{receiver.base}/first"}]},
    )  # fmt: skip
    await tenant.write("PUT", "/collections/c/records/r1", json={})
    [run] = await wait_run(tenant, "first", finished)
    assert run["status"] == "succeeded"
    status, doc, err = await eventfold(api.settings, "verify", "--tenant", tenant.id)
    assert status == 0, (doc, err)


async def test_a_dead_lettered_trigger_starts_its_run_once_redriven(
    api: Api, tenant: TenantApi, receiver: Receiver, pool: asyncpg.Pool
) -> None:
    import os
    import subprocess

    from tests.integration.test_dead_letters import EVENTFOLD, install_bug

    await define(
        tenant,
        {"id": "late", "trigger": {"types": ["record.upserted"], "collection": "orders"},
         "steps": [{"id": "s", "kind": "http", "url": f"{receiver.base}/late"}]},
    )  # fmt: skip
    await install_bug(pool, tenant.id)
    dead = await tenant.write("PUT", "/collections/orders/records/p1", json={"poison": 1})
    await tenant.write("PUT", "/collections/orders/records/p2", json={"fine": 1})
    await wait_run(tenant, "late", finished)  # p2's run; p1's event is a dead letter
    # With p1's token: p2 may sit on another partition, its run done before p1 is parked.
    parked = await tenant.read_json(f"/events/{dead['event_id']}", dead["consistency_token"])
    assert parked["status"] == "pending"
    async with pool.acquire() as conn:
        await conn.execute(f"DROP TRIGGER boom ON {tenant_schema(tenant.id)}.records")
    env = {
        **os.environ,
        "EVENTFOLD_CONSUMER_GROUP_PREFIX": api.settings.consumer_group_prefix,
        "EVENTFOLD_EVENTS_TOPIC": api.settings.events_topic,
    }
    fixed = subprocess.run(
        [EVENTFOLD, "dlq", "redrive", "--tenant", tenant.id, "--json"],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    runs = await wait_run(tenant, "late", finished, count=2)
    assert {r["trigger_event"] for r in runs} >= {dead["event_id"]}
    assert len(receiver.to("/late")) == 2


async def test_an_inbox_row_that_cannot_be_taken_holds_up_no_other(
    api: Api, tenant: TenantApi, receiver: Receiver, pool: asyncpg.Pool
) -> None:
    await define(
        tenant,
        {"id": "ok", "trigger": {"types": ["record.upserted"], "collection": "c"},
         "steps": [{"id": "s", "kind": "http", "url": f"{receiver.base}/ok"}]},
    )  # fmt: skip
    # A row no processor can take (its definition's steps are not a list): it stays.
    async with pool.acquire() as conn:
        await conn.execute(
            f"INSERT INTO {tenant_schema(tenant.id)}.workflow_versions (id, version,"
            " definition, created_at) VALUES ('broken', 1, $1, now())",
            {"steps": 5},
        )
        await conn.execute(
            "INSERT INTO eventfold.workflow_inbox (key, tenant, topic, kind, workflow, version,"
            " event, record) VALUES ($1, $2, $3, 'trigger', 'broken', 1, $4, NULL)",
            f"{tenant.id}/trigger/broken/x", tenant.id, api.settings.events_topic,
            {"id": "x", "type": "record.upserted"},
        )  # fmt: skip
    await tenant.write("PUT", "/collections/c/records/r1", json={})
    [run] = await wait_run(tenant, "ok", finished)
    assert run["status"] == "succeeded"
    async with pool.acquire() as conn:
        left = await conn.fetchval(
            "SELECT count(*) FROM eventfold.workflow_inbox WHERE tenant = $1", tenant.id
        )
        await conn.execute("DELETE FROM eventfold.workflow_inbox WHERE tenant = $1", tenant.id)
    assert left == 1


async def test_two_processors_share_the_runs_and_do_each_effect_once(
    api: Api, tenant: TenantApi, receiver: Receiver, pool: asyncpg.Pool
) -> None:
    from consumers.workflows.processor import WorkflowProcessor
    from eventfold.metrics import Metrics

    # A second processor beside the session app's, on the same topic and database.
    stop = asyncio.Event()
    second = asyncio.create_task(WorkflowProcessor(api.settings, pool, Metrics()).run(stop))
    try:
        await define(
            tenant,
            {"id": "shared", "trigger": {"types": ["record.upserted"], "collection": "c"},
             "steps": [{"id": "a", "kind": "http", "url": f"{receiver.base}/a"},
                       {"id": "d", "kind": "delay", "seconds": 0.2},
                       {"id": "b", "kind": "http", "url": f"{receiver.base}/b"}]},
        )  # fmt: skip
        count = 60
        events = [
            {"specversion": "1.0", "id": f"e{i}", "source": "test", "type": "record.upserted",
             "subject": f"c/r{i}", "data": {}}
            for i in range(count)
        ]  # fmt: skip
        await tenant.write("POST", "/events", json=events)
        runs = await wait_run(tenant, "shared", finished, count=count, within=60)
    finally:
        stop.set()
        await second
    assert len(runs) == count
    assert all(r["status"] == "succeeded" for r in runs)
    for path in ("/a", "/b"):
        keys = [c.headers["Idempotency-Key"] for c in receiver.to(path)]
        assert len(keys) == count == len(set(keys)), path  # each step's effect once


async def test_runs_and_steps_are_measured(api: Api, tenant: TenantApi, receiver: Receiver) -> None:
    await define(
        tenant,
        {"id": "measured", "trigger": {"types": ["record.upserted"], "collection": "c"},
         "steps": [{"id": "s", "kind": "http", "url": f"{receiver.base}/m"},
                   {"id": "w", "kind": "delay", "seconds": 30}]},
    )  # fmt: skip
    await tenant.write("PUT", "/collections/c/records/r1", json={})
    await wait_run(tenant, "measured", lambda r: r["status"] == "waiting")
    text = ""
    for _ in range(100):  # the gauges are refreshed every few seconds
        text = await (await api.client.get("/metrics")).text()
        if "eventfold_workflow_timers_pending " in text and not re.search(
            r"^eventfold_workflow_timers_pending 0\.0$", text, re.M
        ):
            break
        await asyncio.sleep(0.1)
    assert re.search(r"^eventfold_workflow_runs_started_total [1-9]", text, re.M)
    assert 'eventfold_workflow_step_duration_seconds_count{kind="http",outcome="ok"}' in text
    assert 'eventfold_workflow_step_attempts_count{kind="http"}' in text
    assert re.search(r"^eventfold_workflow_trigger_latency_seconds_count [1-9]", text, re.M)
    assert re.search(r"^eventfold_workflow_timers_pending [1-9]", text, re.M)
    assert "eventfold_workflow_oldest_waiting_step_seconds " in text
    assert 'eventfold_processor_ready{processor="workflows"} 1.0' in text


async def test_new_runs_are_leased_to_their_processor_as_far_as_it_has_room(
    pool: asyncpg.Pool,
) -> None:
    """A processor inserts the runs it has room for leased to itself (it drives them
    without a claim); the others wait for a claim, by it or another processor. The
    inbox rows go in the same statement."""
    from consumers.workflows import store
    from tests.conftest import new_tenant_id

    tenant, topic = new_tenant_id(), f"leases-{new_tenant_id()}"

    def new(run: str, lease: float | None) -> store.NewRun:
        return store.NewRun(
            run=run, tenant=tenant, topic=topic, workflow="w", depth=1, status="running",
            state={"id": run}, pending=[], lease_seconds=lease,
        )  # fmt: skip

    try:
        async with pool.acquire() as conn, conn.transaction():
            handled = [
                await conn.fetchval(
                    "INSERT INTO eventfold.workflow_inbox (key, tenant, topic, kind, event)"
                    " VALUES ($1, $2, $3, 'trigger', '{}') RETURNING id",
                    f"{tenant}/{n}",
                    tenant,
                    topic,
                )
                for n in range(2)
            ]
            inserted = await store.insert_runs(
                conn, [new("driven", 60.0), new("waiting", None)], handled
            )
        assert [r.run for r in inserted] == ["driven", "waiting"]
        assert not await pool.fetchval(
            "SELECT count(*) FROM eventfold.workflow_inbox WHERE topic = $1", topic
        )
        claimed = await store.claim_runs(
            pool, topic, busy_tenants=[], per_tenant=10, limit=10, lease_seconds=60
        )
        assert [c.id for c in claimed] == ["waiting"]
        # Inserted again (a trigger taken twice): left as it is, not leased anew.
        async with pool.acquire() as conn:
            assert await store.insert_runs(conn, [new("driven", 60.0)]) == []
    finally:
        await pool.execute("DELETE FROM eventfold.workflow_runs WHERE topic = $1", topic)


async def test_a_claim_visits_every_tenant_with_a_claimable_run(pool: asyncpg.Pool) -> None:
    """The claim finds the tenants with a due, unleased run (skipping through the due
    index a tenant at a time), leaves out busy ones, and takes up to ``per_tenant`` each.

    Written and claimed in one transaction that is rolled back: no processor sees them.
    """
    from consumers.workflows import store
    from tests.conftest import new_tenant_id

    topic = f"claims-{new_tenant_id()}"
    a, b, c, d, e = sorted(new_tenant_id() for _ in range(5))
    rows = [  # (run, tenant, due, leased)
        ("a1", a, True, False), ("a2", a, True, False), ("a3", a, True, False),
        ("b1", b, True, False),                        # b is busy: left out
        ("c1", c, True, True), ("c2", c, False, False),  # leased; not due yet
        ("d1", d, True, True), ("d2", d, True, False),   # the first leased, the next due
        ("e1", e, True, False),
    ]  # fmt: skip
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        try:
            for run, tenant, due, leased in rows:
                await conn.execute(
                    "INSERT INTO eventfold.workflow_runs (id, tenant, topic, workflow, depth,"
                    " status, state, wake_at, lease_until) VALUES ($1, $2, $3, 'w', 1,"
                    " 'running', '{}', now() + $4 * interval '1 hour',"
                    " now() + $5 * interval '1 hour')",
                    f"{topic}-{run}", tenant, topic, 0 if due else 1, 1 if leased else -1,
                )  # fmt: skip
            claimed = await conn.fetch(store._CLAIM_RUNS, topic, [b], 2, 100, 30.0)
            taken = sorted(r["id"].removeprefix(f"{topic}-") for r in claimed)
            assert taken[:2] in (["a1", "a2"], ["a1", "a3"], ["a2", "a3"])
            assert taken[2:] == ["d2", "e1"]
            # Each tenant's share is ``per_tenant`` (2), whatever order the tenants came in.
            again = await conn.fetch(store._CLAIM_RUNS, topic, [b], 2, 100, 30.0)
            assert sorted(r["id"].removeprefix(f"{topic}-") for r in again) == sorted(
                {"a1", "a2", "a3"} - set(taken[:2])
            )
        finally:
            await tx.rollback()


async def test_a_run_that_finished_with_its_events_unpublished_is_claimed_for_them(
    pool: asyncpg.Pool,
) -> None:
    """A processor killed between writing a run's last transition (finished: no timer)
    and publishing its events: once the lease is out the run is due, so another claims
    it and publishes them; released, it is due no more."""
    from consumers.workflows import store
    from tests.conftest import new_tenant_id

    tenant, topic = new_tenant_id(), f"unpublished-{new_tenant_id()}"
    run = f"{topic}-r"
    events = [{"type": "workflow.run.succeeded", "id": f"{run}:succeeded"}]
    try:
        async with pool.acquire() as conn:
            await store.insert_runs(conn, [store.NewRun(
                run=run, tenant=tenant, topic=topic, workflow="w", depth=1, status="running",
                state={"id": run}, pending=[], lease_seconds=60.0,
            )])  # fmt: skip
        # The last transition, written under a lease that has run out (the writer died).
        rev = await store.save(pool, store.Save(
            run, 0, status="succeeded", state={"id": run, "status": "succeeded"},
            pending=events, wake_at=None, lease_seconds=-1.0,
        ))  # fmt: skip
        assert rev is not None

        async def claim() -> list[store.Claimed]:
            return await store.claim_runs(
                pool, topic, busy_tenants=[], per_tenant=10, limit=10, lease_seconds=60
            )

        [claimed] = await claim()
        assert (claimed.id, claimed.pending) == (run, events)
        # Published and released: its timer is the state's again (none, finished).
        assert await store.release(pool, store.Release(run, claimed.rev, None))
        assert await claim() == []
        # The batched statements do the same.
        [rev] = await store.save_many(pool, [store.Save(
            run, claimed.rev, status="succeeded", state={"id": run}, pending=events,
            wake_at=None, lease_seconds=-1.0,
        )])  # fmt: skip
        assert rev is not None
        [again] = await claim()
        assert again.pending == events
        assert await store.release_many(pool, [store.Release(run, again.rev, None)]) == [True]
        assert await pool.fetchval("SELECT wake_at FROM eventfold.workflow_runs WHERE id = $1",
                                   run) is None  # fmt: skip
    finally:
        await pool.execute("DELETE FROM eventfold.workflow_runs WHERE topic = $1", topic)

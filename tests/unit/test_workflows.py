"""Workflow kernel: conditions, references, definition errors, the run state machine, ids."""

from __future__ import annotations

from typing import Any

import pytest

from eventfold.egress import AllowList
from eventfold.errors import ValidationFailed
from eventfold.workflows import ids, machine
from eventfold.workflows.conditions import check, holds
from eventfold.workflows.context import MISSING, render, resolve_pointer
from eventfold.workflows.definition import parse
from eventfold.workflows.machine import Result

RECORD = {"id": "o1", "collection": "orders", "version": 3,
          "data": {"status": "paid", "total": 150, "tags": ["a"], "a/b": {"~x": 1}}}  # fmt: skip


@pytest.mark.parametrize(
    ("conditions", "expected"),
    [
        ({"status": {"eq": "paid"}}, True),
        ({"status": {"eq": "paid"}, "total": {"gte": 100}}, True),
        ({"total": {"gt": 150}}, False),
        ({"total": {"lte": 150.0}}, True),
        ({"total": {"lt": "200"}}, False),  # a number never compares with a string
        ({"status": {"ne": "new"}}, True),
        ({"missing": {"ne": "x"}}, True),
        ({"missing": {"eq": None}}, False),
        ({"missing": {"exists": False}}, True),
        ({"status": {"exists": True}}, True),
        ({"status": {"in": ["paid", "shipped"]}}, True),
        ({"total": {"in": [150.0]}}, True),
        ({"/tags/0": {"eq": "a"}}, True),
        ({"/a~1b/~0x": {"eq": 1}}, True),
        ({"total": {"gte": 100, "lt": 150}}, False),
    ],
)
def test_when_conditions(conditions: dict[str, Any], expected: bool) -> None:
    assert check(conditions, "/when", pointers_only=False) == []
    assert holds(conditions, RECORD, data="/data") is expected


def test_bool_is_not_a_number_in_conditions() -> None:
    doc = {"data": {"flag": True, "n": 1}}
    assert not holds({"flag": {"eq": 1}}, doc, data="/data")
    assert not holds({"n": {"eq": True}}, doc, data="/data")
    assert holds({"flag": {"eq": True}}, doc, data="/data")


def test_condition_errors_name_their_place() -> None:
    errors = check({"a": {"like": 1}, "b": {"in": 3}, "c": 5, "d": {"gt": [1]}}, "/w",
                   pointers_only=False)  # fmt: skip
    assert [e.path for e in errors] == ["/w/a/like", "/w/b/in", "/w/c", "/w/d/gt"]
    assert [e.path for e in check({"total": {"eq": 1}}, "/if", pointers_only=True)] == ["/if/total"]


def test_references_render_typed_values_and_text() -> None:
    context = {"record": RECORD, "steps": {"crm": {"output": {"id": 7, "n": None}}}}
    template = {
        "n": {"$from": "/steps/crm/output/id"},
        "s": "order ${/record/id} for ${/record/data/total} ${/steps/crm/output/n}|${/nope}",
        "list": [{"$from": "/record/data/tags"}],
        "missing": {"$from": "/record/data/nope"},
        "two": {"$from": "/x", "other": 1},
    }
    assert render(template, context) == {
        "n": 7,
        "s": "order o1 for 150 |",
        "list": [["a"]],
        "missing": None,
        "two": {"$from": "/x", "other": 1},
    }
    assert resolve_pointer(RECORD, "/data/tags/1") is MISSING
    assert resolve_pointer(RECORD, "/data/tags/01") is MISSING
    assert resolve_pointer(RECORD, "data") is MISSING


def _definition(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": "w",
        "trigger": {"types": ["record.upserted"], "collection": "orders"},
        "steps": [{"id": "a", "kind": "http", "url": "https://example.com/a"}],
    }
    doc.update(over)
    return doc


def test_a_good_definition_is_parsed_with_defaults() -> None:
    d = parse(_definition(), AllowList.parse(()))
    doc = d.document()
    assert doc["enabled"] is True
    assert doc["name"] == ""
    assert doc["steps"][0]["method"] == "POST"
    assert doc["steps"][0]["retry"] == {"max_attempts": 3, "backoff_seconds": 1.0}
    assert doc["steps"][0]["if"] is None


def test_every_definition_error_has_a_pointer() -> None:
    bad = _definition(
        trigger={"types": ["workflow.run.started"], "collection": "Bad!", "when": []},
        steps=[
            {"id": "a", "kind": "http", "url": "http://127.0.0.1/x", "retry": {"max_attempts": 0}},
            {"id": "a", "kind": "delay", "seconds": 1, "if": {"/steps/b/output": {"eq": 1}}},
            {"id": "b", "kind": "email", "to": [], "subject": "${/steps/b/output}", "text": ""},
            "nope",
        ],
    )
    with pytest.raises(ValidationFailed) as caught:
        parse(bad, AllowList.parse(()))
    paths = sorted(e.path for e in caught.value.errors)
    assert paths == sorted([
        "/trigger/types/0", "/trigger/collection", "/trigger/when",
        "/steps/0/url", "/steps/0/retry/max_attempts", "/steps/1/id",
        "/steps/1/if/~1steps~1b~1output", "/steps/2/to", "/steps/2/subject", "/steps/3",
    ])  # fmt: skip


def test_an_allowed_host_and_a_templated_url_pass_the_ssrf_check() -> None:
    local = _definition(steps=[{"id": "a", "kind": "http", "url": "http://127.0.0.1:9/x"}])
    parse(local, AllowList.parse(("127.0.0.1",)))
    templated = _definition(steps=[{"id": "a", "kind": "http", "url": "${/record/data/url}"}])
    parse(templated, AllowList.parse(()))


def _start(steps: list[dict[str, Any]], depth: int = 1) -> machine.Transition:
    return machine.start(
        run="r" + "0" * 24, tenant="acme", workflow="w", version=1, steps=steps,
        trigger={"id": "e1", "time": "2026-01-01T00:00:00Z"}, record=RECORD, depth=depth,
        now=1000.0,
    )  # fmt: skip


def _types(t: machine.Transition) -> list[str]:
    return [e.type for e in t.events]


def test_a_run_goes_through_effects_delays_and_approvals() -> None:
    steps = [
        {"id": "h", "kind": "http", "url": "x", "retry": {"max_attempts": 2, "backoff_seconds": 1}},
        {"id": "d", "kind": "delay", "seconds": 5},
        {"id": "skip", "kind": "http", "url": "x", "if": {"/record/data/total": {"gt": 1000}}},
        {"id": "ok", "kind": "approval", "timeout_seconds": 60},
    ]
    t = _start(steps)
    assert _types(t) == ["workflow.run.started", "workflow.step.started"]
    state = t.state
    effect = machine.next_effect(state, 1000.0)
    assert effect is not None
    assert effect.attempt == 1
    assert effect.spec["url"] == "x"
    t = machine.on_result(state, Result(ok=False, error="HTTP 503", retriable=True), 1001.0)
    assert _types(t) == ["workflow.step.retrying"]
    assert state.wake_at == 1002.0
    assert machine.next_effect(state, 1001.5) is None  # the pause
    effect = machine.next_effect(state, 1002.0)
    assert effect is not None
    assert effect.attempt == 2
    t = machine.on_result(state, Result(ok=True, output={"id": 1}), 1002.5)
    assert _types(t) == ["workflow.step.succeeded", "workflow.step.waiting"]
    assert state.status == "waiting"
    assert state.wake_at == 1007.5
    assert not machine.timer_due(state, 1007.0)
    t = machine.on_timer(state, 1007.6)
    assert _types(t) == [
        "workflow.step.succeeded",
        "workflow.step.skipped",
        "workflow.step.waiting",
    ]
    assert state.wake_at == 1067.6
    assert machine.on_signal(state, "approve", "nope", None, 1010.0) is None
    t = machine.on_signal(state, "approve", "ok", "fine", 1010.0)
    assert t is not None
    assert _types(t) == ["workflow.step.succeeded", "workflow.run.succeeded"]
    assert state.finished
    assert state.context["steps"]["h"]["output"] == {"id": 1}
    assert machine.on_signal(state, "cancel", None, None, 1011.0) is None
    assert machine.RunState.from_json(state.to_json()) == state


def test_a_failed_step_skips_the_rest_and_cancel_cancels_the_current() -> None:
    steps = [{"id": "h", "kind": "http", "url": "x"}, {"id": "z", "kind": "delay", "seconds": 1}]
    t = _start(steps)
    t = machine.on_result(t.state, Result(ok=False, error="HTTP 400"), 1001.0)
    assert _types(t) == ["workflow.step.failed", "workflow.step.skipped", "workflow.run.failed"]
    assert t.state.reason == "step h failed: HTTP 400"
    t = _start([{"id": "ok", "kind": "approval"}, {"id": "z", "kind": "delay", "seconds": 1}])
    assert t.state.wake_at is None  # no timeout: only a command moves it
    c = machine.on_signal(t.state, "cancel", None, None, 1001.0)
    assert c is not None
    assert _types(c) == [
        "workflow.step.cancelled",
        "workflow.step.skipped",
        "workflow.run.cancelled",
    ]
    assert [p.status for p in c.state.progress] == ["cancelled", "skipped"]


def test_retries_stop_at_max_attempts_and_approvals_time_out() -> None:
    t = _start([{"id": "h", "kind": "email", "to": ["a"], "subject": "", "text": "",
                 "retry": {"max_attempts": 1, "backoff_seconds": 1}}])  # fmt: skip
    t = machine.on_result(t.state, Result(ok=False, error="SMTP 451", retriable=True), 1001.0)
    assert t.state.status == "failed"
    assert t.state.progress[0].attempts == 1
    t = _start([{"id": "ok", "kind": "approval", "timeout_seconds": 5}])
    assert machine.timer_due(t.state, 1005.0)
    t = machine.on_timer(t.state, 1005.0)
    assert t.state.progress[0].error == "approval timed out"
    assert t.state.status == "failed"


def test_a_run_past_the_depth_limit_fails_at_once() -> None:
    t = _start([{"id": "h", "kind": "http", "url": "x"}], depth=machine.MAX_DEPTH + 1)
    assert _types(t) == ["workflow.run.started", "workflow.step.skipped", "workflow.run.failed"]
    assert "loop protection" in (t.state.reason or "")
    assert _start([{"id": "h", "kind": "http", "url": "x"}], depth=8).state.status == "running"


def test_ids_are_fixed_by_what_caused_them() -> None:
    run = ids.run_id("acme", "w", "e1")
    assert run == ids.run_id("acme", "w", "e1") != ids.run_id("acme", "w", "e2")
    assert run != ids.run_id("other", "w", "e1")
    assert ids.idempotency_key(run, "s") == f"{run}:s"
    assert ids.message_id(run, "s") == f"<{run}.s@workflows.eventfold>"
    t = _start([{"id": "h", "kind": "http", "url": "x"}])
    again = _start([{"id": "h", "kind": "http", "url": "x"}])
    assert [e.id for e in t.events] == [e.id for e in again.events]


def test_headers_are_sealed_and_a_sealed_value_is_never_taken_from_a_client() -> None:
    from eventfold.workflows.definition import seal_headers, served

    step = {"id": "a", "kind": "http", "url": "https://example.com/a",
            "headers": {"Authorization": "Bearer x"}}  # fmt: skip
    d = seal_headers(parse(_definition(steps=[step]), AllowList.parse(())), lambda b: "S" + b.hex())
    doc = d.document()
    assert doc["steps"][0]["headers"] == {"Authorization": "(sealed)"}
    assert doc["steps"][0]["headers_sealed"].startswith("S")
    assert "headers_sealed" not in served(doc)["steps"][0]
    with pytest.raises(ValidationFailed) as caught:
        parse(_definition(steps=[{**step, "headers_sealed": "forged"}]), AllowList.parse(()))
    assert [e.path for e in caught.value.errors] == ["/steps/0/headers_sealed"]

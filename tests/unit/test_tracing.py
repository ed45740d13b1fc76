"""eventfold.tracing: off by default and free then; W3C context into events and back out."""

from __future__ import annotations

import subprocess
import sys

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from eventfold import tracing
from eventfold.envelope import CloudEvent

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
OTHER = "00-11111111111111111111111111111111-2222222222222222-01"


def event(n: int, **extensions: str) -> CloudEvent:
    return CloudEvent.model_validate(
        {"specversion": "1.0", "id": f"e{n}", "source": "t", "type": "record.upserted",
         "subject": f"c/{n}", **extensions}
    )  # fmt: skip


def only(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    (found,) = [s for s in exporter.get_finished_spans() if s.name == name]
    return found


def test_off_unless_an_exporter_is_named() -> None:
    assert not tracing.enabled()
    for env in (
        {},
        {"OTEL_TRACES_EXPORTER": "none"},
        {"OTEL_TRACES_EXPORTER": " "},
        {"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "TRUE"},
    ):
        assert tracing.configure("eventfold-x", env) is False, env
        assert not tracing.enabled()


def test_an_exporter_turns_it_on_with_the_default_service_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    try:
        assert tracing.configure("eventfold-projector", {"OTEL_TRACES_EXPORTER": "console"})
        assert tracing.enabled()
        assert tracing._provider is not None
        assert tracing._provider.resource.attributes["service.name"] == "eventfold-projector"
    finally:
        tracing.shutdown()
    assert not tracing.enabled()
    monkeypatch.setenv("OTEL_SERVICE_NAME", "mine")
    try:
        assert tracing.configure("eventfold-projector", {"OTEL_TRACES_EXPORTER": "console"})
        assert tracing._provider is not None
        assert tracing._provider.resource.attributes["service.name"] == "mine"
    finally:
        tracing.shutdown()


def test_an_exporter_that_is_not_installed_is_one_clear_line() -> None:
    with pytest.raises(tracing.TracingError, match=r"eventfold\[otlp\]"):
        tracing.configure("x", {"OTEL_TRACES_EXPORTER": "otlp"})
    with pytest.raises(tracing.TracingError, match="opentelemetry-exporter-otlp-proto-grpc"):
        tracing.configure(
            "x", {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
        )
    with pytest.raises(tracing.TracingError, match="'zipkin'"):
        tracing.configure("x", {"OTEL_TRACES_EXPORTER": "zipkin"})
    assert not tracing.enabled()


def test_off_nothing_is_imported_or_made() -> None:
    """Zero cost when off: every helper returns at once, without loading OpenTelemetry
    (redis-py loads part of it by itself when it is installed, so this runs alone)."""
    code = """
import sys
from eventfold import tracing
from eventfold.envelope import CloudEvent
ev = CloudEvent.model_validate({"specversion": "1.0", "id": "e", "source": "s", "type": "t"})
with tracing.span("x", parent={"traceparent": "p"}) as s:
    assert s is None
with tracing.batch_span("b", iter(())) as s:
    assert s is None
assert tracing.stamped([ev]) == [ev]
assert tracing.kafka_headers(ev) == [] and tracing.current_carrier() == {}
assert tracing.json_carrier(b"{}") is None and tracing.headers_carrier([]) is None
print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_published_events_carry_the_publish_span_but_keep_their_own(
    span_exporter: InMemorySpanExporter,
) -> None:
    with tracing.span("publish", kind="producer", parent={"traceparent": PARENT}) as current:
        assert current is not None
        fresh, own = tracing.stamped([event(1), event(2, traceparent=OTHER)])
    publish = only(span_exporter, "publish")
    assert publish.parent is not None
    assert publish.parent.span_id == int(PARENT[36:52], 16)
    expected = f"00-{publish.context.trace_id:032x}-{publish.context.span_id:016x}-01"
    assert fresh.model_extra == {"traceparent": expected}
    assert fresh.to_dict()["traceparent"] == expected  # in the envelope, as the extension
    assert tracing.kafka_headers(fresh) == [("traceparent", expected.encode())]
    assert own.model_extra == {"traceparent": OTHER}  # the client's own trace
    assert tracing.event_carrier(own) == {"traceparent": OTHER}
    assert tracing.json_carrier(fresh.to_json()) == {"traceparent": expected}
    assert tracing.headers_carrier([("traceparent", OTHER.encode())]) == {"traceparent": OTHER}


def test_a_batch_of_one_trace_is_its_child_and_of_many_its_own_root(
    span_exporter: InMemorySpanExporter,
) -> None:
    one = [{"traceparent": PARENT}, None, {"traceparent": PARENT}]
    with tracing.batch_span("one", one):
        pass
    with tracing.batch_span("many", [{"traceparent": PARENT}, {"traceparent": OTHER}]):
        pass
    single, mixed = only(span_exporter, "one"), only(span_exporter, "many")
    assert single.context.trace_id == int(PARENT[3:35], 16)
    assert single.parent is not None
    assert single.parent.span_id == int(PARENT[36:52], 16)
    assert [link.context.span_id for link in single.links] == [int(PARENT[36:52], 16)]
    assert single.attributes is not None
    assert single.attributes["messaging.batch.message_count"] == 2
    assert mixed.parent is None
    assert mixed.context.trace_id not in {int(PARENT[3:35], 16), int(OTHER[3:35], 16)}
    assert len(mixed.links) == 2

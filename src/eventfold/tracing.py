"""Tracing with OpenTelemetry: one trace from an HTTP request, through Kafka, to every processor.

Off unless the standard variables turn it on: ``OTEL_TRACES_EXPORTER`` naming an
exporter (``otlp``, ``console``, or any installed ``opentelemetry_traces_exporter``
entry point; unset or ``none``: off) and ``OTEL_SDK_DISABLED`` not ``true``. The
rest is the SDK's own reading of the standard variables: ``OTEL_SERVICE_NAME`` and
``OTEL_RESOURCE_ATTRIBUTES`` (the service name defaults to ``eventfold-<part>``),
``OTEL_TRACES_SAMPLER`` / ``_ARG``, ``OTEL_BSP_*`` (the batch span processor) and
``OTEL_EXPORTER_OTLP_*`` (endpoint, headers, protocol: ``otlp`` is
``http/protobuf`` unless it says ``grpc``). Off, every helper here returns at its
first line and no OpenTelemetry module is even imported: the cost is one test
of a module global per request, publish, batch or delivery.

How the trace context travels (W3C Trace Context, CONTRACT "Operations"):

- An HTTP request's ``traceparent``/``tracestate`` headers are the parent of its
  server span (:func:`server_span`, the middleware in :mod:`eventfold.web`).
- Publishing (:mod:`eventfold.publisher`) is a producer span; each event it
  publishes carries that span's context as the CloudEvents distributed-tracing
  extension attributes ``traceparent`` (and ``tracestate``), unless the client
  set them already, and the same values as Kafka record headers (:func:`stamped`,
  :func:`kafka_headers`).
- A processor picks the context up from the envelope or the Kafka headers. A batch
  (the projector's, the cache refresh) is one span linking every event's context,
  and a child of it when the whole batch belongs to one trace (:func:`batch_span`);
  a webhook delivery is a child of its event's context and sends its own context
  to the receiver as a ``traceparent`` header; an integration poll starts a trace,
  which the events it publishes carry on.
- A workflow step is a child of its run's trigger event's context (the run keeps
  the trigger event): an effect (``http``, ``record``, ``email``) is a span around
  each attempt, an ``http`` step sends its context on as a ``traceparent`` header and
  a ``record`` step's publish is its child; a wait (``delay``, ``approval``) is one
  span from the step's start to its end, recorded when it ends (:func:`past_span`);
  the run's own events are published in the trigger's context (:func:`within`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Literal

import orjson

from eventfold.envelope import CloudEvent
from eventfold.errors import PermanentError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
#: A batch span links at most this many event contexts (the first ones of the batch).
MAX_LINKS = 128
#: ``kind`` of :func:`span`: OpenTelemetry's SpanKind by name.
Kind = Literal["internal", "server", "client", "producer", "consumer"]
#: Where the exporters ``otlp`` may mean come from.
_PACKAGES = {
    "otlp_proto_http": "opentelemetry-exporter-otlp-proto-http (pip install 'eventfold[otlp]')",
    "otlp_proto_grpc": "opentelemetry-exporter-otlp-proto-grpc",
}
#: A W3C carrier: ``{"traceparent": ..., "tracestate"?: ...}``.
Carrier = Mapping[str, str]

#: The tracer while tracing is on; None when off (the only thing the helpers test).
_tracer: Tracer | None = None
_provider: TracerProvider | None = None
#: The OpenTelemetry API's pieces, imported by :func:`enable` (never while off).
_otel: Any = None


class TracingError(PermanentError):
    """The OTEL_* variables ask for tracing this process cannot do; ``str()`` is one line."""


def enabled() -> bool:
    """Whether spans are made and trace context is carried on."""
    return _tracer is not None


def configure(service: str, env: Mapping[str, str] | None = None) -> bool:
    """Turn tracing on if the OTEL_* variables of ``env`` (default: the process's) ask for
    it; ``service`` is the default ``service.name``. Returns whether it is on.

    Raises :class:`TracingError` for an exporter that is not installed.
    """
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    names = [n.strip() for n in env.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    names = [n for n in names if n != "none"]
    if not names:
        return False
    # deferred: the SDK is imported only by a process that traces (zero cost when off)
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    exporters = [_exporter(name, env) for name in names]
    # From OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; our name only if they give none.
    resource = Resource.create()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": service}))
    provider = TracerProvider(resource=resource)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    enable(provider)
    return True


def _exporter(name: str, env: Mapping[str, str]) -> Any:
    """The span exporter registered as ``name`` (``otlp``: by its protocol)."""
    entry = name
    if name == "otlp":
        protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get(
            "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
        )
        entry = "otlp_proto_grpc" if protocol.strip() == "grpc" else "otlp_proto_http"
    found = entry_points(group="opentelemetry_traces_exporter", name=entry)
    if not found:
        package = _PACKAGES.get(entry, f"the package registering the exporter {entry!r}")
        raise TracingError(
            f"OTEL_TRACES_EXPORTER: no exporter {name!r} is installed; install {package}"
        )
    return next(iter(found)).load()()


class _Otel:
    """The OpenTelemetry API pieces the helpers use, imported once tracing is on."""

    def __init__(self) -> None:
        # deferred: the API is imported only by a process that traces (zero cost when off)
        from opentelemetry import context, trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.propagator = TraceContextTextMapPropagator()
        self.context = context
        self.trace = trace
        self.empty_context = context.Context


def enable(provider: TracerProvider) -> None:
    """Trace with ``provider`` from now on (:func:`configure` does; tests hand their own)."""
    global _tracer, _provider, _otel
    _otel = _otel or _Otel()
    _provider = provider
    _tracer = provider.get_tracer("eventfold")


def shutdown() -> None:
    """Export what is pending and turn tracing off (at the end of a process or a test)."""
    global _tracer, _provider
    provider, _tracer, _provider = _provider, None, None
    if provider is not None:
        provider.shutdown()


# -- spans --------------------------------------------------------------------------


def span(
    name: str,
    *,
    kind: Kind = "internal",
    parent: Carrier | None = None,
    attributes: Mapping[str, Any] | None = None,
) -> contextlib.AbstractContextManager[Span | None]:
    """A span, current within the block; its parent is ``parent``'s context if given
    (a carrier), else the current span. Yields None when tracing is off."""
    tracer = _tracer
    if tracer is None:
        return contextlib.nullcontext()
    return tracer.start_as_current_span(
        name,
        context=_extract(parent) if parent is not None else None,
        kind=_kind(kind),
        attributes=dict(attributes) if attributes else None,
    )


def batch_span(
    name: str,
    carriers: Iterable[Carrier | None],
    *,
    kind: Kind = "consumer",
    attributes: Mapping[str, Any] | None = None,
) -> contextlib.AbstractContextManager[Span | None]:
    """A span for a batch of events: linked to each event's context (``carriers``, one
    per event, None for an event without one; read only while tracing is on), and a
    child of them when they all belong to one trace, so a lone write's batch shows in
    its trace; a batch of many traces starts its own and is found through its links."""
    tracer = _tracer
    if tracer is None:
        return contextlib.nullcontext()
    trace = _otel.trace
    contexts = []
    for carrier in carriers:
        if carrier is None:
            continue
        context = trace.get_current_span(_extract(carrier)).get_span_context()
        if context.is_valid:
            contexts.append(context)
    one_trace = len({c.trace_id for c in contexts}) == 1
    return tracer.start_as_current_span(
        name,
        # Without one parent, a context without a span: the batch starts its own trace.
        context=(
            trace.set_span_in_context(trace.NonRecordingSpan(contexts[0]))
            if one_trace
            else _otel.empty_context()
        ),
        kind=_kind(kind),
        links=[trace.Link(c) for c in _distinct(contexts)[:MAX_LINKS]],
        attributes={**(attributes or {}), "messaging.batch.message_count": len(contexts)},
    )


@contextlib.contextmanager
def within(parent: Carrier | None) -> Iterator[None]:
    """Run the block in ``parent``'s context, without a span of its own: the spans it
    starts (a publish) are children of ``parent``. Nothing when off or without one."""
    if _tracer is None or parent is None:
        yield
        return
    token = _otel.context.attach(_extract(parent))
    try:
        yield
    finally:
        _otel.context.detach(token)


def past_span(
    name: str,
    *,
    start: float,
    end: float,
    parent: Carrier | None = None,
    attributes: Mapping[str, Any] | None = None,
    error: str | None = None,
) -> None:
    """Record a span that has already happened: from ``start`` to ``end`` (epoch
    seconds), a child of ``parent``'s context, failed with ``error`` if given (a wait
    that may outlive the process that began it, recorded by the one that ends it)."""
    tracer = _tracer
    if tracer is None:
        return
    ended = tracer.start_span(
        name,
        context=_extract(parent) if parent is not None else None,
        attributes=dict(attributes) if attributes else None,
        start_time=int(start * 1e9),
    )
    if error is not None:
        failed(ended, error)
    ended.end(end_time=int(max(end, start) * 1e9))


def server_span(
    headers: Carrier, name: str, attributes: Mapping[str, Any]
) -> contextlib.AbstractContextManager[Span | None]:
    """The server span of an HTTP request, a child of its ``traceparent`` header if any."""
    return span(name, kind="server", parent=headers, attributes=attributes)


def set_attributes(current: Span | None, attributes: Mapping[str, Any]) -> None:
    """Add ``attributes`` (None values skipped) to ``current`` (nothing when tracing is off)."""
    if current is not None:
        current.set_attributes({k: v for k, v in attributes.items() if v is not None})


def failed(current: Span | None, description: str) -> None:
    """Mark ``current`` as failed with ``description`` (an answer, not an exception)."""
    if current is not None and _otel is not None:
        current.set_status(_otel.trace.Status(_otel.trace.StatusCode.ERROR, description))


# -- carrying the context -------------------------------------------------------------


def current_carrier() -> dict[str, str]:
    """The current span's context as W3C headers (empty when off or without a span)."""
    if _tracer is None:
        return {}
    carrier: dict[str, str] = {}
    _otel.propagator.inject(carrier)
    return carrier


def stamped(events: Sequence[CloudEvent]) -> Sequence[CloudEvent]:
    """``events`` carrying the current context as their ``traceparent``/``tracestate``
    extension attributes, but those a client set itself (its trace is the event's)."""
    carrier = current_carrier()
    if not carrier:
        return events
    return [
        ev if TRACEPARENT in (ev.model_extra or {}) else ev.model_copy(update=carrier)
        for ev in events
    ]


def event_carrier(event: CloudEvent | None) -> dict[str, str] | None:
    """The trace context an event carries (its extension attributes), None without one."""
    if _tracer is None or event is None:
        return None
    return _pick(event.model_extra or {})


def json_carrier(envelope: bytes) -> dict[str, str] | None:
    """The trace context of an envelope in its JSON form (a webhook body, a log value)."""
    if _tracer is None:
        return None
    try:
        doc = orjson.loads(envelope)
    except orjson.JSONDecodeError:
        return None
    return _pick(doc) if isinstance(doc, dict) else None


def doc_carrier(doc: Mapping[str, Any] | None) -> dict[str, str] | None:
    """The trace context of an envelope as a dict (a stored trigger event), None without one."""
    if _tracer is None or doc is None:
        return None
    return _pick(doc)


def kafka_headers(event: CloudEvent) -> list[tuple[str, bytes]]:
    """An event's trace context as Kafka record headers (none when off or without one)."""
    carrier = event_carrier(event)
    return [(k, v.encode()) for k, v in carrier.items()] if carrier else []


def headers_carrier(headers: Sequence[tuple[str, bytes]] | None) -> dict[str, str] | None:
    """The trace context in Kafka record headers, None without one (or when off)."""
    if _tracer is None or not headers:
        return None
    found = {k: v.decode(errors="replace") for k, v in headers if k in (TRACEPARENT, TRACESTATE)}
    return found if TRACEPARENT in found else None


def _pick(doc: Mapping[str, Any]) -> dict[str, str] | None:
    parent = doc.get(TRACEPARENT)
    if not isinstance(parent, str):
        return None
    carrier = {TRACEPARENT: parent}
    state = doc.get(TRACESTATE)
    if isinstance(state, str):
        carrier[TRACESTATE] = state
    return carrier


def _extract(carrier: Carrier) -> Any:
    return _otel.propagator.extract(carrier)


def _distinct(contexts: Iterable[Any]) -> list[Any]:
    seen: set[tuple[int, int]] = set()
    out = []
    for c in contexts:
        key = (c.trace_id, c.span_id)
        if key not in seen:
            seen.add(key)
            out.append(c)
    return out


def _kind(kind: Kind) -> Any:
    return _otel.trace.SpanKind[kind.upper()]

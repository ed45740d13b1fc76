"""Prometheus metrics, all in one object bound to the registry passed in.

Labels never carry tenant ids (unbounded); routes are the route templates. The one
exception is :class:`TopTenants`: a tenant label on at most ``size`` series, the
busiest tenants of the last window, replaced every window.

``infra/prometheus`` (alert rules) and ``infra/grafana`` (dashboards) query these
names; ``tests/unit/test_monitoring.py`` fails when one of them is not registered here.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
#: Tenants exported by each :class:`TopTenants` metric (per process).
TOP_TENANTS = 10
#: Seconds of activity each :class:`TopTenants` publication covers (at least).
TOP_TENANTS_WINDOW = 60.0


class Metrics:
    """Every metric an Eventfold process exports."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.http_requests = Histogram(
            "eventfold_http_request_duration_seconds",
            "HTTP request latency by route template, method and status.",
            ["route", "method", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.http_requests_shed = Counter(
            "eventfold_http_requests_shed_total",
            "Requests answered 503 at once: the process had its limit of requests in flight.",
            registry=r,
        )
        self.events_published = Counter(
            "eventfold_events_published_total",
            "Events acknowledged by Kafka (acks=all) from the ingest gateway.",
            ["type"],
            registry=r,
        )
        self.sync_pages = Counter(
            "eventfold_sync_pages_total",
            "Third-party pages (polled or webhook) whose events Kafka acknowledged.",
            ["kind"],
            registry=r,
        )
        self.sync_items = Counter(
            "eventfold_sync_items_total",
            "Third-party items published as record events.",
            ["kind"],
            registry=r,
        )
        self.sync_errors = Counter(
            "eventfold_sync_errors_total",
            "Failed sync runs by connector kind and reason.",
            ["kind", "reason"],
            registry=r,
        )
        self.sync_state = Counter(
            "eventfold_sync_state_transitions_total",
            "Integrations entering a state (ok, backing_off, circuit_open, paused).",
            ["kind", "state"],
            registry=r,
        )
        self.events_duplicate = Counter(
            "eventfold_events_duplicate_total",
            "Events the gateway recognised as already published and did not publish again.",
            registry=r,
        )
        self.projector_events = Counter(
            "eventfold_projector_events_total",
            "Events seen by the projector, by outcome (applied, rejected, duplicate, parked: set"
            " aside as dead letters).",
            ["outcome"],
            registry=r,
        )
        self.projector_parked = Gauge(
            "eventfold_projector_parked",
            "The projector's dead letters (failed, or waiting behind one; the name is older).",
            registry=r,
        )
        self.projection_outdated = Gauge(
            "eventfold_projection_outdated_tenants",
            "Tenant schemas built by another projection version (eventfold replay --outdated).",
            registry=r,
        )
        self.dlq_size = Gauge(
            "eventfold_dlq_size",
            "A processor's dead letters: events that failed, or wait behind one in order.",
            ["processor"],
            registry=r,
        )
        self.projector_batch_seconds = Histogram(
            "eventfold_projector_batch_seconds",
            "Time to fold one batch and commit it with its checkpoints.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.consumer_lag = Gauge(
            "eventfold_consumer_lag",
            "Records between a processor's position and the partition's end.",
            ["processor", "partition"],
            registry=r,
        )
        self.analytics_events = Counter(
            "eventfold_analytics_events_total",
            "Events the analytics processor saw, by outcome "
            "(counted, duplicate, replay, late, invalid).",
            ["outcome"],
            registry=r,
        )
        self.analytics_table_keys = Gauge(
            "eventfold_analytics_table_keys",
            "Keys in the analytics processor's faust tables on this worker.",
            ["table"],
            registry=r,
        )
        self.analytics_pruned = Counter(
            "eventfold_analytics_pruned_keys_total",
            "Keys of settled windows (and expired seen ids) pruned from the analytics tables.",
            registry=r,
        )
        self.analytics_lag_seconds = Gauge(
            "eventfold_analytics_lag_seconds",
            "Seconds from the newest counted event's log timestamp to its count being readable.",
            registry=r,
        )
        self.archive_lag = Gauge(
            "eventfold_archive_lag",
            "Records of a partition not yet durably archived in S3.",
            ["partition"],
            registry=r,
        )
        self.projection_lag_seconds = Gauge(
            "eventfold_projection_lag_seconds",
            "Age of the newest event the projector has committed, at commit time.",
            registry=r,
        )
        self.consistency_waits = Histogram(
            "eventfold_consistency_wait_seconds",
            "How long reads carrying a consistency token waited for the projection.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.consistency_waits_refused = Counter(
            "eventfold_consistency_waits_refused_total",
            "Reads answered 429 at once: their tenant had its limit of consistency waits.",
            registry=r,
        )
        self.consistency_tokens_refused = Counter(
            "eventfold_consistency_tokens_refused_total",
            "Consistency tokens answered 400: they name positions past the end of the log.",
            registry=r,
        )
        self.log_end_refreshes = Counter(
            "eventfold_log_end_refreshes_total",
            "Requests to Kafka for the end of the events topic (tokens past the known end).",
            registry=r,
        )
        self.auth_failures = Counter(
            "eventfold_auth_failures_total",
            "Failed authentications (401, unknown webhook targets) counted per client address.",
            registry=r,
        )
        self.auth_blocked = Counter(
            "eventfold_auth_blocked_total",
            "Requests answered 429 at once: their address failed authentication too often.",
            registry=r,
        )
        self.ratelimit_fail_open = Counter(
            "eventfold_ratelimit_fail_open_total",
            "Requests served without a rate limit check because Redis did not answer.",
            registry=r,
        )
        self.ratelimit_refused = Counter(
            "eventfold_ratelimit_refused_total",
            "Requests refused with 429 because their tenant's token bucket was empty.",
            registry=r,
        )
        self.dependency_errors = Counter(
            "eventfold_dependency_errors_total",
            "Failed calls to a dependency (postgres, kafka, redis).",
            ["dependency"],
            registry=r,
        )
        self.cache_hits = Counter(
            "eventfold_cache_hits_total",
            "Record cache lookups answered by Redis, by operation.",
            ["operation"],
            registry=r,
        )
        self.cache_misses = Counter(
            "eventfold_cache_misses_total",
            "Record cache lookups that went to PostgreSQL (absent, bypassed or breaker open).",
            ["operation"],
            registry=r,
        )
        self.cache_latency = Histogram(
            "eventfold_cache_latency_seconds",
            "Latency of record cache calls to Redis (get, fill, refresh, hot-keys), by operation.",
            ["operation"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.stream_clients = Gauge(
            "eventfold_stream_clients",
            "Server-Sent Events clients connected to this process.",
            registry=r,
        )
        self.stream_events_sent = Counter(
            "eventfold_stream_events_sent_total",
            "Events written to Server-Sent Events clients (replayed from history or live).",
            registry=r,
        )
        self.stream_slow_disconnects = Counter(
            "eventfold_stream_slow_disconnects_total",
            "SSE clients disconnected because they fell too far behind (queue full).",
            registry=r,
        )
        self.webhook_deliveries = Counter(
            "eventfold_webhook_deliveries_total",
            "Webhook delivery attempts by outcome: delivered, failed, dead (retries exhausted),"
            " gone, refused.",
            ["outcome"],
            registry=r,
        )
        self.webhook_latency = Histogram(
            "eventfold_webhook_delivery_latency_seconds",
            "From the event's scheduling to its successful delivery (retries included).",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
            registry=r,
        )
        self.workflow_runs_started = Counter(
            "eventfold_workflow_runs_started_total",
            "Workflow runs started (a matching applied event, once per workflow).",
            registry=r,
        )
        self.workflow_runs_finished = Counter(
            "eventfold_workflow_runs_finished_total",
            "Workflow runs finished, by status (succeeded, failed, cancelled).",
            ["status"],
            registry=r,
        )
        self.workflow_step_seconds = Histogram(
            "eventfold_workflow_step_duration_seconds",
            "One attempt of a workflow step's effect (http, record, email), by kind and outcome.",
            ["kind", "outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.workflow_step_attempts = Histogram(
            "eventfold_workflow_step_attempts",
            "Attempts a finished effect step took, by kind.",
            ["kind"],
            buckets=(1, 2, 3, 5, 10, 20),
            registry=r,
        )
        self.workflow_trigger_seconds = Histogram(
            "eventfold_workflow_trigger_latency_seconds",
            "From the trigger event's time to its run's first step starting.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.workflow_timers_pending = Gauge(
            "eventfold_workflow_timers_pending",
            "Workflow timers set in the future (delays, approval timeouts, retry pauses).",
            registry=r,
        )
        self.workflow_oldest_waiting_seconds = Gauge(
            "eventfold_workflow_oldest_waiting_step_seconds",
            "How long the oldest due run (next step, timer, retry) has waited for a processor.",
            registry=r,
        )
        self.workflow_inbox = Gauge(
            "eventfold_workflow_inbox",
            "Triggers and commands applied but not yet taken by a workflow processor.",
            registry=r,
        )
        self.webhook_pending = Gauge(
            "eventfold_webhook_pending",
            "Webhook deliveries waiting (first attempt or retry).",
            registry=r,
        )
        self.webhook_dead = Gauge(
            "eventfold_webhook_dead",
            "Webhook deliveries whose retries are exhausted (redrive puts them back).",
            registry=r,
        )
        self.cache_breaker_state = Gauge(
            "eventfold_cache_breaker_state",
            "The record cache's circuit breaker: 0 closed, 1 half-open, 2 open.",
            registry=r,
        )
        self.webhook_endpoints_disabled = Gauge(
            "eventfold_webhook_endpoints_disabled",
            "Webhook endpoints disabled (410 Gone, or too many failures in a row), not deleted.",
            registry=r,
        )
        self.processor_ready = Gauge(
            "eventfold_processor_ready",
            "1 while a processor runs with its input (partitions assigned, or its PostgreSQL"
            " polls answered); 0 while it starts, restarts after a failure or has none.",
            ["processor"],
            registry=r,
        )
        self.processor_lag_seconds = Gauge(
            "eventfold_processor_lag_seconds",
            "Age (log time) of the oldest event a processor has read but not applied yet;"
            " 0 when it has applied everything it read.",
            ["processor"],
            registry=r,
        )
        self.top_tenant_events = TopTenants(
            "eventfold_top_tenant_events_per_second",
            f"Events applied per second by the projector over the last window, for the"
            f" {TOP_TENANTS} busiest tenants of this process only.",
            registry=r,
        )
        self.top_tenant_requests = TopTenants(
            "eventfold_top_tenant_requests_per_second",
            f"HTTP requests answered below 400 per second over the last window, for the"
            f" {TOP_TENANTS} busiest tenants of this process only.",
            registry=r,
        )
        self._lag_clocks: dict[str, LagClock] = {}

    def lag_clock(self, processor: str) -> LagClock:
        """The :class:`LagClock` behind ``eventfold_processor_lag_seconds{processor}``.

        One per processor name and process: it outlives a processor restarted by the
        supervisor, whose unapplied events are still unapplied.
        """
        clock = self._lag_clocks.get(processor)
        if clock is None:
            clock = self._lag_clocks[processor] = LagClock()
            self.processor_lag_seconds.labels(processor).set_function(clock.seconds)
        return clock


class LagClock:
    """How far behind the log a processor is, in seconds, read at scrape time.

    The processor notes the first record of each partition it reads (:meth:`read`)
    and the positions it commits (:meth:`applied`); the lag is the age of the
    oldest record read but not committed. Computed when scraped, it keeps growing
    while the processor is stuck (a dependency away, a batch retried), which a
    value set at commit time cannot show.
    """

    def __init__(self) -> None:
        #: partition → first offset of each read not yet applied → its log time (s).
        self._unapplied: dict[int, dict[int, float]] = {}

    def read(self, partition: int, offset: int, timestamp_ms: int) -> None:
        """Records of ``partition`` from ``offset`` (log time ``timestamp_ms``) were read."""
        self._unapplied.setdefault(partition, {}).setdefault(offset, timestamp_ms / 1000)

    def applied(self, positions: Mapping[int, int]) -> None:
        """Everything before ``positions[partition]`` (the next offset) is applied."""
        for partition, position in positions.items():
            reads = self._unapplied.get(partition)
            if reads:
                for offset in [o for o in reads if o < position]:
                    del reads[offset]

    def assigned(self, partitions: Iterable[int]) -> None:
        """Only ``partitions`` are this processor's now: forget what others will apply."""
        keep = set(partitions)
        for partition in [p for p in self._unapplied if p not in keep]:
            del self._unapplied[partition]

    def seconds(self) -> float:
        """The age of the oldest unapplied read, 0 when there is none."""
        times = [t for reads in self._unapplied.values() for t in reads.values()]
        return max(0.0, time.time() - min(times)) if times else 0.0


class TopTenants(Collector):
    """A per-tenant rate, exported for the busiest tenants only: bounded labels.

    :meth:`add` counts in memory. The first scrape after ``window`` seconds
    publishes the ``size`` largest counts as rates (per second over the window
    that ended) and starts the next window: the label set is replaced each
    window and never holds more than ``size`` tenants, so Prometheus stores a
    series only for tenants that were among the busiest at some point. At most
    ``max_tracked`` distinct tenants are counted per window (newcomers past that
    are not), so requests naming made-up tenants cannot grow the memory.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        *,
        registry: CollectorRegistry,
        size: int = TOP_TENANTS,
        window: float = TOP_TENANTS_WINDOW,
        max_tracked: int = 10_000,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.size = size
        self.window = window
        self.max_tracked = max_tracked
        self._counts: collections.Counter[str] = collections.Counter()
        self._started = time.monotonic()
        self._published: list[tuple[str, float]] = []
        registry.register(self)

    def add(self, tenant: str, count: int = 1) -> None:
        """Count ``count`` units of activity of ``tenant`` in the current window."""
        counts = self._counts
        if tenant in counts or len(counts) < self.max_tracked:
            counts[tenant] += count

    def describe(self) -> Iterator[Metric]:
        """The metric's name and type, for the registry's duplicate check."""
        yield GaugeMetricFamily(self.name, self.documentation, labels=["tenant"])

    def collect(self) -> Iterator[Metric]:
        """The last window's top tenants, publishing a new window once this one is over."""
        now = time.monotonic()
        elapsed = now - self._started
        if elapsed >= self.window:
            span = max(elapsed, 1e-9)
            top = self._counts.most_common(self.size)
            self._published = [(tenant, count / span) for tenant, count in top]
            self._counts = collections.Counter()
            self._started = now
        family = GaugeMetricFamily(self.name, self.documentation, labels=["tenant"])
        for tenant, rate in self._published:
            family.add_metric([tenant], rate)
        yield family


@dataclass(frozen=True, slots=True)
class MetricInfo:
    """One metric family a :class:`Metrics` registers: what the reference lists."""

    #: The family's name (a counter's samples add ``_total``).
    name: str
    #: ``counter``, ``gauge`` or ``histogram``.
    kind: str
    help: str
    #: The labels its series carry (besides the ones Prometheus adds per target).
    labels: tuple[str, ...]

    def series(self) -> dict[str, tuple[str, ...]]:
        """Each series name it exports → its labels (a histogram adds ``le`` to buckets)."""
        if self.kind == "counter":
            return {f"{self.name}_total": self.labels}
        if self.kind == "histogram":
            return {
                f"{self.name}_bucket": (*self.labels, "le"),
                f"{self.name}_count": self.labels,
                f"{self.name}_sum": self.labels,
            }
        return {self.name: self.labels}


def catalogue(metrics: Metrics | None = None) -> list[MetricInfo]:
    """Every metric family of ``metrics`` (a fresh :class:`Metrics` by default), by name.

    Labels come from the collectors themselves: a labelled metric without children
    yet has no samples to read them from.
    """
    metrics = metrics or Metrics(CollectorRegistry())
    labels: dict[str, tuple[str, ...]] = {}
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            labels[value._name] = tuple(value._labelnames)
        elif isinstance(value, TopTenants):
            labels[value.name] = ("tenant",)
    return sorted(
        (
            MetricInfo(family.name, family.type, family.documentation, labels[family.name])
            for family in metrics.registry.collect()
        ),
        key=lambda info: info.name,
    )

"""Prometheus metrics, all in one object bound to the registry passed in.

Labels never carry tenant ids (unbounded); routes are the route templates.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


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

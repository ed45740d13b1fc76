"""Settings built from the environment (12-factor), each with a local default.

One frozen dataclass read once per process; every component receives the
settings it needs instead of reading ``os.environ`` itself, so tests can build
their own without touching the process environment.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import eventfold

EVENTS_TOPIC = "eventfold.events"
DLQ_TOPIC = "eventfold.events.dlq"


def project_home() -> Path:
    """Where the local stack keeps its files (``var/``) and finds ``infra/``.

    A source checkout (the usual case: ``make run``) uses its own top folder;
    an installed wheel falls back to ``~/.local/share/eventfold``.
    """
    override = os.environ.get("EVENTFOLD_HOME")
    if override:
        return Path(override).resolve()
    checkout = Path(eventfold.__file__).resolve().parents[2]
    if (checkout / "infra").is_dir() and (checkout / "pyproject.toml").is_file():
        return checkout
    return Path.home() / ".local" / "share" / "eventfold"


def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _path(value: str | None) -> Path | None:
    return Path(value).expanduser() if value else None


def _read_file(value: str | None) -> str:
    return Path(value).expanduser().read_text().strip() if value else ""


def _int_list(value: str) -> tuple[int, ...]:
    return tuple(int(part) for part in _split(value))


@dataclass(frozen=True, slots=True)
class Settings:
    """Every knob of an Eventfold process; see CONTRACT.md for the public ones."""

    home: Path
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    kafka_bootstrap: str = "127.0.0.1:9092"
    database_url: str = "postgresql://eventfold:eventfold@127.0.0.1:5432/eventfold"
    redis_url: str = "redis://127.0.0.1:6379/0"
    s3_endpoint: str = "http://127.0.0.1:9000"
    s3_bucket: str = "eventfold-archive"
    s3_access_key: str = "eventfold"
    s3_secret_key: str = "eventfold-secret"  # noqa: S105 - local dev default only
    s3_region: str = "us-east-1"
    jwt_secret: str = ""
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    #: RS256: a PEM public key, and/or a JWKS file (keys picked by ``kid``).
    jwt_public_key_file: Path | None = None
    jwt_jwks_file: Path | None = None
    #: Clock skew tolerated on ``exp``/``iat``/``nbf``.
    jwt_leeway_seconds: int = 30
    #: A tenant's token bucket when its ``limits`` do not say.
    rate_limit_default_rps: float = 100.0
    rate_limit_default_burst: int = 200
    webhook_allow_hosts: tuple[str, ...] = ()
    webhook_retry_schedule: tuple[int, ...] = (5, 30, 120, 600, 3600)
    #: Deadline of one webhook delivery attempt (connect, send, read the answer).
    webhook_timeout_seconds: float = 10.0
    #: Keys sealing secrets at rest (``id:base64key,...``, first seals; see
    #: eventfold.sealing). Empty: a dev key file in ``var/``.
    secret_keys: str = ""
    #: The sync runner (consumers/sync): how often it looks for due integrations,
    #: backoff after a failure (base * 2^n, capped, with jitter), the failures in
    #: a row that open the circuit and how long it stays open, and the bounds of
    #: one request (seconds, bytes, items) and of one run (pages, seconds).
    sync_tick_seconds: float = 1.0
    sync_backoff_base: float = 2.0
    sync_backoff_cap: float = 300.0
    sync_circuit_failures: int = 5
    sync_circuit_seconds: float = 120.0
    sync_request_timeout: float = 15.0
    sync_max_response_bytes: int = 8 * 1024 * 1024
    sync_max_page_items: int = 1000
    sync_max_pages_per_run: int = 500
    sync_max_run_seconds: float = 120.0
    sync_concurrency: int = 4
    #: How long a claimed run holds its integration without progress (renewed per
    #: page); a crashed worker's integration is free again after it.
    sync_lease_seconds: float = 60.0
    events_topic: str = EVENTS_TOPIC
    dlq_topic: str = DLQ_TOPIC
    topic_partitions: int = 8
    consumer_group_prefix: str = "eventfold"
    max_body_bytes: int = 1024 * 1024
    #: Requests one HTTP process answers at once; past it, 503 with ``Retry-After``
    #: at once (streams, health and metrics exempt). 0: no limit.
    http_max_in_flight: int = 256
    max_batch_events: int = 1000
    #: Origins allowed by CORS (``*`` for any); empty turns CORS off.
    cors_origins: tuple[str, ...] = ()
    #: Responses at least this large are gzip-compressed for clients that accept it.
    compress_min_bytes: int = 1024
    projector_batch_size: int = 2000
    #: Prepared statements kept per PostgreSQL connection. Each tenant's schema
    #: makes its own statement text, so this bounds how many tenants a batch can
    #: touch before statements are prepared again on every use.
    pg_statement_cache_size: int = 1024
    #: Longest a tenant's statement or lock wait may take in a batch before the
    #: tenant is deferred (retried in the background) so the others go on.
    projector_tenant_budget_ms: int = 2000
    consistency_wait_seconds: float = 5.0
    #: The Redis record cache (reads Redis first); off makes every read go to PostgreSQL.
    cache_enabled: bool = True
    #: How long a cached record lives without a refresh: bounds staleness if one was missed.
    cache_ttl_seconds: int = 3600
    #: Deadline of each cache call to Redis; past it the call counts as a breaker failure.
    cache_timeout_ms: int = 250
    #: Consecutive failures that open the cache's circuit breaker, and its cooldown.
    cache_breaker_failures: int = 3
    cache_breaker_cooldown_seconds: float = 2.0
    #: SSE ``/stream``: a heartbeat comment this often, and the events (and bytes) a
    #: client may have waiting before it is disconnected as too slow.
    stream_heartbeat_seconds: float = 15.0
    stream_queue_max: int = 1000
    stream_queue_max_bytes: int = 4 * 1024 * 1024
    #: Streams one tenant may have open across every API instance (429 past it); 0: no cap.
    stream_max_per_tenant: int = 100
    #: How often an open stream checks its credentials again (it ends once they are refused).
    stream_recheck_seconds: float = 1.0
    #: An archive segment closes before it would pass this many (uncompressed) bytes,
    #: or once its records span this many seconds (see src/consumers/archiver).
    archive_segment_bytes: int = 8 * 1024 * 1024
    archive_segment_seconds: float = 300.0
    #: Analytics (src/consumers/analytics): how long after a window closes a late event
    #: still counts, how long window results are kept, the least time between two
    #: copies to Redis, how often settled windows are pruned from the faust tables.
    analytics_grace_seconds: int = 60
    analytics_retention_1m_seconds: int = 2 * 86400
    analytics_retention_1h_seconds: int = 35 * 86400
    analytics_flush_ms: int = 200
    analytics_prune_seconds: float = 60.0
    log_level: str = "INFO"
    #: Which services the user pointed at their own instance (infra skips those).
    external: frozenset[str] = field(default_factory=frozenset)

    @property
    def var_dir(self) -> Path:
        """Data, logs and pid files of the local stack."""
        return self.home / "var"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``env`` (default: the process environment)."""
        env = os.environ if env is None else env
        home = Path(env["EVENTFOLD_HOME"]).resolve() if "EVENTFOLD_HOME" in env else project_home()
        d = cls(home=home)
        external = frozenset(
            name
            for name, var in (
                ("kafka", "EVENTFOLD_KAFKA_BOOTSTRAP"),
                ("postgres", "EVENTFOLD_DATABASE_URL"),
                ("redis", "EVENTFOLD_REDIS_URL"),
                ("s3", "EVENTFOLD_S3_ENDPOINT"),
            )
            if env.get(var)
        )
        return cls(
            home=home,
            http_host=env.get("EVENTFOLD_HTTP_HOST", d.http_host),
            http_port=int(env.get("EVENTFOLD_HTTP_PORT", d.http_port)),
            kafka_bootstrap=env.get("EVENTFOLD_KAFKA_BOOTSTRAP") or d.kafka_bootstrap,
            database_url=env.get("EVENTFOLD_DATABASE_URL") or d.database_url,
            redis_url=env.get("EVENTFOLD_REDIS_URL") or d.redis_url,
            s3_endpoint=env.get("EVENTFOLD_S3_ENDPOINT") or d.s3_endpoint,
            s3_bucket=env.get("EVENTFOLD_S3_BUCKET") or d.s3_bucket,
            s3_access_key=env.get("EVENTFOLD_S3_ACCESS_KEY") or d.s3_access_key,
            s3_secret_key=env.get("EVENTFOLD_S3_SECRET_KEY") or d.s3_secret_key,
            s3_region=env.get("EVENTFOLD_S3_REGION") or d.s3_region,
            jwt_secret=env.get("EVENTFOLD_JWT_SECRET") or _dev_jwt_secret(home),
            jwt_issuer=env.get("EVENTFOLD_JWT_ISSUER") or None,
            jwt_audience=env.get("EVENTFOLD_JWT_AUDIENCE") or None,
            jwt_public_key_file=_path(env.get("EVENTFOLD_JWT_PUBLIC_KEY_FILE")),
            jwt_jwks_file=_path(env.get("EVENTFOLD_JWT_JWKS_FILE")),
            jwt_leeway_seconds=int(env.get("EVENTFOLD_JWT_LEEWAY_SECONDS", d.jwt_leeway_seconds)),
            rate_limit_default_rps=float(
                env.get("EVENTFOLD_RATE_LIMIT_DEFAULT_RPS", d.rate_limit_default_rps)
            ),
            rate_limit_default_burst=int(
                env.get("EVENTFOLD_RATE_LIMIT_DEFAULT_BURST", d.rate_limit_default_burst)
            ),
            webhook_allow_hosts=_split(env.get("EVENTFOLD_WEBHOOK_ALLOW_HOSTS", "")),
            secret_keys=env.get("EVENTFOLD_SECRET_KEYS")
            or _read_file(env.get("EVENTFOLD_SECRET_KEYS_FILE")),
            cors_origins=_split(env.get("EVENTFOLD_CORS_ORIGINS", "")),
            sync_tick_seconds=float(env.get("EVENTFOLD_SYNC_TICK_SECONDS", d.sync_tick_seconds)),
            sync_backoff_base=float(env.get("EVENTFOLD_SYNC_BACKOFF_BASE", d.sync_backoff_base)),
            sync_backoff_cap=float(env.get("EVENTFOLD_SYNC_BACKOFF_CAP", d.sync_backoff_cap)),
            sync_circuit_failures=int(
                env.get("EVENTFOLD_SYNC_CIRCUIT_FAILURES", d.sync_circuit_failures)
            ),
            sync_circuit_seconds=float(
                env.get("EVENTFOLD_SYNC_CIRCUIT_SECONDS", d.sync_circuit_seconds)
            ),
            sync_request_timeout=float(
                env.get("EVENTFOLD_SYNC_REQUEST_TIMEOUT", d.sync_request_timeout)
            ),
            sync_max_response_bytes=int(
                env.get("EVENTFOLD_SYNC_MAX_RESPONSE_BYTES", d.sync_max_response_bytes)
            ),
            sync_max_page_items=int(
                env.get("EVENTFOLD_SYNC_MAX_PAGE_ITEMS", d.sync_max_page_items)
            ),
            sync_max_pages_per_run=int(
                env.get("EVENTFOLD_SYNC_MAX_PAGES_PER_RUN", d.sync_max_pages_per_run)
            ),
            sync_max_run_seconds=float(
                env.get("EVENTFOLD_SYNC_MAX_RUN_SECONDS", d.sync_max_run_seconds)
            ),
            sync_concurrency=int(env.get("EVENTFOLD_SYNC_CONCURRENCY", d.sync_concurrency)),
            sync_lease_seconds=float(env.get("EVENTFOLD_SYNC_LEASE_SECONDS", d.sync_lease_seconds)),
            compress_min_bytes=int(env.get("EVENTFOLD_COMPRESS_MIN_BYTES", d.compress_min_bytes)),
            webhook_retry_schedule=_int_list(env["EVENTFOLD_WEBHOOK_RETRY_SCHEDULE"])
            if env.get("EVENTFOLD_WEBHOOK_RETRY_SCHEDULE")
            else d.webhook_retry_schedule,
            webhook_timeout_seconds=float(
                env.get("EVENTFOLD_WEBHOOK_TIMEOUT_SECONDS", d.webhook_timeout_seconds)
            ),
            events_topic=env.get("EVENTFOLD_EVENTS_TOPIC") or d.events_topic,
            dlq_topic=env.get("EVENTFOLD_DLQ_TOPIC") or d.dlq_topic,
            topic_partitions=int(env.get("EVENTFOLD_TOPIC_PARTITIONS", d.topic_partitions)),
            consumer_group_prefix=env.get("EVENTFOLD_CONSUMER_GROUP_PREFIX")
            or d.consumer_group_prefix,
            projector_batch_size=int(
                env.get("EVENTFOLD_PROJECTOR_BATCH_SIZE", d.projector_batch_size)
            ),
            pg_statement_cache_size=int(
                env.get("EVENTFOLD_PG_STATEMENT_CACHE_SIZE", d.pg_statement_cache_size)
            ),
            projector_tenant_budget_ms=int(
                env.get("EVENTFOLD_PROJECTOR_TENANT_BUDGET_MS", d.projector_tenant_budget_ms)
            ),
            cache_enabled=env.get("EVENTFOLD_CACHE_ENABLED", "true").lower()
            not in ("0", "false", "no", "off"),
            cache_ttl_seconds=int(env.get("EVENTFOLD_CACHE_TTL_SECONDS", d.cache_ttl_seconds)),
            cache_timeout_ms=int(env.get("EVENTFOLD_CACHE_TIMEOUT_MS", d.cache_timeout_ms)),
            cache_breaker_cooldown_seconds=float(
                env.get(
                    "EVENTFOLD_CACHE_BREAKER_COOLDOWN_SECONDS", d.cache_breaker_cooldown_seconds
                )
            ),
            stream_heartbeat_seconds=float(
                env.get("EVENTFOLD_STREAM_HEARTBEAT_SECONDS", d.stream_heartbeat_seconds)
            ),
            stream_queue_max=int(env.get("EVENTFOLD_STREAM_QUEUE_MAX", d.stream_queue_max)),
            stream_queue_max_bytes=int(
                env.get("EVENTFOLD_STREAM_QUEUE_MAX_BYTES", d.stream_queue_max_bytes)
            ),
            stream_max_per_tenant=int(
                env.get("EVENTFOLD_STREAM_MAX_PER_TENANT", d.stream_max_per_tenant)
            ),
            stream_recheck_seconds=float(
                env.get("EVENTFOLD_STREAM_RECHECK_SECONDS", d.stream_recheck_seconds)
            ),
            http_max_in_flight=int(env.get("EVENTFOLD_HTTP_MAX_IN_FLIGHT", d.http_max_in_flight)),
            analytics_grace_seconds=int(
                env.get("EVENTFOLD_ANALYTICS_GRACE_SECONDS", d.analytics_grace_seconds)
            ),
            analytics_retention_1m_seconds=int(
                env.get(
                    "EVENTFOLD_ANALYTICS_RETENTION_1M_SECONDS", d.analytics_retention_1m_seconds
                )
            ),
            analytics_retention_1h_seconds=int(
                env.get(
                    "EVENTFOLD_ANALYTICS_RETENTION_1H_SECONDS", d.analytics_retention_1h_seconds
                )
            ),
            analytics_flush_ms=int(env.get("EVENTFOLD_ANALYTICS_FLUSH_MS", d.analytics_flush_ms)),
            analytics_prune_seconds=float(
                env.get("EVENTFOLD_ANALYTICS_PRUNE_SECONDS", d.analytics_prune_seconds)
            ),
            archive_segment_bytes=int(
                env.get("EVENTFOLD_ARCHIVE_SEGMENT_BYTES", d.archive_segment_bytes)
            ),
            archive_segment_seconds=float(
                env.get("EVENTFOLD_ARCHIVE_SEGMENT_SECONDS", d.archive_segment_seconds)
            ),
            log_level=env.get("EVENTFOLD_LOG_LEVEL", d.log_level).upper(),
            external=external,
        )


def _dev_jwt_secret(home: Path) -> str:
    """A per-checkout random secret, kept in ``var/`` so every local process agrees.

    Production sets ``EVENTFOLD_JWT_SECRET``; this only spares a newcomer the step.
    """
    path = home / "var" / "jwt-secret"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".jwt-secret.{os.getpid()}")
        tmp.write_text(secrets.token_urlsafe(48))
        os.chmod(tmp, 0o600)
        try:
            # link() fails when the file exists: of two processes starting at
            # once, the first one's secret wins and both read it back.
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
        return path.read_text().strip()

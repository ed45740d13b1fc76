"""Settings built from the environment (12-factor), each with a local default.

One frozen dataclass read once per process; every component receives the
settings it needs instead of reading ``os.environ`` itself, so tests can build
their own without touching the process environment.

Every field is read from ``EVENTFOLD_<FIELD NAME>`` (fields marked
:data:`INTERNAL` are not) and checked at start by pydantic against the field's
type: a bad value raises :class:`SettingsError`, one line naming the variable
and what it accepts, which the CLI prints before exiting with status 2. A new
field needs nothing but its declaration; a constrained type (:data:`Port`,
:data:`Seconds`, ...) also says what it accepts. The ``#:`` comment above a field
(or above the group of fields it starts) is its entry in the settings reference
of the documentation site, generated from this class with its type, default and range.

Why not ``pydantic_settings.BaseSettings``: it would turn Settings into a
pydantic model, while the components and tests build and copy it as a plain
dataclass (``dataclasses.replace``), and it decodes list fields as JSON where
ours are comma-separated. Its validation is pydantic's, which this uses on the
dataclass itself (``TypeAdapter``); its reading of prefixed variables is
:func:`_read_env`.

The ``mode`` decides what a missing secret means. ``dev`` (the default in a
source checkout: ``make run``) generates the JWT secret and the sealing key
into ``var/``; ``production`` (the default of an installed package, set by the
Docker image) refuses to start without ``EVENTFOLD_JWT_SECRET`` (at least 32
bytes, no published or placeholder value) and ``EVENTFOLD_SECRET_KEYS``.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import os
import re
import secrets
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import AfterValidator, BeforeValidator, Field, FilePath, TypeAdapter, ValidationError

import eventfold
from eventfold.errors import PermanentError
from eventfold.sealing import Keyring, SealError
from eventfold.secretfiles import read_or_create

EVENTS_TOPIC = "eventfold.events"
DLQ_TOPIC = "eventfold.events.dlq"
PREFIX = "EVENTFOLD_"
#: ``field(metadata=INTERNAL)``: a knob tests may set, not read from the environment.
INTERNAL: Mapping[str, bool] = {"env": False}


def documented_default(text: str) -> Mapping[str, str]:
    """``field(metadata=...)``: the default in words, where the declared one is not it.

    ``from_env`` fills these fields from the mode or the checkout; the settings
    reference (docs, generated from this class) shows ``text`` instead of the value.
    """
    return {"default_doc": text}


#: The JWT secret's least length in production (HS256 wants a key as long as its hash).
MIN_SECRET_BYTES = 32
#: Values once published as examples (docker-compose.yml before issue 21).
KNOWN_SECRETS = frozenset({"dev-only-insecure-jwt-secret-change-me"})
#: Words that mark a placeholder someone forgot to replace.
PLACEHOLDER_WORDS = ("change-me", "changeme", "change_me", "replace-me", "insecure", "example")


class SettingsError(PermanentError):
    """A setting the process cannot start with; ``str()`` is the one line to show."""

    def __init__(self, variable: str, problem: str, accepts: str) -> None:
        super().__init__(f"{variable}: {problem}; it accepts {accepts}")
        self.variable = variable
        self.problem = problem
        self.accepts = accepts


@dataclass(frozen=True, slots=True)
class Accepts:
    """Annotation metadata: what a setting of this type accepts, in the error line."""

    text: str


def _comma_list(value: object) -> object:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


def _upper(value: object) -> object:
    return value.upper() if isinstance(value, str) else value


def _lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


def _expand(value: object) -> object:
    return Path(value).expanduser() if isinstance(value, str) else value


def _url_with(*schemes: str) -> AfterValidator:
    def check(value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in schemes or not (parts.netloc or parts.path):
            raise ValueError(f"scheme must be one of {schemes}")
        return value

    return AfterValidator(check)


def _bootstrap_servers(value: str) -> str:
    for server in value.split(","):
        host, sep, port = server.strip().rpartition(":")
        if not server.strip() or (sep and (not host or not port.isdigit())):
            raise ValueError("host[:port],...")
    return value


def _host_port(value: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) split; ValueError unless both are there."""
    host, sep, port = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("host:port,...")
    return host, int(port)


def _host_ports(value: tuple[str, ...]) -> tuple[str, ...]:
    for address in value:
        _host_port(address)
    return value


#: A database server's name in ``EVENTFOLD_DATABASE_SERVERS`` (``main`` is the first one's).
SERVER_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,30}$")
#: The name of the server of ``EVENTFOLD_DATABASE_URL``: the placement directory's home.
HOME_SERVER = "main"


def _database_servers(value: tuple[str, ...]) -> tuple[str, ...]:
    seen = {HOME_SERVER}
    for spec in value:
        name, sep, url = spec.partition("=")
        name = name.strip()
        if not sep or not SERVER_NAME.match(name):
            raise ValueError(f"{spec!r} is not name=postgresql://...")
        if name in seen:
            raise ValueError(f"server name {name!r} given twice (main is EVENTFOLD_DATABASE_URL)")
        seen.add(name)
        parts = urlsplit(url.strip())
        if parts.scheme not in ("postgresql", "postgres") or not parts.netloc:
            raise ValueError(f"{name}: not a postgresql:// URL")
    return tuple(spec.strip() for spec in value)


def _networks(value: tuple[str, ...]) -> tuple[str, ...]:
    for spec in value:
        ipaddress.ip_network(spec, strict=False)  # ValueError names the bad one
    return value


def _keyring_spec(value: str) -> str:
    if value:
        try:
            Keyring.parse(value)
        except SealError as exc:
            raise ValueError(str(exc)) from None
    return value


# Setting types: the check and the words for what it accepts.
Port = Annotated[int, Field(ge=0, le=65535), Accepts("a TCP port number (0-65535)")]
Count = Annotated[int, Field(ge=0), Accepts("a whole number >= 0")]
Positive = Annotated[int, Field(ge=1), Accepts("a whole number >= 1")]
Seconds = Annotated[
    float, Field(ge=0, allow_inf_nan=False), Accepts("seconds, a number >= 0 (fractions allowed)")
]
Rate = Annotated[float, Field(gt=0, allow_inf_nan=False), Accepts("a number > 0")]
Flag = Annotated[bool, Accepts("true or false (also 1/0, yes/no, on/off)")]
CommaList = Annotated[
    tuple[str, ...], BeforeValidator(_comma_list), Accepts("a comma-separated list")
]
RetrySchedule = Annotated[
    tuple[Annotated[float, Field(ge=0, allow_inf_nan=False)], ...],
    BeforeValidator(_comma_list),
    Field(min_length=1),
    Accepts("seconds >= 0, comma-separated (fractions allowed, e.g. 0.2,0.5,1)"),
]
TopicName = Annotated[
    str,
    Field(pattern=r"^[A-Za-z0-9._-]{1,249}$"),
    Accepts("a Kafka topic or group name: letters, digits, '.', '_', '-'"),
]
KeyFile = Annotated[
    FilePath | None, BeforeValidator(_expand), Accepts("the path of an existing file")
]
LogLevel = Annotated[
    Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
    BeforeValidator(_upper),
    Accepts("one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
]
Mode = Annotated[
    Literal["dev", "production"], BeforeValidator(_lower), Accepts("dev or production")
]
PostgresUrl = Annotated[
    str, _url_with("postgresql", "postgres"), Accepts("a postgresql://user:password@host/db URL")
]
RedisUrl = Annotated[
    str, _url_with("redis", "rediss", "unix"), Accepts("a redis://, rediss:// or unix:// URL")
]
SmtpUrl = Annotated[
    str, _url_with("smtp", "smtps"), Accepts("an smtp://user:pass@host:port URL (?starttls=true)")
]
SentinelAddresses = Annotated[
    tuple[str, ...],
    BeforeValidator(_comma_list),
    AfterValidator(_host_ports),
    Accepts("host:port pairs of Redis Sentinels, comma-separated"),
]
SentinelService = Annotated[
    str,
    Field(pattern=r"^[A-Za-z0-9._-]{1,64}$"),
    Accepts("a Sentinel master name: letters, digits, '.', '_', '-'"),
]
DatabaseServers = Annotated[
    tuple[str, ...],
    BeforeValidator(_comma_list),
    AfterValidator(_database_servers),
    Accepts(
        "name=postgresql://user:password@host:port/db pairs, comma-separated"
        " (names: a-z, 0-9, '_', '-', not main)"
    ),
]
HttpUrl = Annotated[str, _url_with("http", "https"), Accepts("an http:// or https:// URL")]
Networks = Annotated[
    tuple[str, ...],
    BeforeValidator(_comma_list),
    AfterValidator(_networks),
    Accepts("IP addresses or CIDRs, comma-separated"),
]
SessionTimeout = Annotated[
    float,
    Field(ge=1, le=1800, allow_inf_nan=False),
    Accepts("seconds from 1 to 1800 (fractions allowed)"),
]
BrokerCount = Annotated[int, Field(ge=1, le=9), Accepts("a whole number from 1 to 9")]
BootstrapServers = Annotated[
    str, AfterValidator(_bootstrap_servers), Accepts("host[:port] pairs, comma-separated")
]
KeyringSpec = Annotated[
    str,
    AfterValidator(_keyring_spec),
    Accepts("id:base64key[,id:base64key...] with 32-byte keys, the first one sealing"),
]


def next_database(url: str) -> str:
    """``url`` (a Redis URL) naming the next logical database of the same server.

    ``redis://h:6379/0`` -> ``redis://h:6379/1`` (no database is 0), and a
    ``unix://`` URL's ``?db=`` likewise; credentials and options stay.
    """
    parts = urlsplit(url)
    if parts.scheme == "unix":
        query = dict(parse_qsl(parts.query))
        query["db"] = str(int(query.get("db") or 0) + 1)
        # Not urlunsplit: it drops the empty host of ``unix:///path``.
        return f"{url.partition('?')[0]}?{urlencode(query)}"
    return urlunsplit(parts._replace(path=f"/{int(parts.path.strip('/') or 0) + 1}"))


def cluster_bootstrap(first: str, brokers: int) -> str:
    """The client addresses of a local ``brokers``-node Kafka cluster whose first node is
    ``first`` (``host:port``): each node takes two ports (client, controller), so node i
    listens on ``port + 2 * (i - 1)``."""
    host, _, port = first.split(",")[0].strip().rpartition(":")
    return ",".join(f"{host}:{int(port) + 2 * i}" for i in range(brokers))


def source_checkout() -> Path | None:
    """The source checkout this package runs from (an editable install), else None."""
    checkout = Path(eventfold.__file__).resolve().parents[2]
    if (checkout / "infra").is_dir() and (checkout / "pyproject.toml").is_file():
        return checkout
    return None


def project_home() -> Path:
    """Where the local stack keeps its files (``var/``) and finds ``infra/``.

    A source checkout (the usual case: ``make run``) uses its own top folder;
    an installed wheel falls back to ``~/.local/share/eventfold``.
    """
    override = os.environ.get("EVENTFOLD_HOME")
    if override:
        return Path(override).resolve()
    return source_checkout() or Path.home() / ".local" / "share" / "eventfold"


@dataclass(frozen=True, slots=True)
class Settings:
    """Every knob of an Eventfold process; see CONTRACT.md for the public ones."""

    #: Where ``var/`` (data, logs, pid files of the local stack) lives, and ``schemas/``
    #: for ``eventfold schemas``.
    home: Path = field(
        metadata=documented_default("the source checkout, else ~/.local/share/eventfold")
    )
    #: ``dev`` generates missing secrets into ``var/``; ``production`` refuses to start
    #: without them. Built directly (tests), settings are production: safe by default.
    mode: Mode = field(
        default="production",
        metadata=documented_default("dev in a source checkout, production when installed"),
    )
    #: The address the HTTP listener binds (API, ingest, or a processor's health and
    #: metrics).
    http_host: str = "127.0.0.1"
    #: The HTTP listener's port.
    http_port: Port = 8080
    #: Kafka's bootstrap servers.
    kafka_bootstrap: BootstrapServers = field(
        default="127.0.0.1:9092",
        metadata=documented_default(
            "127.0.0.1:9092; with EVENTFOLD_KAFKA_BROKERS=n, every local node (9092, 9094, ...)"
        ),
    )
    #: Brokers of the Kafka cluster: ``eventfold infra up`` runs that many locally
    #: (all controller voters); topics get min(n, 3) replicas and
    #: ``min.insync.replicas`` one less (2 of 3), so a write acknowledged with acks=all
    #: survives the loss of any one broker.
    kafka_brokers: BrokerCount = 1
    #: The PostgreSQL database of the projections (see the role it needs in Security).
    database_url: PostgresUrl = "postgresql://eventfold:eventfold@127.0.0.1:5432/eventfold"
    #: More PostgreSQL servers tenants are placed on, ``name=postgresql://...``,
    #: comma-separated. The server of ``EVENTFOLD_DATABASE_URL`` is ``main``: it holds
    #: the placement directory (tenant → server) and every tenant placed before the
    #: others were added. A new tenant goes to the server with the fewest tenants
    #: (``eventfold tenants placement`` counts them; ``eventfold tenants move`` moves
    #: one). ``eventfold infra up`` starts a local cluster for each one on 127.0.0.1.
    database_servers: DatabaseServers = ()
    #: The server this process's pool is on when a processor runs once per server
    #: (``eventfold run``); empty: ``main``.
    database_server: str = field(default="", metadata=INTERNAL)
    #: ``main``'s URL when ``database_url`` was scoped to another server.
    home_database_url: str = field(default="", metadata=INTERNAL)
    #: Redis for what must not vanish (rate-limit buckets, dedup keys, inbound webhook
    #: ids, analytics windows, SSE stream slots): a server that never evicts
    #: (``maxmemory-policy noeviction``).
    redis_url: RedisUrl = "redis://127.0.0.1:6379/0"
    #: Redis for the record cache (entries, tombstones, hot keys), which may be
    #: evicted: in production a server of its own with ``maxmemory-policy
    #: allkeys-lru``. Unset: the next database of the first one's server (``/0`` ->
    #: ``/1``, see ``Settings.cache_url``).
    cache_redis_url: RedisUrl = field(
        default="",
        metadata=documented_default("the next database of EVENTFOLD_REDIS_URL's server"),
    )
    #: Redis Sentinel: the sentinels' ``host:port`` addresses, comma-separated; empty:
    #: no Sentinel. Set, every client asks them for the current master of
    #: ``redis_sentinel_service`` and follows a failover without a restart; the host
    #: and port of ``EVENTFOLD_REDIS_URL`` are then not dialled (its database,
    #: password and scheme still count), nor are those of the cache's Redis unless
    #: ``EVENTFOLD_CACHE_REDIS_URL`` names another server. ``eventfold infra up``
    #: starts a replica and these sentinels locally (see ``--redis-sentinel``).
    redis_sentinels: SentinelAddresses = ()
    #: The name under which the sentinels monitor the master.
    redis_sentinel_service: SentinelService = "eventfold"
    #: The S3-compatible store of the event archive.
    s3_endpoint: HttpUrl = "http://127.0.0.1:9000"
    #: The archive's bucket (``eventfold infra up`` creates it locally).
    s3_bucket: str = "eventfold-archive"
    #: The S3 credentials and region.
    s3_access_key: str = "eventfold"
    s3_secret_key: str = "eventfold-secret"  # noqa: S105 - local dev default only
    s3_region: str = "us-east-1"
    #: The HS256 key of bearer tokens and list cursors; in production at least 32
    #: random bytes (``openssl rand -hex 32``), in dev generated into ``var/jwt-secret``.
    jwt_secret: str = field(
        default="", metadata=documented_default("dev: generated into var/; production: required")
    )
    #: The ``iss`` and ``aud`` claims bearer tokens must carry, enforced when set.
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    #: RS256: a PEM RSA public key; bearer tokens signed by its private key are accepted.
    jwt_public_key_file: KeyFile = None
    #: RS256: a JWKS file; a token is checked with the key its ``kid`` names (the file
    #: is read again when an unknown ``kid`` arrives and the file changed).
    jwt_jwks_file: KeyFile = None
    #: Clock skew tolerated on ``exp``/``iat``/``nbf``.
    jwt_leeway_seconds: Count = 30
    #: Requests per second of a tenant's token bucket when its ``limits`` do not say.
    rate_limit_default_rps: Rate = 100.0
    #: The size (burst) of a tenant's token bucket when its ``limits`` do not say.
    rate_limit_default_burst: Positive = 200
    #: Failed authentications a client address may make at once; past them (and the
    #: refill) its requests are 429 before any credential check (0: no limit).
    auth_failure_burst: Count = 20
    #: Failed authentications per second refilled into a client address's allowance.
    auth_failure_per_second: Rate = 1.0
    #: Proxies (addresses or CIDRs) whose ``X-Forwarded-For`` names the client address.
    trusted_proxies: Networks = ()
    #: Hosts and CIDRs that webhooks and integrations may reach although private or
    #: loopback.
    webhook_allow_hosts: CommaList = ()
    #: Seconds before each retry of a failed webhook delivery; after the last, the
    #: delivery is exhausted, until a redrive.
    webhook_retry_schedule: RetrySchedule = (5, 30, 120, 600, 3600)
    #: Deadline of one webhook delivery attempt (connect, send, read the answer).
    webhook_timeout_seconds: Seconds = 10.0
    #: The SMTP server of workflow email steps: ``smtp://user:pass@host:port``
    #: (``?starttls=true`` to upgrade; ``smtps://`` for TLS from the start).
    smtp_url: SmtpUrl = "smtp://127.0.0.1:1025"
    #: The ``From`` address of workflow emails.
    smtp_from: str = "eventfold@localhost"
    #: SMTP connections a workflow processor keeps open and sends on at once (mail
    #: beyond them waits for a free one).
    smtp_connections: Positive = 16
    #: The workflow processor: runs driven at once in one process and per tenant (the
    #: rest wait their turn, tenants in turn), and how long a run's lease lasts
    #: without renewal (a killed processor's runs are taken over after it).
    workflow_concurrency: Positive = 256
    workflow_per_tenant: Positive = 32
    workflow_lease_seconds: Rate = 10.0
    #: Keys sealing secrets at rest (``id:base64key,...``, first seals; see
    #: eventfold.sealing), or ``EVENTFOLD_SECRET_KEYS_FILE``. Empty: a dev key
    #: file in ``var/`` (dev mode only).
    secret_keys: KeyringSpec = field(
        default="", metadata=documented_default("dev: generated into var/; production: required")
    )
    #: How often the sync runner (consumers/sync) looks for integrations that are due.
    sync_tick_seconds: Seconds = 1.0
    #: The first pause after a failed sync run; it doubles per failure in a row
    #: (with jitter) up to ``sync_backoff_cap``.
    sync_backoff_base: Seconds = 2.0
    #: The longest pause between failed sync runs.
    sync_backoff_cap: Seconds = 300.0
    #: Failed runs in a row that open an integration's circuit (state ``circuit_open``).
    sync_circuit_failures: Positive = 5
    #: How long an open circuit stays open before one half-open run.
    sync_circuit_seconds: Seconds = 120.0
    #: Deadline of one request to a third-party API.
    sync_request_timeout: Seconds = 15.0
    #: The largest third-party answer read; a larger one fails the run.
    sync_max_response_bytes: Positive = 8 * 1024 * 1024
    #: The most items one page (polled or an inbound webhook) may carry.
    sync_max_page_items: Positive = 1000
    #: Pages one run reads at most; the next run goes on from the stored cursor.
    sync_max_pages_per_run: Positive = 500
    #: How long one run may read pages before it stops (and the next goes on).
    sync_max_run_seconds: Seconds = 120.0
    #: Integrations one sync runner process syncs at once.
    sync_concurrency: Positive = 4
    #: How long a claimed run holds its integration without progress (renewed per
    #: page); a crashed worker's integration is free again after it.
    sync_lease_seconds: Seconds = 60.0
    #: The events topic: the log of record.
    events_topic: TopicName = EVENTS_TOPIC
    #: The dead-letter topic: the dead letters (events the projector could not
    #: apply), with their error.
    dlq_topic: TopicName = DLQ_TOPIC
    #: Partitions of each topic when ``eventfold infra up`` creates them.
    topic_partitions: Positive = 8
    #: The prefix of every consumer group name (``<prefix>.projector``, ...).
    consumer_group_prefix: TopicName = "eventfold"
    #: How long a Kafka processor that stopped heartbeating (killed, hung, cut off)
    #: keeps its partitions before its group hands them to the others: the pause a
    #: crash causes. Lower takes over sooner but a process whose event loop stalls
    #: that long (a long batch, swapping) is thrown out and rejoins. At least the
    #: broker's ``group.min.session.timeout.ms`` (6 s by default; 1 s on the local
    #: stack). A clean stop leaves its group at once, whatever this is.
    kafka_session_timeout_seconds: SessionTimeout = 10.0
    max_body_bytes: int = field(default=1024 * 1024, metadata=INTERNAL)
    #: Requests one HTTP process answers at once; past it, 503 with ``Retry-After``
    #: at once (streams, health and metrics exempt). 0: no limit.
    http_max_in_flight: Count = 256
    max_batch_events: int = field(default=1000, metadata=INTERNAL)
    #: Origins allowed by CORS (``*`` for any); empty turns CORS off.
    cors_origins: CommaList = ()
    #: Responses at least this large are gzip-compressed for clients that accept it.
    compress_min_bytes: Count = 1024
    #: Events per projector transaction at most.
    projector_batch_size: Positive = 2000
    #: Prepared statements kept per PostgreSQL connection. Each tenant's schema
    #: makes its own statement text, so this bounds how many tenants a batch can
    #: touch before statements are prepared again on every use.
    pg_statement_cache_size: Count = 1024
    #: Longest a tenant's statement or lock wait may take in a batch before the
    #: tenant is deferred (retried in the background) so the others go on.
    projector_tenant_budget_ms: Positive = 2000
    consistency_wait_seconds: float = field(default=5.0, metadata=INTERNAL)
    #: Reads of one tenant that may wait for a consistency token at once in one
    #: process; past it, 429 at once (0: no limit).
    consistency_waits_per_tenant: Count = 64
    #: How long ``/health/ready`` answers from its last probe (0: probe every call).
    health_cache_seconds: Seconds = 1.0
    #: The Redis record cache (reads Redis first); off makes every read go to PostgreSQL.
    cache_enabled: Flag = True
    #: How long a cached record lives without a refresh: bounds staleness if one was missed.
    cache_ttl_seconds: Positive = 3600
    #: Deadline of each cache call to Redis; past it the call counts as a breaker failure.
    cache_timeout_ms: Positive = 250
    #: Consecutive failures that open the cache's circuit breaker.
    cache_breaker_failures: int = field(default=3, metadata=INTERNAL)
    #: How long the open cache breaker waits before it probes Redis again (reads go
    #: to PostgreSQL meanwhile, readiness says ``degraded``).
    cache_breaker_cooldown_seconds: Seconds = 2.0
    #: A heartbeat comment on each idle SSE ``/stream`` this often.
    stream_heartbeat_seconds: Seconds = 15.0
    #: Events an SSE client may fall behind before it is disconnected as too slow (it
    #: resumes with ``Last-Event-ID``).
    stream_queue_max: Positive = 1000
    #: Bytes of events an SSE client may fall behind before it is disconnected (one
    #: event larger than this still goes to a client that keeps up).
    stream_queue_max_bytes: Positive = 4 * 1024 * 1024
    #: Streams one tenant may have open across every API instance (429 past it); 0: no cap.
    stream_max_per_tenant: Count = 100
    #: How often an open stream checks its credentials again (it ends once they are
    #: refused); a number > 0, as a rate's.
    stream_recheck_seconds: Rate = 1.0
    #: An archive segment closes before it would pass this many (uncompressed) bytes
    #: (see src/consumers/archiver).
    archive_segment_bytes: Positive = 8 * 1024 * 1024
    #: An archive segment closes once its records span this many seconds.
    archive_segment_seconds: Seconds = 300.0
    #: How long after an analytics window closes a late event still counts in it
    #: (src/consumers/analytics); later it is dropped for that window.
    analytics_grace_seconds: Count = 60
    #: How long served 1-minute window counts are kept in Redis.
    analytics_retention_1m_seconds: Positive = 2 * 86400
    #: How long served 1-hour window counts are kept in Redis.
    analytics_retention_1h_seconds: Positive = 35 * 86400
    #: The least time between two copies of changed counts to Redis under load.
    analytics_flush_ms: Count = 200
    #: How often settled windows are pruned from the analytics tables.
    analytics_prune_seconds: Seconds = 60.0
    #: The least level of the JSON log lines on stderr.
    log_level: LogLevel = "INFO"
    #: One JSON line per answered HTTP request (method, route template, status,
    #: duration, tenant, request id) at INFO, logger ``eventfold.access``; false: none.
    access_log: Flag = True
    #: Which services the user pointed at their own instance (infra skips those).
    external: frozenset[str] = field(default_factory=frozenset, metadata=INTERNAL)

    @property
    def var_dir(self) -> Path:
        """Data, logs and pid files of the local stack."""
        return self.home / "var"

    @property
    def directory_url(self) -> str:
        """The URL of ``main``, the server holding the placement directory."""
        return self.home_database_url or self.database_url

    @property
    def server_urls(self) -> dict[str, str]:
        """Every database server by name, ``main`` first."""
        urls = {HOME_SERVER: self.directory_url}
        for spec in self.database_servers:
            name, _, url = spec.partition("=")
            urls[name.strip()] = url.strip()
        return urls

    def on_server(self, name: str) -> Settings:
        """These settings for a processor working on server ``name``'s tenants: its
        pool connects there (``database_url``), the directory stays on ``main``."""
        if name == HOME_SERVER:
            return dataclasses.replace(self, database_server="")
        return dataclasses.replace(
            self,
            database_url=self.server_urls[name],
            database_server=name,
            home_database_url=self.directory_url,
        )

    @property
    def kafka_replication_factor(self) -> int:
        """Replicas of each topic Eventfold creates: one per broker, at most 3."""
        return min(self.kafka_brokers, 3)

    @property
    def kafka_min_insync_replicas(self) -> int:
        """Copies an acks=all write waits for: all but one replica (at least 1)."""
        return max(1, self.kafka_replication_factor - 1)

    @property
    def cache_url(self) -> str:
        """The record cache's Redis: ``cache_redis_url``, else the database after
        ``redis_url``'s on the same server (keys apart, flushable apart)."""
        return self.cache_redis_url or next_database(self.redis_url)

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """``redis_sentinels`` as (host, port) pairs."""
        return [_host_port(address) for address in self.redis_sentinels]

    def through_sentinel(self, url: str) -> bool:
        """Whether a client of ``url`` reaches the master the sentinels name.

        So it does when sentinels are set and ``url`` names ``redis_url``'s server
        (``cache_url`` by default does: the next database); a URL naming another
        server (an own cache server) is dialled as it stands.
        """
        return bool(self.redis_sentinels) and _server(url) == _server(self.redis_url)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build and check settings from ``env`` (default: the process environment).

        Raises :class:`SettingsError` for the first value that is not accepted,
        and in production mode for a missing, short or published secret.
        """
        env = os.environ if env is None else env
        values, origin = _read_env(env)
        values.setdefault("home", str(project_home()))
        values.setdefault("mode", "dev" if source_checkout() else "production")
        values["external"] = frozenset(
            name
            for name, var in (
                ("kafka", "EVENTFOLD_KAFKA_BOOTSTRAP"),
                ("postgres", "EVENTFOLD_DATABASE_URL"),
                ("redis", "EVENTFOLD_REDIS_URL"),
                ("s3", "EVENTFOLD_S3_ENDPOINT"),
            )
            if env.get(var)
        )
        try:
            settings = _adapter().validate_python(values)
        except ValidationError as exc:
            raise _first_error(exc, values, origin) from None
        settings = dataclasses.replace(settings, home=settings.home.resolve())
        if settings.kafka_brokers > 1 and not env.get("EVENTFOLD_KAFKA_BOOTSTRAP"):
            settings = dataclasses.replace(
                settings,
                kafka_bootstrap=cluster_bootstrap(settings.kafka_bootstrap, settings.kafka_brokers),
            )
        if not settings.jwt_secret:
            if settings.mode != "dev":
                raise SettingsError(
                    "EVENTFOLD_JWT_SECRET", "unset in production mode", _SECRET_ACCEPTS
                )
            settings = dataclasses.replace(settings, jwt_secret=_dev_jwt_secret(settings.home))
        if settings.mode == "production":
            _check_production(settings)
        if settings.redis_sentinels and urlsplit(settings.redis_url).scheme == "unix":
            raise SettingsError(
                "EVENTFOLD_REDIS_URL",
                "a unix:// URL, while EVENTFOLD_REDIS_SENTINELS is set",
                "a redis:// or rediss:// URL with Sentinel (its database and password are used)",
            )
        return settings


def _server(url: str) -> tuple[str, int | str]:
    """The server a Redis URL names: host and port, or a unix socket's path."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return "", parts.path
    return (parts.hostname or "127.0.0.1"), parts.port or 6379


_SECRET_ACCEPTS = (
    f"a random secret of at least {MIN_SECRET_BYTES} bytes in production "
    "(make one with: openssl rand -hex 32)"
)
_KEYS_ACCEPTS = (
    "id:base64key[,id:base64key...] in production "
    '(make one with: echo "k1:$(openssl rand -base64 32)")'
)


def _check_production(settings: Settings) -> None:
    """Production refuses secrets anyone could know and sealing keys of its own making."""
    secret = settings.jwt_secret
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise SettingsError(
            "EVENTFOLD_JWT_SECRET", f"only {len(secret.encode())} bytes long", _SECRET_ACCEPTS
        )
    lowered = secret.lower()
    if secret in KNOWN_SECRETS or any(word in lowered for word in PLACEHOLDER_WORDS):
        raise SettingsError(
            "EVENTFOLD_JWT_SECRET", "a published example or placeholder value", _SECRET_ACCEPTS
        )
    if not settings.secret_keys:
        # Each process would seal with a key of its own: secrets unreadable elsewhere.
        raise SettingsError("EVENTFOLD_SECRET_KEYS", "unset in production mode", _KEYS_ACCEPTS)


@functools.cache
def _env_variables() -> dict[str, str]:
    """Field name -> the variable it is read from."""
    return {
        f.name: PREFIX + f.name.upper()
        for f in dataclasses.fields(Settings)
        if f.metadata.get("env", True)
    }


def variables() -> dict[str, str]:
    """Field name -> the environment variable it is read from: every documented setting."""
    return dict(_env_variables())


def accepts(name: str) -> str:
    """What the setting of field ``name`` accepts, in the words of its error line."""
    return _accepts_by_field()[name]


def _read_env(env: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Raw values of the variables that are set (empty counts as unset), and their names."""
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for name, var in _env_variables().items():
        raw = env.get(var, "").strip()
        if raw:
            values[name] = raw
            origin[name] = var
    keys_var = PREFIX + "SECRET_KEYS_FILE"
    keys_file = env.get(keys_var, "").strip()
    if keys_file and "secret_keys" not in values:
        origin["secret_keys"] = keys_var
        try:
            values["secret_keys"] = Path(keys_file).expanduser().read_text().strip()
        except OSError as exc:
            raise SettingsError(
                keys_var,
                f"cannot read {keys_file} ({exc.strerror})",
                "the path of a readable file holding id:base64key[,id:base64key...]",
            ) from None
    return values, origin


@functools.cache
def _adapter() -> TypeAdapter[Settings]:
    return TypeAdapter(Settings)


@functools.cache
def _accepts_by_field() -> dict[str, str]:
    """What each field accepts: its type's :class:`Accepts`, else words for the plain type."""
    plain = {
        int: "a whole number",
        float: "a number",
        bool: "true or false",
        str: "text",
        Path: "a path",
    }
    hints = typing.get_type_hints(Settings, include_extras=True)
    found: dict[str, str] = {}
    for name, hint in hints.items():
        marks = [m for m in getattr(hint, "__metadata__", ()) if isinstance(m, Accepts)]
        base = typing.get_args(hint)[0] if marks or hasattr(hint, "__metadata__") else hint
        found[name] = marks[0].text if marks else plain.get(base, "another value")
    return found


#: Variables whose value is never echoed in an error line (it may be a credential).
_SENSITIVE = ("SECRET", "KEY", "PASSWORD", "TOKEN", "URL", "CREDENTIAL")


def _first_error(
    exc: ValidationError, values: Mapping[str, Any], origin: Mapping[str, str]
) -> SettingsError:
    error = exc.errors(include_url=False)[0]
    name = str(error["loc"][0]) if error["loc"] else "home"
    variable = origin.get(name) or _env_variables().get(name, PREFIX + name.upper())
    raw = values.get(name)
    if isinstance(raw, str) and not any(word in variable for word in _SENSITIVE):
        problem = f"{raw[:60]!r} is not valid"
    else:
        problem = "the value is not valid"
    return SettingsError(variable, problem, _accepts_by_field().get(name, "another value"))


def _dev_jwt_secret(home: Path) -> str:
    """A per-checkout random secret, kept in ``var/`` so every local process agrees.

    Production sets ``EVENTFOLD_JWT_SECRET``; this only spares a newcomer the step.
    """
    return read_or_create(home / "var" / "jwt-secret", lambda: secrets.token_urlsafe(48))

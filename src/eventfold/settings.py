"""Settings built from the environment (12-factor), each with a local default.

One frozen dataclass read once per process; every component receives the
settings it needs instead of reading ``os.environ`` itself, so tests can build
their own without touching the process environment.

Every field is read from ``EVENTFOLD_<FIELD NAME>`` (fields marked
:data:`INTERNAL` are not) and checked at start by pydantic against the field's
type: a bad value raises :class:`SettingsError`, one line naming the variable
and what it accepts, which the CLI prints before exiting with status 2. A new
field needs nothing but its declaration; a constrained type (:data:`Port`,
:data:`Seconds`, ...) also says what it accepts.

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
HttpUrl = Annotated[str, _url_with("http", "https"), Accepts("an http:// or https:// URL")]
Networks = Annotated[
    tuple[str, ...],
    BeforeValidator(_comma_list),
    AfterValidator(_networks),
    Accepts("IP addresses or CIDRs, comma-separated"),
]
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

    home: Path
    #: ``dev`` generates missing secrets into ``var/``; ``production`` refuses to start
    #: without them. Built directly (tests), settings are production: safe by default.
    mode: Mode = "production"
    http_host: str = "127.0.0.1"
    http_port: Port = 8080
    kafka_bootstrap: BootstrapServers = "127.0.0.1:9092"
    database_url: PostgresUrl = "postgresql://eventfold:eventfold@127.0.0.1:5432/eventfold"
    #: What must not vanish (rate-limit buckets, dedup keys, analytics windows, stream
    #: slots): a server that never evicts (``maxmemory-policy noeviction``).
    redis_url: RedisUrl = "redis://127.0.0.1:6379/0"
    #: The record cache (entries, tombstones, hot keys), which may be evicted: a server
    #: with ``maxmemory-policy allkeys-lru`` of its own. Unset: the next database of
    #: ``redis_url``'s server (``/0`` -> ``/1``), see :attr:`cache_url`.
    cache_redis_url: RedisUrl = ""
    s3_endpoint: HttpUrl = "http://127.0.0.1:9000"
    s3_bucket: str = "eventfold-archive"
    s3_access_key: str = "eventfold"
    s3_secret_key: str = "eventfold-secret"  # noqa: S105 - local dev default only
    s3_region: str = "us-east-1"
    jwt_secret: str = ""
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    #: RS256: a PEM public key, and/or a JWKS file (keys picked by ``kid``).
    jwt_public_key_file: KeyFile = None
    jwt_jwks_file: KeyFile = None
    #: Clock skew tolerated on ``exp``/``iat``/``nbf``.
    jwt_leeway_seconds: Count = 30
    #: A tenant's token bucket when its ``limits`` do not say.
    rate_limit_default_rps: Rate = 100.0
    rate_limit_default_burst: Positive = 200
    #: Failed authentications a client address may make at once, and per second after
    #: that; past them its requests are 429 before any credential check (0: no limit).
    auth_failure_burst: Count = 20
    auth_failure_per_second: Rate = 1.0
    #: Proxies (addresses or CIDRs) whose ``X-Forwarded-For`` names the client address.
    trusted_proxies: Networks = ()
    webhook_allow_hosts: CommaList = ()
    webhook_retry_schedule: RetrySchedule = (5, 30, 120, 600, 3600)
    #: Deadline of one webhook delivery attempt (connect, send, read the answer).
    webhook_timeout_seconds: Seconds = 10.0
    #: Keys sealing secrets at rest (``id:base64key,...``, first seals; see
    #: eventfold.sealing), or ``EVENTFOLD_SECRET_KEYS_FILE``. Empty: a dev key
    #: file in ``var/`` (dev mode only).
    secret_keys: KeyringSpec = ""
    #: The sync runner (consumers/sync): how often it looks for due integrations,
    #: backoff after a failure (base * 2^n, capped, with jitter), the failures in
    #: a row that open the circuit and how long it stays open, and the bounds of
    #: one request (seconds, bytes, items) and of one run (pages, seconds).
    sync_tick_seconds: Seconds = 1.0
    sync_backoff_base: Seconds = 2.0
    sync_backoff_cap: Seconds = 300.0
    sync_circuit_failures: Positive = 5
    sync_circuit_seconds: Seconds = 120.0
    sync_request_timeout: Seconds = 15.0
    sync_max_response_bytes: Positive = 8 * 1024 * 1024
    sync_max_page_items: Positive = 1000
    sync_max_pages_per_run: Positive = 500
    sync_max_run_seconds: Seconds = 120.0
    sync_concurrency: Positive = 4
    #: How long a claimed run holds its integration without progress (renewed per
    #: page); a crashed worker's integration is free again after it.
    sync_lease_seconds: Seconds = 60.0
    events_topic: TopicName = EVENTS_TOPIC
    dlq_topic: TopicName = DLQ_TOPIC
    topic_partitions: Positive = 8
    consumer_group_prefix: TopicName = "eventfold"
    max_body_bytes: int = field(default=1024 * 1024, metadata=INTERNAL)
    #: Requests one HTTP process answers at once; past it, 503 with ``Retry-After``
    #: at once (streams, health and metrics exempt). 0: no limit.
    http_max_in_flight: Count = 256
    max_batch_events: int = field(default=1000, metadata=INTERNAL)
    #: Origins allowed by CORS (``*`` for any); empty turns CORS off.
    cors_origins: CommaList = ()
    #: Responses at least this large are gzip-compressed for clients that accept it.
    compress_min_bytes: Count = 1024
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
    #: Consecutive failures that open the cache's circuit breaker, and its cooldown.
    cache_breaker_failures: int = field(default=3, metadata=INTERNAL)
    cache_breaker_cooldown_seconds: Seconds = 2.0
    #: SSE ``/stream``: a heartbeat comment this often, and the events (and bytes) a
    #: client may have waiting before it is disconnected as too slow.
    stream_heartbeat_seconds: Seconds = 15.0
    stream_queue_max: Positive = 1000
    stream_queue_max_bytes: Positive = 4 * 1024 * 1024
    #: Streams one tenant may have open across every API instance (429 past it); 0: no cap.
    stream_max_per_tenant: Count = 100
    #: How often an open stream checks its credentials again (it ends once they are
    #: refused); a number > 0, as a rate's.
    stream_recheck_seconds: Rate = 1.0
    #: An archive segment closes before it would pass this many (uncompressed) bytes,
    #: or once its records span this many seconds (see src/consumers/archiver).
    archive_segment_bytes: Positive = 8 * 1024 * 1024
    archive_segment_seconds: Seconds = 300.0
    #: Analytics (src/consumers/analytics): how long after a window closes a late event
    #: still counts, how long window results are kept, the least time between two
    #: copies to Redis, how often settled windows are pruned from the faust tables.
    analytics_grace_seconds: Count = 60
    analytics_retention_1m_seconds: Positive = 2 * 86400
    analytics_retention_1h_seconds: Positive = 35 * 86400
    analytics_flush_ms: Count = 200
    analytics_prune_seconds: Seconds = 60.0
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
    def cache_url(self) -> str:
        """The record cache's Redis: ``cache_redis_url``, else the database after
        ``redis_url``'s on the same server (keys apart, flushable apart)."""
        return self.cache_redis_url or next_database(self.redis_url)

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
        if not settings.jwt_secret:
            if settings.mode != "dev":
                raise SettingsError(
                    "EVENTFOLD_JWT_SECRET", "unset in production mode", _SECRET_ACCEPTS
                )
            settings = dataclasses.replace(settings, jwt_secret=_dev_jwt_secret(settings.home))
        if settings.mode == "production":
            _check_production(settings)
        return settings


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
    plain = {int: "a whole number", float: "a number", bool: "true or false", str: "text"}
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

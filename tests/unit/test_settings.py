"""Settings from an explicit environment mapping (eventfold.settings)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from eventfold import settings as settings_module
from eventfold.kafka import heartbeat_ms, make_consumer
from eventfold.sealing import new_key_spec
from eventfold.settings import Settings, SettingsError, next_database

GOOD_SECRET = "3f9a1c0e6b7d48a2b5e4c1f0d9a8b7c6e5f4a3b2c1d0e9f8"


def env(tmp_path: Path, **values: str) -> dict[str, str]:
    return {"EVENTFOLD_HOME": str(tmp_path), **values}


def production(tmp_path: Path, **values: str) -> dict[str, str]:
    """A production environment with acceptable secrets, ``values`` overriding."""
    base = {
        "EVENTFOLD_MODE": "production",
        "EVENTFOLD_JWT_SECRET": GOOD_SECRET,
        "EVENTFOLD_SECRET_KEYS": new_key_spec("k1"),
    }
    return env(tmp_path, **{**base, **values})


def test_defaults_from_the_contract(tmp_path: Path) -> None:
    s = Settings.from_env(env(tmp_path))
    assert s.home == tmp_path.resolve()
    assert s.http_host == "127.0.0.1"
    assert s.http_port == 8080
    assert s.kafka_bootstrap == "127.0.0.1:9092"
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert s.s3_bucket == "eventfold-archive"
    assert s.webhook_allow_hosts == ()
    assert s.webhook_retry_schedule == (5, 30, 120, 600, 3600)
    assert s.external == frozenset()
    assert s.var_dir == tmp_path.resolve() / "var"
    assert s.mode == "dev"  # a source checkout
    assert s.access_log is True


def test_the_cache_has_its_own_redis_database_or_server(tmp_path: Path) -> None:
    assert Settings.from_env(env(tmp_path)).cache_url == "redis://127.0.0.1:6379/1"
    own = Settings.from_env(env(tmp_path, EVENTFOLD_CACHE_REDIS_URL="redis://lru:6379/0"))
    assert (own.redis_url, own.cache_url) == ("redis://127.0.0.1:6379/0", "redis://lru:6379/0")
    state = Settings.from_env(env(tmp_path, EVENTFOLD_REDIS_URL="rediss://:p%40w@r:6380/4?x=1"))
    assert state.cache_url == "rediss://:p%40w@r:6380/5?x=1"  # same server and credentials
    assert next_database("redis://r") == "redis://r/1"
    assert next_database("unix:///run/redis.sock?db=2&password=p") == (
        "unix:///run/redis.sock?db=3&password=p"
    )
    with pytest.raises(SettingsError, match="EVENTFOLD_CACHE_REDIS_URL"):
        Settings.from_env(env(tmp_path, EVENTFOLD_CACHE_REDIS_URL="http://lru"))


def test_overrides(tmp_path: Path) -> None:
    s = Settings.from_env(
        env(
            tmp_path,
            EVENTFOLD_HTTP_HOST="0.0.0.0",
            EVENTFOLD_HTTP_PORT="9999",
            EVENTFOLD_HTTP_MAX_IN_FLIGHT="64",
            EVENTFOLD_KAFKA_BOOTSTRAP="k1:9092,k2:9092",
            EVENTFOLD_DATABASE_URL="postgresql://u:p@db/x",
            EVENTFOLD_REDIS_URL="redis://cache:6379/2",
            EVENTFOLD_S3_ENDPOINT="http://s3:9000",
            EVENTFOLD_S3_BUCKET="bucket-x",
            EVENTFOLD_JWT_SECRET="jwt-from-env",
            EVENTFOLD_JWT_ISSUER="iss",
            EVENTFOLD_JWT_AUDIENCE="aud",
            EVENTFOLD_WEBHOOK_ALLOW_HOSTS=" hooks.local , 10.0.0.0/8,,",
            EVENTFOLD_LOG_LEVEL="debug",
            EVENTFOLD_ACCESS_LOG="off",
        )
    )
    assert (s.http_host, s.http_port) == ("0.0.0.0", 9999)
    assert s.http_max_in_flight == 64
    assert s.kafka_bootstrap == "k1:9092,k2:9092"
    assert s.database_url == "postgresql://u:p@db/x"
    assert s.redis_url == "redis://cache:6379/2"
    assert s.s3_endpoint == "http://s3:9000"
    assert s.s3_bucket == "bucket-x"
    assert s.jwt_secret == "jwt-from-env"
    assert (s.jwt_issuer, s.jwt_audience) == ("iss", "aud")
    assert s.webhook_allow_hosts == ("hooks.local", "10.0.0.0/8")
    assert s.log_level == "DEBUG"
    assert s.access_log is False
    assert s.external == frozenset({"kafka", "postgres", "redis", "s3"})
    assert not (tmp_path / "var" / "jwt-secret").exists()


@pytest.mark.parametrize(
    ("variable", "value", "service"),
    [
        ("EVENTFOLD_KAFKA_BOOTSTRAP", "elsewhere", "kafka"),
        ("EVENTFOLD_DATABASE_URL", "postgresql://u:p@elsewhere/db", "postgres"),
        ("EVENTFOLD_REDIS_URL", "redis://elsewhere", "redis"),
        ("EVENTFOLD_S3_ENDPOINT", "https://elsewhere", "s3"),
    ],
)
def test_external_is_set_only_for_the_variables_given(
    tmp_path: Path, variable: str, value: str, service: str
) -> None:
    assert Settings.from_env(env(tmp_path, **{variable: value})).external == {service}


def test_empty_values_count_as_unset(tmp_path: Path) -> None:
    s = Settings.from_env(
        env(tmp_path, EVENTFOLD_KAFKA_BOOTSTRAP="", EVENTFOLD_WEBHOOK_RETRY_SCHEDULE="")
    )
    assert s.external == frozenset()
    assert s.kafka_bootstrap == "127.0.0.1:9092"
    assert s.webhook_retry_schedule == (5, 30, 120, 600, 3600)


def test_unrelated_variables_do_not_mark_services_external(tmp_path: Path) -> None:
    s = Settings.from_env(env(tmp_path, EVENTFOLD_S3_BUCKET="b", EVENTFOLD_HTTP_PORT="1"))
    assert s.external == frozenset()


@pytest.mark.parametrize(
    ("value", "schedule"),
    [
        ("5,30,120", (5, 30, 120)),
        (" 1 , 2 ,3 ", (1, 2, 3)),
        ("60", (60,)),
        ("1,,2,", (1, 2)),
        ("0.2,0.5,1", (0.2, 0.5, 1)),
    ],
)
def test_retry_schedule_parsing(tmp_path: Path, value: str, schedule: tuple[float, ...]) -> None:
    s = Settings.from_env(env(tmp_path, EVENTFOLD_WEBHOOK_RETRY_SCHEDULE=value))
    assert s.webhook_retry_schedule == schedule


@pytest.mark.parametrize(
    ("variable", "value", "accepts"),
    [
        ("EVENTFOLD_WEBHOOK_RETRY_SCHEDULE", "soon", "seconds >= 0, comma-separated"),
        ("EVENTFOLD_WEBHOOK_RETRY_SCHEDULE", "5,x", "fractions allowed, e.g. 0.2,0.5,1"),
        ("EVENTFOLD_WEBHOOK_RETRY_SCHEDULE", "1,-2", "seconds >= 0"),
        ("EVENTFOLD_WEBHOOK_RETRY_SCHEDULE", ",", "comma-separated"),
        ("EVENTFOLD_HTTP_PORT", "eighty", "a TCP port number (0-65535)"),
        ("EVENTFOLD_HTTP_PORT", "70000", "a TCP port number (0-65535)"),
        ("EVENTFOLD_HTTP_MAX_IN_FLIGHT", "-1", "a whole number >= 0"),
        ("EVENTFOLD_PROJECTOR_BATCH_SIZE", "0", "a whole number >= 1"),
        ("EVENTFOLD_SYNC_TICK_SECONDS", "1s", "seconds, a number >= 0"),
        ("EVENTFOLD_WEBHOOK_TIMEOUT_SECONDS", "nan", "seconds, a number >= 0"),
        ("EVENTFOLD_RATE_LIMIT_DEFAULT_RPS", "0", "a number > 0"),
        ("EVENTFOLD_CACHE_ENABLED", "maybe", "true or false"),
        ("EVENTFOLD_LOG_LEVEL", "loud", "one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
        ("EVENTFOLD_MODE", "prod", "dev or production"),
        ("EVENTFOLD_DATABASE_URL", "mysql://db/x", "a postgresql://"),
        ("EVENTFOLD_REDIS_URL", "localhost:6379", "a redis://"),
        ("EVENTFOLD_S3_ENDPOINT", "ftp://s3", "an http:// or https:// URL"),
        ("EVENTFOLD_KAFKA_BOOTSTRAP", "k1:port", "host[:port] pairs"),
        ("EVENTFOLD_KAFKA_BROKERS", "0", "a whole number from 1 to 9"),
        ("EVENTFOLD_KAFKA_SESSION_TIMEOUT_SECONDS", "0.5", "seconds from 1 to 1800"),
        ("EVENTFOLD_KAFKA_BROKERS", "10", "a whole number from 1 to 9"),
        ("EVENTFOLD_EVENTS_TOPIC", "no spaces", "a Kafka topic or group name"),
        ("EVENTFOLD_JWT_JWKS_FILE", "/no/such/jwks.json", "the path of an existing file"),
        ("EVENTFOLD_SECRET_KEYS", "k1:not-base64", "id:base64key"),
        ("EVENTFOLD_SECRET_KEYS_FILE", "/no/such/keys", "a readable file"),
    ],
)
def test_a_bad_value_names_the_variable_and_what_it_accepts(
    tmp_path: Path, variable: str, value: str, accepts: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env(tmp_path, **{variable: value}))
    line = str(caught.value)
    assert caught.value.variable == variable
    assert line.startswith(f"{variable}: ")
    assert accepts in line
    assert "\n" not in line
    assert not (tmp_path / "var").exists()  # nothing is made before every value is checked


@pytest.mark.parametrize(
    "variable", ["EVENTFOLD_DATABASE_URL", "EVENTFOLD_REDIS_URL", "EVENTFOLD_SECRET_KEYS"]
)
def test_a_bad_credential_is_not_echoed(tmp_path: Path, variable: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env(tmp_path, **{variable: "hunter2-is-my-password"}))
    assert "hunter2" not in str(caught.value)


def test_the_secret_keys_file_is_read(tmp_path: Path) -> None:
    spec = new_key_spec("k9")
    (tmp_path / "keys").write_text(spec + "\n")
    s = Settings.from_env(env(tmp_path, EVENTFOLD_SECRET_KEYS_FILE=str(tmp_path / "keys")))
    assert s.secret_keys == spec


def test_production_starts_with_good_secrets_and_writes_nothing(tmp_path: Path) -> None:
    s = Settings.from_env(production(tmp_path))
    assert (s.mode, s.jwt_secret) == ("production", GOOD_SECRET)
    assert not (tmp_path / "var").exists()


@pytest.mark.parametrize(
    ("variable", "value", "problem"),
    [
        ("EVENTFOLD_JWT_SECRET", "", "unset in production mode"),
        ("EVENTFOLD_JWT_SECRET", "x" * 31, "only 31 bytes long"),
        ("EVENTFOLD_JWT_SECRET", "dev-only-insecure-jwt-secret-change-me", "published example"),
        ("EVENTFOLD_JWT_SECRET", "please-CHANGEME-before-going-live-2026", "placeholder"),
        ("EVENTFOLD_SECRET_KEYS", "", "unset in production mode"),
    ],
)
def test_production_refuses_a_missing_short_or_known_secret(
    tmp_path: Path, variable: str, value: str, problem: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(production(tmp_path, **{variable: value}))
    assert caught.value.variable == variable
    assert problem in caught.value.problem
    assert not (tmp_path / "var").exists()  # no dev secret or key made in its place


def test_internal_knobs_are_not_read_from_the_environment(tmp_path: Path) -> None:
    s = Settings.from_env(env(tmp_path, EVENTFOLD_MAX_BATCH_EVENTS="5", EVENTFOLD_EXTERNAL="x"))
    assert (s.max_batch_events, s.external) == (1000, frozenset())


def test_the_mode_ignores_case(tmp_path: Path) -> None:
    assert Settings.from_env(production(tmp_path, EVENTFOLD_MODE="Production")).mode == (
        "production"
    )


def test_dev_mode_accepts_any_explicit_secret(tmp_path: Path) -> None:
    s = Settings.from_env(env(tmp_path, EVENTFOLD_MODE="dev", EVENTFOLD_JWT_SECRET="short"))
    assert s.jwt_secret == "short"


def test_an_installed_package_defaults_to_production(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings_module, "source_checkout", lambda: None)
    with pytest.raises(SettingsError, match="EVENTFOLD_JWT_SECRET: unset in production mode"):
        Settings.from_env(env(tmp_path))
    assert Settings.from_env(env(tmp_path, EVENTFOLD_MODE="dev")).mode == "dev"


def test_dev_jwt_secret_is_written_under_home_and_stable(tmp_path: Path) -> None:
    first = Settings.from_env(env(tmp_path))
    second = Settings.from_env(env(tmp_path))
    path = tmp_path / "var" / "jwt-secret"
    assert path.is_file()
    assert first.jwt_secret
    assert len(first.jwt_secret) >= 32
    assert first.jwt_secret == second.jwt_secret == path.read_text().strip()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["jwt-secret"]
    assert first.mode == "dev"


def test_dev_jwt_secret_differs_between_homes(tmp_path: Path) -> None:
    a = Settings.from_env(env(tmp_path / "a")).jwt_secret
    b = Settings.from_env(env(tmp_path / "b")).jwt_secret
    assert a != b


def test_settings_are_frozen(tmp_path: Path) -> None:
    s = Settings.from_env(env(tmp_path, EVENTFOLD_JWT_SECRET="x"))
    with pytest.raises(AttributeError):
        s.http_port = 1  # type: ignore[misc]


def test_a_kafka_cluster_replicates_three_times_and_bootstraps_from_every_local_node(
    tmp_path: Path,
) -> None:
    one = Settings.from_env(env(tmp_path))
    assert (one.kafka_bootstrap, one.kafka_replication_factor) == ("127.0.0.1:9092", 1)
    assert one.kafka_min_insync_replicas == 1
    three = Settings.from_env(env(tmp_path, EVENTFOLD_KAFKA_BROKERS="3"))
    assert three.kafka_bootstrap == "127.0.0.1:9092,127.0.0.1:9094,127.0.0.1:9096"
    assert (three.kafka_replication_factor, three.kafka_min_insync_replicas) == (3, 2)
    five = Settings.from_env(env(tmp_path, EVENTFOLD_KAFKA_BROKERS="5"))
    assert (five.kafka_replication_factor, five.kafka_min_insync_replicas) == (3, 2)
    two = Settings.from_env(env(tmp_path, EVENTFOLD_KAFKA_BROKERS="2"))
    assert (two.kafka_replication_factor, two.kafka_min_insync_replicas) == (2, 1)
    # The user's own cluster: its bootstrap servers as given, the replicas as configured.
    own = Settings.from_env(
        env(tmp_path, EVENTFOLD_KAFKA_BROKERS="3", EVENTFOLD_KAFKA_BOOTSTRAP="k1:9092")
    )
    assert (own.kafka_bootstrap, own.kafka_replication_factor) == ("k1:9092", 3)


def test_redis_sentinels_are_parsed_and_name_the_server_they_replace(tmp_path: Path) -> None:
    plain = Settings.from_env(env(tmp_path))
    assert (plain.redis_sentinels, plain.redis_sentinel_service) == ((), "eventfold")
    assert not plain.through_sentinel(plain.redis_url)
    s = Settings.from_env(
        env(
            tmp_path,
            EVENTFOLD_REDIS_SENTINELS=" s1:26379, [::1]:26380,,10.0.0.3:26381 ",
            EVENTFOLD_REDIS_SENTINEL_SERVICE="main-redis",
            EVENTFOLD_REDIS_URL="redis://:pw@r:6379/4",
        )
    )
    assert s.redis_sentinels == ("s1:26379", "[::1]:26380", "10.0.0.3:26381")
    assert s.sentinel_addresses == [("s1", 26379), ("::1", 26380), ("10.0.0.3", 26381)]
    assert s.redis_sentinel_service == "main-redis"
    # The cache's database follows the same master, an own cache server does not.
    assert s.through_sentinel(s.redis_url)
    assert s.through_sentinel(s.cache_url)
    assert s.through_sentinel("redis://r/9")
    assert not s.through_sentinel("redis://lru:6379/0")
    own = Settings.from_env(
        env(tmp_path, EVENTFOLD_REDIS_SENTINELS="s1:26379", EVENTFOLD_CACHE_REDIS_URL="redis://lru")
    )
    assert own.through_sentinel(own.redis_url)
    assert not own.through_sentinel(own.cache_url)
    # Sentinels alone leave the local Redis managed (infra starts them beside it).
    assert own.external == frozenset()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("EVENTFOLD_REDIS_SENTINELS", "s1"),
        ("EVENTFOLD_REDIS_SENTINELS", "s1:26379,s2"),
        ("EVENTFOLD_REDIS_SENTINELS", ":26379"),
        ("EVENTFOLD_REDIS_SENTINELS", "s1:70000"),
        ("EVENTFOLD_REDIS_SENTINELS", "s1:0"),
        ("EVENTFOLD_REDIS_SENTINEL_SERVICE", "my master"),
    ],
)
def test_bad_sentinel_settings_name_the_variable(tmp_path: Path, variable: str, value: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env(tmp_path, **{variable: value}))
    assert caught.value.variable == variable
    assert str(caught.value).startswith(f"{variable}: {value!r} is not valid; it accepts ")


def test_sentinels_need_a_tcp_redis_url(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(
            env(
                tmp_path,
                EVENTFOLD_REDIS_SENTINELS="s1:26379",
                EVENTFOLD_REDIS_URL="unix:///run/redis.sock",
            )
        )
    assert caught.value.variable == "EVENTFOLD_REDIS_URL"
    assert "EVENTFOLD_REDIS_SENTINELS" in caught.value.problem


async def test_the_kafka_session_sets_the_consumers_session_and_heartbeat(tmp_path: Path) -> None:
    default = Settings.from_env(env(tmp_path))
    assert (default.kafka_session_timeout_seconds, heartbeat_ms(default)) == (10.0, 1000)
    short = Settings.from_env(env(tmp_path, EVENTFOLD_KAFKA_SESSION_TIMEOUT_SECONDS="3"))
    assert heartbeat_ms(short) == 300
    consumer = make_consumer(short, group="g", client_id="c", max_poll_records=10)
    assert (consumer._session_timeout_ms, consumer._heartbeat_interval_ms) == (3000, 300)

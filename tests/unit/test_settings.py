"""Settings from an explicit environment mapping (eventfold.settings)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from eventfold.settings import Settings


def env(tmp_path: Path, **values: str) -> dict[str, str]:
    return {"EVENTFOLD_HOME": str(tmp_path), **values}


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
    assert s.external == frozenset({"kafka", "postgres", "redis", "s3"})
    assert not (tmp_path / "var" / "jwt-secret").exists()


@pytest.mark.parametrize(
    ("variable", "service"),
    [
        ("EVENTFOLD_KAFKA_BOOTSTRAP", "kafka"),
        ("EVENTFOLD_DATABASE_URL", "postgres"),
        ("EVENTFOLD_REDIS_URL", "redis"),
        ("EVENTFOLD_S3_ENDPOINT", "s3"),
    ],
)
def test_external_is_set_only_for_the_variables_given(
    tmp_path: Path, variable: str, service: str
) -> None:
    assert Settings.from_env(env(tmp_path, **{variable: "elsewhere"})).external == {service}


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
    [("5,30,120", (5, 30, 120)), (" 1 , 2 ,3 ", (1, 2, 3)), ("60", (60,)), ("1,,2,", (1, 2))],
)
def test_retry_schedule_parsing(tmp_path: Path, value: str, schedule: tuple[int, ...]) -> None:
    s = Settings.from_env(env(tmp_path, EVENTFOLD_WEBHOOK_RETRY_SCHEDULE=value))
    assert s.webhook_retry_schedule == schedule


@pytest.mark.parametrize("value", ["5,x", "1.5"])
def test_malformed_retry_schedule_is_an_error(tmp_path: Path, value: str) -> None:
    with pytest.raises(ValueError, match="invalid literal"):
        Settings.from_env(env(tmp_path, EVENTFOLD_WEBHOOK_RETRY_SCHEDULE=value))


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


def test_dev_jwt_secret_differs_between_homes(tmp_path: Path) -> None:
    a = Settings.from_env(env(tmp_path / "a")).jwt_secret
    b = Settings.from_env(env(tmp_path / "b")).jwt_secret
    assert a != b


def test_settings_are_frozen(tmp_path: Path) -> None:
    s = Settings.from_env(env(tmp_path, EVENTFOLD_JWT_SECRET="x"))
    with pytest.raises(AttributeError):
        s.http_port = 1  # type: ignore[misc]

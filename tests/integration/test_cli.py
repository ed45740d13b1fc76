"""The `eventfold` command as scripts use it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from eventfold.auth import TokenVerifier
from eventfold.sealing import new_key_spec
from eventfold.settings import Settings

EVENTFOLD = str(Path(sys.executable).with_name("eventfold"))


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EVENTFOLD, *args], capture_output=True, text=True, timeout=60, env=env)


def test_token_verifies_with_the_configured_secret() -> None:
    out = run("token", "--tenant", "acme", "--roles", "reader,writer", "--ttl", "120")
    assert out.returncode == 0, out.stderr
    principal = TokenVerifier(Settings.from_env().jwt_secret).verify(out.stdout.strip())
    assert (principal.tenant, principal.roles) == ("acme", frozenset({"reader", "writer"}))


def test_token_json_and_bad_roles() -> None:
    out = run("token", "--tenant", "*", "--roles", "platform-admin", "--json")
    assert json.loads(out.stdout)["roles"] == ["platform-admin"]
    bad = run("token", "--tenant", "acme", "--roles", "superuser")
    assert bad.returncode == 2
    assert "unknown roles: superuser" in bad.stderr
    bound = run("token", "--tenant", "acme", "--roles", "platform-admin")
    assert bound.returncode == 2
    assert "platform-admin is granted only with tenant '*'" in bound.stderr


def test_infra_status_json(stack: Settings) -> None:
    out = run("infra", "status", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    services = {s["name"]: s for s in json.loads(out.stdout)}
    assert set(services) == {"postgres", "redis", "s3", "kafka"}
    assert all(s["running"] for s in services.values())
    assert services["kafka"]["address"] == "127.0.0.1:9092"


def test_infra_up_is_idempotent_on_a_running_stack(stack: Settings) -> None:
    out = run("infra", "up")
    assert out.returncode == 0, out.stdout + out.stderr


def test_infra_brokers_names_the_cluster_layout_and_refuses_to_mix_layouts(
    stack: Settings,
) -> None:
    out = run("infra", "status", "--brokers", "3", "--json")
    nodes = [s for s in json.loads(out.stdout) if s["name"].startswith("kafka")]
    assert [(s["name"], s["address"]) for s in nodes] == [
        ("kafka-1", "127.0.0.1:9092"),
        ("kafka-2", "127.0.0.1:9094"),
        ("kafka-3", "127.0.0.1:9096"),
    ]
    # The session's single node holds 9092: not a node of the cluster.
    assert nodes[0]["detail"] == "port taken by a process not started by us"
    assert out.returncode == 3
    mixed = run("infra", "up", "--brokers", "3")
    assert mixed.returncode == 1
    assert "kafka (another Kafka layout than EVENTFOLD_KAFKA_BROKERS=3" in mixed.stderr
    assert "eventfold infra down" in mixed.stderr
    own = run(
        "infra", "up", "--brokers", "3", env={**os.environ, "EVENTFOLD_KAFKA_BOOTSTRAP": "k:1"}
    )
    assert own.returncode == 2
    assert "--brokers sizes the local Kafka" in own.stderr
    assert run("infra", "status", "--brokers", "0").returncode == 2


def test_schemas_are_in_step() -> None:
    out = run("schemas", "check")
    assert out.returncode == 0, out.stderr


def _env(home: Path, **values: str) -> dict[str, str]:
    """The process environment without any EVENTFOLD_ variable, plus ``values``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("EVENTFOLD_")}
    return {**base, "EVENTFOLD_HOME": str(home), **values}


@pytest.mark.parametrize(
    ("values", "line"),
    [
        (
            {"EVENTFOLD_WEBHOOK_RETRY_SCHEDULE": "soon"},
            "eventfold: EVENTFOLD_WEBHOOK_RETRY_SCHEDULE: 'soon' is not valid; it accepts "
            "seconds >= 0, comma-separated (fractions allowed, e.g. 0.2,0.5,1)",
        ),
        (
            {"EVENTFOLD_MODE": "production"},
            "eventfold: EVENTFOLD_JWT_SECRET: unset in production mode; it accepts a random "
            "secret of at least 32 bytes in production (make one with: openssl rand -hex 32)",
        ),
        (
            {
                "EVENTFOLD_MODE": "production",
                "EVENTFOLD_JWT_SECRET": "dev-only-insecure-jwt-secret-change-me",
                "EVENTFOLD_SECRET_KEYS": new_key_spec("k1"),
            },
            "eventfold: EVENTFOLD_JWT_SECRET: a published example or placeholder value; it "
            "accepts a random secret of at least 32 bytes in production (make one with: "
            "openssl rand -hex 32)",
        ),
        (
            {"EVENTFOLD_MODE": "production", "EVENTFOLD_JWT_SECRET": "f" * 16},
            "eventfold: EVENTFOLD_JWT_SECRET: only 16 bytes long; it accepts a random secret "
            "of at least 32 bytes in production (make one with: openssl rand -hex 32)",
        ),
        (
            {"EVENTFOLD_MODE": "production", "EVENTFOLD_JWT_SECRET": "9c" * 24},
            "eventfold: EVENTFOLD_SECRET_KEYS: unset in production mode; it accepts "
            "id:base64key[,id:base64key...] in production "
            '(make one with: echo "k1:$(openssl rand -base64 32)")',
        ),
    ],
    ids=["bad-duration", "no-secret", "known-secret", "short-secret", "no-sealing-keys"],
)
def test_a_bad_setting_stops_the_command_with_one_line(
    tmp_path: Path, values: dict[str, str], line: str
) -> None:
    out = run("token", "--tenant", "acme", "--roles", "reader", env=_env(tmp_path, **values))
    assert (out.returncode, out.stdout, out.stderr) == (2, "", line + "\n")
    assert not (tmp_path / "var").exists()


def test_production_with_its_secrets_signs_with_them(tmp_path: Path) -> None:
    secret = "9c" * 24
    values = {
        "EVENTFOLD_MODE": "production",
        "EVENTFOLD_JWT_SECRET": secret,
        "EVENTFOLD_SECRET_KEYS": new_key_spec("k1"),
        "EVENTFOLD_WEBHOOK_RETRY_SCHEDULE": "0.2,0.5,1",
    }
    out = run("token", "--tenant", "acme", "--roles", "reader", env=_env(tmp_path, **values))
    assert out.returncode == 0, out.stderr
    assert TokenVerifier(secret).verify(out.stdout.strip()).tenant == "acme"
    assert not (tmp_path / "var").exists()

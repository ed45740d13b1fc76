"""The `eventfold` command as scripts use it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from eventfold.auth import TokenVerifier
from eventfold.settings import Settings

EVENTFOLD = str(Path(sys.executable).with_name("eventfold"))


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EVENTFOLD, *args], capture_output=True, text=True, timeout=60)


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


def test_schemas_are_in_step() -> None:
    out = run("schemas", "check")
    assert out.returncode == 0, out.stderr

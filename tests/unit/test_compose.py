"""docker-compose.yml runs every part and is safe as shipped (checked without a Docker engine).

The file is validated against the Compose specification's JSON Schema (vendored:
infra/compose/README.md), and every Eventfold command in it is parsed by the CLI's
own parser, so a renamed command or flag fails here rather than in a deployment.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from entrypoints.cli import parser
from entrypoints.registry import PROCESSORS
from eventfold.settings import Settings

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO / "infra" / "compose" / "compose-spec.json"
#: `${NAME}`, `${NAME:-default}`, `${NAME:?error}`: compose's interpolation.
VARIABLE = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(:?[-?])?([^}]*)\}")
#: The one HTTP entry point and its published port; nothing else is published.
HTTP = {"http": "8080"}


@pytest.fixture(scope="module")
def text() -> str:
    return (REPO / "docker-compose.yml").read_text()


@pytest.fixture(scope="module")
def compose(text: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(text)
    return doc


def eventfold_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services running the Eventfold image (built here)."""
    return {n: s for n, s in compose["services"].items() if s.get("image") == "eventfold:local"}


def parsed(command: list[str]) -> argparse.Namespace:
    """``command`` as ``eventfold`` would parse it; a test failure if it would not."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return parser().parse_args(command)
    except SystemExit:
        pytest.fail(f"`eventfold {' '.join(command)}` is no command: {err.getvalue()}")


def test_the_file_follows_the_compose_specification(compose: dict[str, Any]) -> None:
    schema = json.loads(SPEC.read_text())
    recorded = re.search(r"sha256 `([0-9a-f]{64})`", (SPEC.parent / "README.md").read_text())
    assert recorded is not None
    assert hashlib.sha256(SPEC.read_bytes()).hexdigest() == recorded.group(1)
    validator = jsonschema.Draft202012Validator(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
              for e in validator.iter_errors(compose)]  # fmt: skip
    assert errors == []
    # The schema can fail: a misspelt key in a service is refused.
    bad = {**compose, "services": {**compose["services"], "http": {**compose["services"]["http"],
           "healthchek": {}}}}  # fmt: skip
    assert not validator.is_valid(bad)


def test_every_eventfold_command_is_a_real_cli_command() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = eventfold_services(compose)
    assert services
    for name, service in services.items():
        command = service["command"]
        assert all(isinstance(arg, str) for arg in command), name
        args = parsed(command)
        assert args.command in {"serve", "process"}, f"{name}: {command}"
    # The parser refuses what is not a command, so the check above can fail.
    with pytest.raises(pytest.fail.Exception):
        parsed(["process", "projector", "--no-such-flag"])


def test_every_part_runs_once_behind_one_http_entry_point(compose: dict[str, Any]) -> None:
    processes: dict[str, list[str]] = {}
    http: list[str] = []
    for name, service in eventfold_services(compose).items():
        args = parsed(service["command"])
        if args.command == "process":
            processes.setdefault(args.name, []).append(name)
            assert not args.burst, name
            assert "ports" not in service, f"{name}: a processor is reached inside the network"
        else:
            http.append(name)
            assert sorted(args.part) == ["api", "ingest"], name  # reads and writes on one port
    assert {p: len(names) for p, names in processes.items()} == dict.fromkeys(PROCESSORS, 1)
    # Each processor's service is named after it (infra/prometheus scrapes it by that name).
    assert all(names == [p] for p, names in processes.items())
    assert http == ["http"]
    assert compose["services"]["http"]["ports"] == ["${PUBLISH_HOST:-127.0.0.1}:8080:8080"]
    assert not [n for n, s in compose["services"].items() if s.get("profiles")]


def test_every_eventfold_container_is_healthy_only_while_ready(compose: dict[str, Any]) -> None:
    for name, service in eventfold_services(compose).items():
        check = service["healthcheck"]["test"]
        assert check[0] == "CMD", name
        assert "http://127.0.0.1:8080/health/ready" in check[-1], name  # 503 (down) fails
        assert service["environment"]["EVENTFOLD_HTTP_PORT"] == "8080", name
        assert service["depends_on"]["kafka-init"] == {
            "condition": "service_completed_successfully"
        }


def test_data_lives_in_named_volumes(compose: dict[str, Any]) -> None:
    named = set(compose["volumes"])
    mounted = {
        volume.split(":")[0]
        for service in compose["services"].values()
        for volume in service.get("volumes", [])
        if not volume.startswith((".", "/"))  # a file of this checkout, read only
    }
    assert mounted == named == {"kafka-data", "postgres-data", "redis-data", "minio-data"}


def test_every_image_is_pinned_to_a_version(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        image = service["image"]
        if "build" in service:
            assert image == "eventfold:local", name  # built here from the Dockerfile
            continue
        repo, _, tag = image.rpartition(":")
        assert repo, f"{name}: {image} names no tag"
        assert tag != "latest", f"{name}: {image} is not a version"
        assert re.search(r"\d", tag), f"{name}: {image} is not a version"
    base = re.search(r"^FROM (\S+)", (REPO / "Dockerfile").read_text(), re.MULTILINE)
    assert base is not None
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", base.group(1))


def test_only_the_http_ports_are_published_on_loopback_by_default(
    compose: dict[str, Any],
) -> None:
    published = {name: s["ports"] for name, s in compose["services"].items() if "ports" in s}
    assert set(published) == set(HTTP)
    for name, ports in published.items():
        assert ports == [f"${{PUBLISH_HOST:-127.0.0.1}}:{HTTP[name]}:8080"]


def test_no_secret_has_a_default(text: str, compose: dict[str, Any]) -> None:
    env = compose["x-eventfold-env"]
    assert env["EVENTFOLD_MODE"] == "production"
    for var in ("EVENTFOLD_JWT_SECRET", "EVENTFOLD_SECRET_KEYS"):
        assert env[var] == f"${{{var}:?set it in .env (make .env)}}"
    required = {m[0] for m in VARIABLE.findall(text) if m[1] == ":?"}
    assert required == {
        "EVENTFOLD_JWT_SECRET",
        "EVENTFOLD_SECRET_KEYS",
        "POSTGRES_PASSWORD",
        "POSTGRES_APP_PASSWORD",
        "REDIS_PASSWORD",
        "MINIO_ROOT_PASSWORD",
    }
    # Every password or key in the file is one of those variables, never a literal.
    for line in text.splitlines():
        key, sep, value = line.strip().partition(": ")
        if sep and re.search(r"PASSWORD|SECRET|_KEYS", key) and value:
            assert VARIABLE.search(value), line
    for name in ("EVENTFOLD_DATABASE_URL", "EVENTFOLD_REDIS_URL", "EVENTFOLD_CACHE_REDIS_URL"):
        assert VARIABLE.search(env[name]), name


def test_the_cache_may_be_evicted_but_the_state_never(compose: dict[str, Any]) -> None:
    """Redis sets its eviction policy per server: the state and the cache get one each."""
    env = compose["x-eventfold-env"]
    assert "@redis:6379/" in env["EVENTFOLD_REDIS_URL"]
    assert "@redis-cache:6379/" in env["EVENTFOLD_CACHE_REDIS_URL"]

    def policy(service: str) -> str:
        command = compose["services"][service]["command"]
        return str(command[command.index("--maxmemory-policy") + 1])

    assert (policy("redis"), policy("redis-cache")) == ("noeviction", "allkeys-lru")
    assert compose["x-eventfold-depends"]["redis-cache"] == {"condition": "service_healthy"}


def test_eventfold_connects_as_its_own_role_made_by_the_bootstrap_script(
    compose: dict[str, Any],
) -> None:
    init = compose["services"]["postgres-init"]
    assert init["environment"]["APP_ROLE"] == "eventfold"
    source = init["volumes"][0].split(":")[0]
    assert (REPO / source).resolve() == REPO / "src/devstack/postgres_bootstrap.sql"
    assert "POSTGRES_USER" not in compose["services"]["postgres"]["environment"]
    assert compose["x-eventfold-env"]["EVENTFOLD_DATABASE_URL"].startswith(
        "postgresql://eventfold:"
    )
    assert compose["x-eventfold-depends"]["postgres-init"] == {
        "condition": "service_completed_successfully"
    }


def _generate() -> str:
    """What `make .env` writes: .env.example with fresh values."""
    return subprocess.run(
        ["sh", str(REPO / "infra/compose/new-env.sh"), str(REPO / ".env.example")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_the_generated_env_file_fills_every_variable_and_passes_production(
    tmp_path: Path, text: str
) -> None:
    out = _generate()
    values = dict(
        line.split("=", 1) for line in out.splitlines() if line and not line.startswith("#")
    )
    required = {m[0] for m in VARIABLE.findall(text) if m[1] == ":?"}
    assert required <= {k for k, v in values.items() if v}
    optional = {m[0] for m in VARIABLE.findall(text) if m[1] != ":?"}
    assert optional <= set(re.findall(r"^# ?([A-Z_]+)=", out, re.MULTILINE))
    for name, value in values.items():
        if name != "EVENTFOLD_SECRET_KEYS":
            assert re.fullmatch(r"[0-9a-f]{64}", value), name  # safe inside a URL
    settings = Settings.from_env(
        {
            "EVENTFOLD_HOME": str(tmp_path),
            "EVENTFOLD_MODE": "production",
            "EVENTFOLD_JWT_SECRET": values["EVENTFOLD_JWT_SECRET"],
            "EVENTFOLD_SECRET_KEYS": values["EVENTFOLD_SECRET_KEYS"],
        }
    )
    assert settings.mode == "production"
    again = _generate()
    assert again != out  # fresh values each time


def test_the_image_runs_in_production_mode() -> None:
    assert "EVENTFOLD_MODE=production" in (REPO / "Dockerfile").read_text()

"""The committed schemas/ folder and the registry's exported JSON Schemas."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from pydantic import ValidationError

from eventfold.events import REGISTRY
from eventfold.schema_files import check_schemas, export_schemas

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "schemas"


def load(type_name: str) -> dict[str, Any]:
    t = REGISTRY[type_name]
    return json.loads((SCHEMAS / t.name / f"v{t.version}.json").read_text())


def test_committed_schemas_are_in_step_with_the_registry() -> None:
    assert check_schemas(SCHEMAS) == []


def test_every_registered_type_has_a_committed_file_and_nothing_else() -> None:
    committed = {p.relative_to(SCHEMAS).as_posix() for p in SCHEMAS.rglob("*.json")}
    assert committed == {f"{t.name}/v{t.version}.json" for t in REGISTRY.values()}


def test_a_modified_file_in_a_copy_is_reported_as_drift(tmp_path: Path) -> None:
    copy = tmp_path / "schemas"
    shutil.copytree(SCHEMAS, copy)
    target = copy / "tenant.created" / "v1.json"
    doc = json.loads(target.read_text())
    doc["properties"]["name"]["maxLength"] = 999
    target.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    drift = check_schemas(copy)
    assert len(drift) == 1
    assert drift[0].startswith("tenant.created/v1.json differs")


def test_a_missing_file_is_reported_as_drift(tmp_path: Path) -> None:
    copy = tmp_path / "schemas"
    shutil.copytree(SCHEMAS, copy)
    (copy / "record.patched" / "v1.json").unlink()
    drift = check_schemas(copy)
    assert len(drift) == 1
    assert drift[0].startswith("record.patched/v1.json is missing")


def test_whitespace_only_change_is_drift_too(tmp_path: Path) -> None:
    copy = tmp_path / "schemas"
    shutil.copytree(SCHEMAS, copy)
    target = copy / "record.upserted" / "v1.json"
    target.write_bytes(target.read_bytes().rstrip(b"\n"))
    assert len(check_schemas(copy)) == 1


def test_export_writes_files_that_check_clean(tmp_path: Path) -> None:
    written = export_schemas(tmp_path)
    assert len(written) == len(REGISTRY)
    assert all(p.is_file() for p in written)
    assert check_schemas(tmp_path) == []
    assert check_schemas(tmp_path / "empty") != []


@pytest.mark.parametrize("type_name", sorted(REGISTRY))
def test_exported_schema_is_valid_json_schema_2020_12(type_name: str) -> None:
    schema = load(type_name)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].endswith(f"/{type_name}/v{REGISTRY[type_name].version}.json")
    assert schema["title"] == type_name
    assert schema["description"]


VALID = [
    ("tenant.created", {"id": "acme", "name": "Acme"}),
    ("tenant.created", {"id": "acme", "name": "Acme", "limits": {"requests_per_second": 2.5}}),
    ("record.upserted", {"a": 1, "b": {"c": [1, 2]}}),
    ("record.upserted", {}),
    ("record.patched", {"a": None}),
    ("record.deleted", None),
    ("record.deleted", {}),
]

INVALID = [
    ("tenant.created", {"id": "acme"}),
    ("tenant.created", {"id": "Acme", "name": "Acme"}),
    ("tenant.created", {"id": "ab", "name": "Acme"}),
    ("tenant.created", {"id": "acme", "name": ""}),
    ("tenant.created", {"id": "acme", "name": "Acme", "extra": 1}),
    ("tenant.created", {"id": "acme", "name": "Acme", "limits": {"burst": 0}}),
    ("tenant.created", {"id": "acme", "name": "Acme", "limits": {"other": 1}}),
    ("record.upserted", [1]),
    ("record.upserted", None),
    ("record.patched", "x"),
    ("record.deleted", [1]),
    ("record.deleted", {"a": 1}),
]


@pytest.mark.parametrize(("type_name", "data"), VALID)
def test_valid_example_is_accepted_by_the_file_and_the_model(type_name: str, data: Any) -> None:
    jsonschema.validate(data, load(type_name), cls=jsonschema.Draft202012Validator)
    REGISTRY[type_name].model.model_validate(data)


@pytest.mark.parametrize(("type_name", "data"), INVALID)
def test_invalid_example_is_rejected_by_the_file_and_the_model(type_name: str, data: Any) -> None:
    with pytest.raises(ValidationError):
        REGISTRY[type_name].model.model_validate(data)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, load(type_name), cls=jsonschema.Draft202012Validator)

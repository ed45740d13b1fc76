"""The ``schemas/`` folder: the registry's JSON Schemas, exported and checked for drift."""

from __future__ import annotations

from pathlib import Path

import orjson

from eventfold.events import REGISTRY


def _files() -> dict[str, bytes]:
    return {
        f"{t.name}/v{t.version}.json": orjson.dumps(
            t.json_schema(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS
        )
        + b"\n"
        for t in REGISTRY.values()
    }


def export_schemas(root: Path) -> list[Path]:
    """Write every registered type's schema under ``root``; return the paths written."""
    written = []
    for rel, content in _files().items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        written.append(path)
    return written


def check_schemas(root: Path) -> list[str]:
    """Files under ``root`` that differ from the registry (empty when in step)."""
    drift = []
    for rel, content in _files().items():
        path = root / rel
        if not path.is_file():
            drift.append(f"{rel} is missing (run: eventfold schemas export)")
        elif path.read_bytes() != content:
            drift.append(f"{rel} differs from the model (run: eventfold schemas export)")
    return drift

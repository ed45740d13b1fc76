"""How the CLI prints a JSON document (``--json``): indented, one document on stdout."""

from __future__ import annotations

import sys
from typing import Any

import orjson


def print_json(doc: Any) -> None:
    """Write ``doc`` to stdout as indented JSON (orjson: datetimes as ISO 8601)."""
    sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")

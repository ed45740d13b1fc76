"""Where a result came from: the commit it ran on, whether the tree was clean, when.

Every result file a benchmark writes carries :func:`stamp`'s answer under
``"provenance"`` (taken when the run *starts*, so files the run writes do not
make its own tree look dirty), and is written through :func:`save` into a new
file (never over an earlier run's). ``benchmarks/tables.py`` quotes only files
that have it, naming commit and state beside every figure.
"""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
#: Changes under these paths are results, not code: they do not make a tree dirty.
NOT_CODE = ("benchmarks/results/",)
#: Dirty paths listed in a stamp at most (the count is always exact).
LISTED = 20


def _git(*argv: str) -> str:
    out = subprocess.run(
        ["git", *argv], cwd=ROOT, capture_output=True, text=True, check=True, timeout=30
    )
    return out.stdout


def dirty_paths(porcelain: str) -> list[str]:
    """Paths of ``git status --porcelain`` output that are code (results excluded)."""
    paths = []
    for line in porcelain.splitlines():
        if len(line) < 4:
            continue
        path = line[3:].split(" -> ")[-1].strip('"')
        if not path.startswith(NOT_CODE):
            paths.append(path)
    return paths


def stamp() -> dict[str, Any]:
    """The commit checked out, whether the tree differs from it, the time and the machine.

    ``clean`` is None when git cannot tell (not a checkout): such a result is
    not quoted as clean.
    """
    try:
        commit: str | None = _git("rev-parse", "HEAD").strip()
        branch = _git("rev-parse", "--abbrev-ref", "HEAD").strip()
        dirty = dirty_paths(_git("status", "--porcelain", "--untracked-files=all"))
        clean: bool | None = not dirty
    except (OSError, subprocess.SubprocessError):
        commit, branch, dirty, clean = None, None, [], None
    return {
        "commit": commit,
        "branch": branch,
        "clean": clean,
        "dirty_files": len(dirty),
        "dirty": dirty[:LISTED],
        "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average": [round(x, 2) for x in os.getloadavg()],
        },
    }


def describe(prov: dict[str, Any] | None) -> str:
    """``abc1234 (clean)``, ``abc1234 (dirty: 3 files)`` or ``no commit recorded``."""
    if not prov or not prov.get("commit"):
        return "no commit recorded"
    short = str(prov["commit"])[:10]
    if prov.get("clean") is True:
        return f"{short} (clean)"
    if prov.get("clean") is False:
        return f"{short} (dirty: {prov.get('dirty_files', '?')} files)"
    return f"{short} (state unknown)"


def new_path(directory: Path, stem: str, suffix: str = ".json") -> Path:
    """``directory/stem+suffix``, or ``stem-2``, ``stem-3``… when taken: runs never overwrite."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{stem}{suffix}"
    n = 2
    while path.exists():
        path = directory / f"{stem}-{n}{suffix}"
        n += 1
    return path


def dated_stem(name: str) -> str:
    """``<UTC date>-name``, the result files' naming."""
    return f"{datetime.now(UTC):%Y-%m-%d}-{name}"


def save(doc: dict[str, Any], name: str, directory: Path = RESULTS) -> Path:
    """Write ``doc`` (which must carry its provenance) as a new ``<date>-name.json``."""
    if "provenance" not in doc:
        raise ValueError("a result document needs its provenance (benchmarks.provenance.stamp)")
    path = new_path(directory, dated_stem(name))
    path.write_bytes(
        orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY) + b"\n"
    )
    return path

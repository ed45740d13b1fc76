"""The layering rules import-linter cannot see (the contracts are in pyproject.toml).

- A function-level import is allowed only to keep a process from loading what it
  does not run (start-up cost, memory) and must say so: ``deferred`` in a comment
  on its line or right above it. An import moved into a function to break an
  import cycle is what this forbids.
- The tenant tables (``records``, ``events`` in each tenant's schema) are named
  by one module, :mod:`eventfold.readmodel` (and the grants of
  :mod:`eventfold.tenancy`, which say who may read them).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"


def _function_level_imports(path: Path) -> list[ast.Import | ast.ImportFrom]:
    tree = ast.parse(path.read_text())
    found: list[ast.Import | ast.ImportFrom] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            found += [n for n in ast.walk(node) if isinstance(n, ast.Import | ast.ImportFrom)]
    return found


def _says_why(lines: list[str], node: ast.Import | ast.ImportFrom) -> bool:
    """``deferred`` on the import's lines, or in the comment block right above it (or above
    the imports it is grouped with)."""
    end = node.end_lineno or node.lineno
    if any("# deferred" in line for line in lines[node.lineno - 1 : end]):
        return True
    above = node.lineno - 2
    while above >= 0 and lines[above].strip().startswith(("#", "from ", "import ")):
        if "deferred" in lines[above]:
            return True
        above -= 1
    return False


def test_every_function_level_import_says_why_it_is_deferred() -> None:
    unexplained = []
    for path in sorted(SRC.rglob("*.py")):
        lines = path.read_text().splitlines()
        for node in _function_level_imports(path):
            if not _says_why(lines, node):
                unexplained.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert unexplained == [], "function-level imports without a `# deferred: why` comment"


_TENANT_TABLE = re.compile(r"\}\.(records|events)\b")
_OWNERS = {"eventfold/readmodel.py", "eventfold/tenancy.py"}


def test_only_the_read_model_names_the_tenant_tables() -> None:
    naming = sorted(
        str(path.relative_to(SRC))
        for path in SRC.rglob("*.py")
        if _TENANT_TABLE.search(path.read_text())
    )
    assert set(naming) <= _OWNERS, f"SQL on a tenant's tables outside the read model: {naming}"
    assert "eventfold/readmodel.py" in naming  # the rule still looks at what it means to

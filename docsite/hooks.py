"""MkDocs hook (``mkdocs.yml: hooks``): the pages the build generates or copies.

- The reference pages of :data:`docsite.reference.PAGES`, rendered from the code.
- Markdown files that live beside what they describe and are shown as site pages
  (:data:`docsite.pages.COPIED`): BENCHMARKS.md, the alerts' runbook, the
  dashboards, the local stack.

Nothing generated is written into ``docs/``: the build holds it in memory.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # mkdocs imports this file by path, not as docsite.hooks
    sys.path.insert(0, str(REPO))

from docsite.pages import COPIED, copied_page  # noqa: E402
from docsite.reference import PAGES  # noqa: E402


def on_files(files: Files, *, config: Any) -> Files:
    """Add the generated and copied pages to the build."""
    for path, render in PAGES.items():
        files.append(File.generated(config, path, content=render()))
    for page in COPIED:
        files.append(File.generated(config, page, content=copied_page(page)))
    return files

"""The repository's Markdown files the site shows as pages, with links fit for the site.

Files that live beside what they describe (BENCHMARKS.md, the runbook in
infra/prometheus/, ...) stay there; the site shows a copy made at build time
(:mod:`docsite.hooks`). Their relative links are rewritten: to the page a linked
file became, or, for a file the site does not show, to the path as code text (so
``--strict`` finds no broken link and the reader still sees where it is).
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: Site page → the repository file it shows.
COPIED = {
    "benchmarks.md": "BENCHMARKS.md",
    "operations/runbook.md": "infra/prometheus/README.md",
    "operations/dashboards.md": "infra/grafana/README.md",
    "operations/local-stack.md": "infra/README.md",
}
_LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)")


def rewrite_links(markdown: str, source: str, page: str) -> str:
    """Links of ``source`` (a repository path) fit for the site page ``page``."""
    shown = {repo_path: site for site, repo_path in COPIED.items()}

    def fix(match: re.Match[str]) -> str:
        bang, text, target = match.groups()
        if re.match(r"^[a-z][a-z0-9+.-]*:|^#", target):
            return match.group(0)  # absolute URL or an anchor of this page
        path, _, anchor = target.partition("#")
        repo_path = posixpath.normpath(posixpath.join(posixpath.dirname(source), path))
        if repo_path in shown:
            rel = posixpath.relpath(shown[repo_path], posixpath.dirname(page) or ".")
            return f"{bang}[{text}]({rel}{'#' + anchor if anchor else ''})"
        if bang:
            return f"`{repo_path}`"
        return text if text.strip("`") == repo_path else f"{text} (`{repo_path}`)"

    return _LINK.sub(fix, markdown)


def copied_page(page: str) -> str:
    """The Markdown of the copied site page ``page``."""
    source = COPIED[page]
    text = (REPO / source).read_text()
    note = f"<!-- Shown from {source} at build time: edit that file. -->\n\n"
    return note + rewrite_links(text, source, page)

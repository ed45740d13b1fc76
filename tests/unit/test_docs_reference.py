"""The generated reference pages have an entry for everything, and the hand-written pages
name only settings and metrics that exist.

Each check reads the code's own registry (not the generator's reading of it) and looks
for the entry in the rendered page, so a setting, command, metric, event type, problem
type or route without one fails here, and so does a page naming a variable or metric
that was renamed or removed.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

import pytest

from docsite import reference
from docsite.pages import COPIED, copied_page, rewrite_links
from eventfold.errors import Problem
from eventfold.events import REGISTRY
from eventfold.metrics import Metrics, catalogue
from eventfold.settings import INTERNAL, PREFIX, Settings

REPO = Path(__file__).resolve().parents[2]
HAND_WRITTEN = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def test_every_setting_has_an_entry_with_a_description_type_and_default() -> None:
    page = reference.settings_page()
    documented = {d.variable: d for d in reference.settings()}
    for f in dataclasses.fields(Settings):
        if f.metadata == INTERNAL:
            continue
        variable = PREFIX + f.name.upper()
        assert f"### {variable}\n" in page, f"{variable} has no entry"
        doc = documented[variable]
        assert doc.description, f"{variable}: write a #: comment above the field"
        assert doc.kind, variable
        assert doc.default, variable
        assert doc.accepts, variable
    assert "(no description yet)" not in page


def test_settings_show_their_range_and_default() -> None:
    by_name = {d.variable: d for d in reference.settings()}
    assert by_name["EVENTFOLD_HTTP_PORT"].range == "≥ 0, ≤ 65535"
    assert by_name["EVENTFOLD_HTTP_PORT"].default == "`8080`"
    assert by_name["EVENTFOLD_WEBHOOK_RETRY_SCHEDULE"].default == "`5,30,120,600,3600`"
    assert "each ≥ 0" in by_name["EVENTFOLD_WEBHOOK_RETRY_SCHEDULE"].range
    assert "one of `dev`, `production`" in by_name["EVENTFOLD_MODE"].range
    assert by_name["EVENTFOLD_MODE"].default.startswith("dev in a source checkout")


def test_a_field_without_its_own_comment_shares_its_groups() -> None:
    @dataclasses.dataclass
    class Sample:
        #: Alone.
        a: int = 1

        #: The pair's comment,
        #: on two lines.
        b_low: int = 2
        b_high: int = 3
        c: int = 4

        b_other: int = 5

    comments = reference._field_comments(Sample)
    assert comments == {
        "a": "Alone.",
        "b_low": "The pair's comment, on two lines.",
        "b_high": "The pair's comment, on two lines.",
        "c": "",  # not of the group: it has none
        "b_other": "",  # after a blank line: a group ends there
    }


def _commands(parser: argparse.ArgumentParser, prefix: str = "") -> list[tuple[str, str]]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                full = f"{prefix} {name}".strip()
                found.append((full, helps.get(name) or ""))
                found += _commands(sub, full)
    return found


def test_every_command_has_an_entry_with_its_help() -> None:
    page = reference.cli_page()
    commands = _commands(reference._parser())
    assert {"run", "token", "dlq redrive", "replay", "schemas"} <= {c for c, _ in commands}
    for command, text in commands:
        assert f" eventfold {command} {{#" in page, f"eventfold {command} has no entry"
        assert text, f"eventfold {command}: give its sub-parser a help="


def test_the_options_of_eventfold_itself_are_documented() -> None:
    # Options before the command name (--operator) are no sub-command's: the page
    # lists them apart.
    page = reference.cli_page()
    general = [a for a in reference._parser()._actions if reference._general(a)]
    assert any("--operator" in a.option_strings for a in general)
    for action in general:
        name, _ = reference._argument(action)
        assert f"| {name} | {action.help}" in page, f"{name} has no entry"


def test_every_metric_has_an_entry_with_its_labels() -> None:
    page = reference.metrics_page()
    metrics = Metrics()
    families = list(metrics.registry.collect())
    assert len(families) > 30
    for family in families:
        assert f"| `{family.name}" in page, f"{family.name} has no entry"
    histogram = (
        "| `eventfold_http_request_duration_seconds` | histogram | `route`, `method`, `status` |"
    )
    assert histogram in page
    assert "| `eventfold_top_tenant_events_per_second` | gauge | `tenant` |" in page


def test_every_event_type_has_an_entry() -> None:
    page = reference.events_page()
    folders = {p.name for p in (REPO / "schemas").iterdir() if p.is_dir()}
    assert set(REGISTRY) <= folders
    for name in folders:
        assert f"## {name} {{#" in page, f"{name} has no entry"
    assert "Eventfold only" in page  # apikey.created and friends


def test_every_problem_type_and_error_class_has_an_entry() -> None:
    page = reference.errors_page()
    stack = [Problem]
    while stack:
        cls = stack.pop()
        stack += cls.__subclasses__()
        assert f"{{#{cls.slug}}}" in page, f"{cls.__name__} ({cls.slug}) has no entry"
        assert f"`{cls.__module__}.{cls.__qualname__}`" in page
    assert "`eventfold.settings.SettingsError` | permanent |" in page


def test_every_registered_route_has_an_entry() -> None:
    from eventfold.openapi import OPERATIONS

    page = reference.routes_page()
    assert len(OPERATIONS) > 20
    for (method, path), _ in OPERATIONS.items():
        assert f"| `{method}` | `{path}` |" in page, f"{method} {path} has no entry"
    assert "| `GET` | `/docs` |" in page


def test_nothing_generated_is_committed_to_docs() -> None:
    for page in [*reference.PAGES, *COPIED]:
        assert not (REPO / "docs" / page).exists(), f"docs/{page} is generated at build time"


def test_copied_pages_keep_their_text_and_point_links_at_the_site() -> None:
    runbook = copied_page("operations/runbook.md")
    assert "## Runbook" in runbook
    text = rewrite_links(
        "[grafana](../grafana/README.md), [rules](rules/eventfold.yml#L3), "
        "[site](https://example.org/x), [here](#the-slos)",
        "infra/prometheus/README.md",
        "operations/runbook.md",
    )
    assert text == (
        "[grafana](dashboards.md), rules (`infra/prometheus/rules/eventfold.yml`), "
        "[site](https://example.org/x), [here](#the-slos)"
    )


_VARIABLE = re.compile(r"\bEVENTFOLD_[A-Z0-9_]*[A-Z0-9]\b")
#: A metric name, not a settings anchor (`settings.md#eventfold_http_port`).
_METRIC = re.compile(r"(?<![#\w])eventfold_[a-z0-9_]*[a-z0-9]\b")
#: Variables read outside the settings model, on purpose: the sealing keys' file, the
#: console tests' screenshots, the benchmarks' private database (benchmarks/privatedb.py).
OTHER_VARIABLES = {
    "EVENTFOLD_SECRET_KEYS_FILE",
    "EVENTFOLD_SCREENSHOTS",
    "EVENTFOLD_BENCH_ADMIN_DATABASE_URL",
}


@pytest.mark.parametrize(
    "path", HAND_WRITTEN + [REPO / source for source in COPIED.values()], ids=str
)
def test_hand_written_pages_name_only_settings_and_metrics_that_exist(path: Path) -> None:
    text = path.read_text()
    variables = {d.variable for d in reference.settings()} | OTHER_VARIABLES
    series = {s for info in catalogue() for s in [info.name, *info.series()]}
    for name in set(_VARIABLE.findall(text)):
        # A prefix followed by `*` or `...` names a family (EVENTFOLD_SYNC_*).
        if re.search(rf"{name}(_?\*|_\.\.\.|\.\.\.)", text) and any(
            v.startswith(name) for v in variables
        ):
            continue
        assert name in variables, f"{path.name} names {name}, which is no setting"
    for name in set(_METRIC.findall(text)):
        if re.search(rf"{name}(_?\*)", text) and any(s.startswith(name) for s in series):
            continue
        if name in {"eventfold_test", "eventfold_cli"}:
            continue
        assert name in series, f"{path.name} names {name}, which is no metric"

"""infra/prometheus and infra/grafana: promtool's checks and unit tests, and every query's
metric names against the ones the code registers.

promtool comes with Debian's ``prometheus`` package; ``make test`` (and ``make unit``)
install it when missing (``make promtool``). It runs here only, not in the Makefile.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml

from entrypoints.registry import PROCESSORS
from eventfold.metrics import catalogue

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS = REPO / "infra" / "prometheus"
RULES = sorted((PROMETHEUS / "rules").glob("*.yml"))
RULE_TESTS = sorted((PROMETHEUS / "tests").glob("*.yml"))
DASHBOARDS = sorted((REPO / "infra" / "grafana" / "dashboards").glob("*.json"))
#: Labels Prometheus adds to every scraped series (prometheus.yml's target labels).
TARGET_LABELS = frozenset({"job", "instance", "service", "role"})
#: Series Prometheus makes itself for every target.
SYNTHETIC = {"up": TARGET_LABELS}
SEVERITIES = {"critical", "warning", "info"}
#: The HTTP processes beside the processors (docker-compose.yml service names).
HTTP_SERVICES = {"api", "ingest"}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    """Run promtool in infra/prometheus; a missing promtool fails with what to do."""
    tool = shutil.which("promtool")
    if tool is None:
        pytest.fail(
            "promtool is missing: `make promtool` installs Debian's prometheus package"
            " (`make test` does it for you)",
            pytrace=False,
        )
    return subprocess.run(
        [tool, *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=120, check=False
    )


def test_the_scrape_config_is_valid() -> None:
    done = promtool("check", "config", "prometheus.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    # It found the rule files (a wrong glob would load none, silently).
    assert f"SUCCESS: {len(RULES)} rule files found" in done.stdout + done.stderr


def test_the_rules_are_valid() -> None:
    assert RULES
    done = promtool("check", "rules", *(str(p.relative_to(PROMETHEUS)) for p in RULES))
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_rule_unit_tests_pass() -> None:
    assert RULE_TESTS
    done = promtool("test", "rules", *(str(p.relative_to(PROMETHEUS)) for p in RULE_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("SUCCESS") == len(RULE_TESTS), done.stdout


# -- the rules' shape ---------------------------------------------------------------


def rules() -> Iterator[dict[str, Any]]:
    """Every rule of every rules file."""
    for path in RULES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            yield from group["rules"]


def alerts() -> list[dict[str, Any]]:
    return [r for r in rules() if "alert" in r]


def test_every_alert_has_for_severity_annotations_and_a_runbook_section() -> None:
    readme = (PROMETHEUS / "README.md").read_text()
    # GitHub's anchors of the README's headings: lower case, spaces as dashes.
    anchors = {
        re.sub(r"[^a-z0-9 _-]", "", h.strip().lower()).replace(" ", "-")
        for h in re.findall(r"^#+ (.+)$", readme, flags=re.MULTILINE)
    }
    assert alerts()
    for alert in alerts():
        name = alert["alert"]
        assert re.fullmatch(r"\d+[smh]", str(alert.get("for", ""))), f"{name}: no `for:`"
        assert alert["labels"]["severity"] in SEVERITIES, name
        notes = alert["annotations"]
        assert notes["summary"], name
        assert notes["description"], name
        page, _, anchor = notes["runbook"].partition("#")
        assert page == "infra/prometheus/README.md", name
        assert anchor == name.lower(), name
        assert anchor in anchors, f"{name}: no runbook section"


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    fired: set[str] = set()
    quiet: set[str] = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {a["alert"] for a in alerts()}
    assert names - fired == set(), "never tested firing"
    assert names - quiet == set(), "never tested staying quiet"


def test_every_processor_is_scraped_and_missed_when_absent() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    targets = [t for group in job["static_configs"] for t in group["targets"]]
    # Each on the port its Compose service listens on (the shared default until the
    # service exists or sets its own).
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    default = str(compose.get("x-eventfold-env", {}).get("EVENTFOLD_HTTP_PORT", "8080"))

    def port(service: str) -> str:
        env = compose["services"].get(service, {}).get("environment", {})
        return str(env.get("EVENTFOLD_HTTP_PORT", default) if isinstance(env, dict) else default)

    expected = {f"{s}:{port(s)}" for s in {*PROCESSORS, *HTTP_SERVICES}}
    assert sorted(targets) == sorted(expected)
    (missing,) = [a for a in alerts() if a["alert"] == "EventfoldProcessorMissing"]
    named = re.findall(r'absent\(eventfold_processor_ready\{processor="(\w+)"\}\)', missing["expr"])
    assert sorted(named) == sorted(PROCESSORS)


# -- metric names -------------------------------------------------------------------


def registered() -> dict[str, frozenset[str]]:
    """Each series name a :class:`Metrics` can export → the labels it may carry."""
    return {
        series: frozenset(labels) | TARGET_LABELS
        for info in catalogue()
        for series, labels in info.series().items()
    }


def recorded() -> set[str]:
    """The series the recording rules make."""
    return {r["record"] for r in rules() if "record" in r}


#: Grafana's variables, as something the PromQL parser accepts.
_INTERVALS = re.compile(r"\$\{?__(rate_interval|interval|range)\}?")
_VARIABLE = re.compile(r"\$\{?\w+\}?")
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(?P<expr>.+?)\s*,\s*)?(?P<label>\w+)\s*\)\s*$")


def selectors(expr: str) -> list[tuple[str, set[str]]]:
    """``(metric name, label names matched)`` of every selector in ``expr``."""
    text = _VARIABLE.sub("1", _INTERVALS.sub("5m", expr))
    found: list[tuple[str, set[str]]] = []

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, f"a selector without a metric name in {expr!r}"
            found.append((node.name, {m.name for m in node.matchers.matchers}))

    promql_parser.walk(promql_parser.parse(text), visit)
    return found


def problems(expr: str, known: dict[str, frozenset[str]]) -> list[str]:
    """What in ``expr`` names a metric, or a label of one, that the code does not register."""
    out: list[str] = []
    for name, matched in selectors(expr):
        if name not in known:
            out.append(f"unknown metric {name}")
        elif not matched <= known[name]:
            out.append(f"{name} has no label {', '.join(sorted(matched - known[name]))}")
    return out


def known_series() -> dict[str, frozenset[str]]:
    """Registered metrics, Prometheus's own series and the recorded ones (any label)."""
    known = {**registered(), **SYNTHETIC}
    for name in recorded():
        known[name] = frozenset()
    return known


def panels(nodes: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' nested panels included."""
    for node in nodes:
        yield node
        yield from panels(node.get("panels", []))


def dashboard_queries(doc: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """``(where, PromQL)`` of each panel target and query variable of a dashboard."""
    for panel in panels(doc["panels"]):
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r}", target["expr"]
    for var in doc.get("templating", {}).get("list", []):
        if var["type"] != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        match = _LABEL_VALUES.match(query)
        assert match is not None, f"variable {var['name']}: only label_values(...) is checked"
        metric = match["expr"]
        assert metric, f"variable {var['name']}: label_values of every metric is not checked"
        # The label must be one the metric carries: a selector matching it says so.
        yield f"variable {var['name']!r}", f'{metric}{{{match["label"]}!=""}}'


def test_the_registered_names_are_read_from_the_families() -> None:
    known = registered()
    assert known["eventfold_events_published_total"] >= {"type", "instance"}
    assert "eventfold_events_published" not in known
    assert "le" in known["eventfold_http_request_duration_seconds_bucket"]
    assert "eventfold_http_request_duration_seconds_sum" in known
    assert known["eventfold_processor_ready"] >= {"processor"}
    assert known["eventfold_top_tenant_events_per_second"] >= {"tenant"}


def test_an_unknown_metric_or_label_is_caught() -> None:
    known = known_series()
    assert problems('sum(rate(eventfold_projector_events_total{outcome="x"}[5m]))', known) == []
    assert problems("rate(eventfold_no_such_thing_total[$__rate_interval])", known) == [
        "unknown metric eventfold_no_such_thing_total"
    ]
    # A counter is read with its _total, a histogram through its series.
    assert problems("eventfold_events_published", known) == [
        "unknown metric eventfold_events_published"
    ]
    assert problems("eventfold_http_request_duration_seconds", known) != []
    assert problems('eventfold_consumer_lag{tenant="$t"}', known) == [
        "eventfold_consumer_lag has no label tenant"
    ]
    assert problems('topk($n, eventfold:no_such_recording{a="b"})', known) == [
        "unknown metric eventfold:no_such_recording"
    ]


def test_every_rule_names_only_registered_metrics() -> None:
    known = known_series()
    bad = {
        r.get("alert") or r["record"]: problems(r["expr"], known)
        for r in rules()
        if problems(r["expr"], known)
    }
    assert bad == {}


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_every_dashboard_query_names_only_registered_metrics(path: Path) -> None:
    doc = json.loads(path.read_text())
    known = known_series()
    queries = list(dashboard_queries(doc))
    assert queries
    bad = {f"{where}: {expr}": problems(expr, known) for where, expr in queries}
    assert {k: v for k, v in bad.items() if v} == {}


def test_the_dashboards_are_provisioned_and_distinct() -> None:
    assert {p.stem for p in DASHBOARDS} == {"overview", "processors", "tenants"}
    docs = [json.loads(p.read_text()) for p in DASHBOARDS]
    assert len({d["uid"] for d in docs}) == len(docs)
    for doc in docs:
        ids = [p["id"] for p in panels(doc["panels"])]
        assert len(ids) == len(set(ids)), doc["uid"]
        for panel in panels(doc["panels"]):
            for target in panel.get("targets", []):
                assert target["datasource"]["uid"] == "${datasource}", panel["title"]
    grafana = REPO / "infra" / "grafana" / "provisioning"
    (provider,) = yaml.safe_load((grafana / "dashboards" / "eventfold.yml").read_text())[
        "providers"
    ]
    assert provider["type"] == "file"
    (source,) = yaml.safe_load((grafana / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    assert source["type"] == "prometheus"

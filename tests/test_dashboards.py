"""Static checks of the committed Grafana dashboards: what a user importing them relies on."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from dashboards.generate import DASHBOARDS, generated_files
from dashboards.panels import SCOPE
from tests.support.catalog import (
    committed_records,
    known_series,
    selectors,
    series_names,
    undeduplicated_sums,
)
from tests.support.procs import ROOT, require_binary

DASHBOARD_DIR = ROOT / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RANGE_FUNCTIONS = r"\b(rate|irate|increase|deriv|delta|idelta|[a-z]+_over_time)\s*\("


def load(name: str) -> dict:
    return json.loads((DASHBOARD_DIR / name).read_text())


def panels(dashboard: dict) -> list[dict]:
    return [panel for panel in dashboard["panels"] if panel["type"] != "row"]


def all_panels() -> list[tuple[str, dict]]:
    return [(name, panel) for name in DASHBOARDS for panel in panels(load(name))]


def panel_id(item: tuple[str, dict]) -> str:
    return f"{Path(item[0]).stem}:{item[1]['title']}"


def unit_of(panel: dict) -> str | None:
    if panel["type"] == "heatmap":  # the y axis of Grafana 9+'s heatmap, and the legacy one
        assert panel["yAxis"]["format"] == panel["options"]["yAxis"]["unit"]
        return panel["options"]["yAxis"]["unit"]
    return panel["fieldConfig"]["defaults"].get("unit")


def test_committed_json_matches_the_generator() -> None:
    for name, content in generated_files().items():
        assert (DASHBOARD_DIR / name).read_text() == content, "run python dashboards/generate.py"


@pytest.mark.parametrize("name", list(DASHBOARDS))
def test_dashboard_has_datasource_variable_stable_uid_and_tags(name: str) -> None:
    dashboard = load(name)
    variables = {var["name"]: var for var in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert dashboard["uid"] == Path(name).stem
    assert "celery-observatory" in dashboard["tags"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24


@pytest.mark.parametrize("name", list(DASHBOARDS))
def test_dashboard_has_cluster_namespace_job_and_instance_variables(name: str) -> None:
    """The mixins' convention: one dashboard serves several clusters and exporters."""
    variables = {var["name"]: var for var in load(name)["templating"]["list"]}
    for var in ("cluster", "namespace", "job", "instance"):
        assert variables[var]["query"].startswith("label_values(celery_exporter_build_info")
        assert variables[var]["query"].endswith(f", {var})")
        assert variables[var]["includeAll"] and variables[var]["multi"]
        assert variables[var]["datasource"] == DATASOURCE
    # Labels that may be absent: "All" is .*, which matches the empty value too.
    assert variables["cluster"]["allValue"] == ".*"
    assert variables["namespace"]["allValue"] == ".*"
    # job and instance always exist: "All" is the list of the exporters' values, so up{} and
    # scrape_* panels do not pick up every other job of the Prometheus.
    assert variables["job"]["allValue"] is None and variables["instance"]["allValue"] is None
    assert 'cluster=~"$cluster", namespace=~"$namespace"' in variables["job"]["query"]
    assert 'job=~"$job"' in variables["instance"]["query"]


@pytest.mark.parametrize("item", all_panels(), ids=lambda item: panel_id(item))
def test_every_query_is_scoped_by_the_variables(item: tuple[str, dict]) -> None:
    """Every series selector carries cluster, namespace and job; raw series also instance
    (recording rules have no instance: they are deduplicated across replicas)."""
    _, panel = item
    for target in panel["targets"]:
        found = selectors(target["expr"])
        for series, braces in found:
            for matcher in SCOPE:
                assert matcher in braces, f"{series}{braces} lacks {matcher}"
            if series.count(":") < 2:
                assert 'instance=~"$instance"' in braces, f"{series}{braces}"
        if not found:  # a constant from alerts/settings.py, e.g. the expected intervals
            assert "vector(" in target["expr"], target["expr"]


@pytest.mark.parametrize("item", all_panels(), ids=lambda item: panel_id(item))
def test_queries_are_replica_safe(item: tuple[str, dict]) -> None:
    """No sum over raw exporter series without one replica taken first: two exporters on one
    broker must not double a rate (the live proof is tests/test_alerts_ha.py)."""
    _, panel = item
    for target in panel["targets"]:
        assert not undeduplicated_sums(target["expr"]), target["expr"]


def test_every_query_is_promql_prometheus_accepts(tmp_path: Path) -> None:
    """Each expression, variables substituted, as a recording rule for promtool to parse."""
    values = {"$__rate_interval": "1m", "$__range": "1h", "$queue": "q", "$task": "t"}
    rules = []
    for i, (_, panel) in enumerate(all_panels()):
        for j, target in enumerate(panel["targets"]):
            expr = target["expr"]
            for variable, value in values.items():
                expr = expr.replace(variable, value)
            expr = re.sub(r"\$(cluster|namespace|job|instance)", ".*", expr)
            rules.append({"record": f"dashboard:query_{i}_{j}:check", "expr": expr})
    path = tmp_path / "queries.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run(
        [require_binary("promtool", "prometheus"), "check", "rules", str(path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_task_detail_has_queue_and_task_variables() -> None:
    variables = {var["name"]: var for var in load("celery-task-detail.json")["templating"]["list"]}
    assert variables["queue"]["query"].startswith("label_values(")
    assert variables["queue"]["query"].endswith(", queue_name)")
    assert 'job=~"$job"' in variables["queue"]["query"]
    assert variables["task"]["query"].startswith("label_values(")
    assert 'queue_name=~"$queue"' in variables["task"]["query"]
    for name in ("queue", "task"):
        assert variables[name]["datasource"] == DATASOURCE
        assert variables[name]["includeAll"] and variables[name]["allValue"] == ".*"
    for panel in panels(load("celery-task-detail.json")):
        for target in panel["targets"]:
            assert 'queue_name=~"$queue"' in target["expr"], panel["title"]
            assert 'name=~"$task"' in target["expr"], panel["title"]


@pytest.mark.parametrize("item", all_panels(), ids=panel_id)
def test_panel_has_unit_description_and_datasource_variable(item: tuple[str, dict]) -> None:
    _, panel = item
    assert unit_of(panel), "every panel needs a unit"
    description = panel.get("description") or ""
    assert "Bad" in description, "the description says what bad looks like"
    assert panel["datasource"] == DATASOURCE
    assert panel["targets"], "a panel without queries"
    for target in panel["targets"]:
        assert target["datasource"] == DATASOURCE
        assert target["refId"]


@pytest.mark.parametrize("item", all_panels(), ids=panel_id)
def test_range_functions_use_rate_interval_or_range(item: tuple[str, dict]) -> None:
    _, panel = item
    for target in panel["targets"]:
        expr = target["expr"]
        windows = re.findall(r"\[([^\]]+)\]", expr)
        if re.search(RANGE_FUNCTIONS, expr):
            assert windows, expr
        for window in windows:
            assert window in ("$__rate_interval", "$__range"), f"hard-coded window in {expr}"


@pytest.mark.parametrize("item", all_panels(), ids=panel_id)
def test_panel_queries_only_contract_metrics_and_recording_rules(item: tuple[str, dict]) -> None:
    _, panel = item
    known = known_series()
    for target in panel["targets"]:
        unknown = series_names(target["expr"]) - known
        assert not unknown, f"{target['expr']}: unknown series {unknown}"


def test_overview_uses_the_recording_rules() -> None:
    exprs = " ".join(t["expr"] for p in panels(load("celery-overview.json")) for t in p["targets"])
    used = {name for name in committed_records() if name in exprs}
    assert "name_queue_name:celery_task_failure:ratio_rate5m" in used
    assert "name_queue_name:celery_task_runtime:quantile_rate5m" in used
    assert "name_queue_name:celery_task_queue_wait_time:quantile_rate5m" in used
    assert "queue_name:celery_queue_drain_time_seconds:rate5m" in used
    assert "queue_name:celery_queue_utilisation:ratio" in used
    assert "queue_name_slo:celery_slo_error_budget:remaining" in used


def test_overview_shows_the_blind_spots() -> None:
    """Lost, redelivered, stuck, scheduled and periodic tasks, worker states, capacity, SLOs."""
    exprs = " ".join(t["expr"] for p in panels(load("celery-overview.json")) for t in p["targets"])
    for metric in (
        "celery_task_lost_total",
        "celery_task_redelivered_total",
        "celery_task_oldest_running_age_seconds",
        "celery_queue_scheduled_messages",
        "celery_task_last_sent_timestamp_seconds",
        "celery_worker_state",
    ):
        assert metric in exprs, metric
    titles = {p["title"]: p for p in panels(load("celery-overview.json"))}
    states = titles["Worker states"]["fieldConfig"]["defaults"]["mappings"][0]["options"]
    assert {m["text"] for m in states.values()} == {"online", "busy", "offline", "lost"}
    periodic = titles["Periodic tasks: last sent"]
    assert "workload.tasks.refresh_stats" in periodic["targets"][1]["expr"]

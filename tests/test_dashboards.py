"""Static checks of the committed Grafana dashboards: what a user importing them relies on."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from dashboards.generate import DASHBOARDS, generated_files
from tests.support.catalog import committed_records, known_series, series_names
from tests.support.procs import ROOT

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


def test_task_detail_has_queue_and_task_variables() -> None:
    variables = {var["name"]: var for var in load("celery-task-detail.json")["templating"]["list"]}
    assert variables["queue"]["query"].startswith("label_values(")
    assert variables["queue"]["query"].endswith(", queue_name)")
    assert variables["task"]["query"].startswith("label_values(")
    assert '{queue_name=~"$queue"}' in variables["task"]["query"]
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

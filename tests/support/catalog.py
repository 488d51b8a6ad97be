"""What the rules and dashboards may query: the exporter's metric contract, the recording
rules, and the series Prometheus makes itself. Shared by the static and the live tests."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from exporter import metrics
from tests.support.procs import ROOT

RULES_FILE = ROOT / "alerts" / "celery-observatory.rules.yml"
DASHBOARD_DIR = ROOT / "dashboards"
PROMETHEUS_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}


def rule_groups(path: Path = RULES_FILE) -> list[dict]:
    return yaml.safe_load(path.read_text())["groups"]


def committed_alerts() -> list[dict]:
    return [rule for group in rule_groups() for rule in group["rules"] if "alert" in rule]


def committed_records() -> set[str]:
    return {
        rule["record"] for group in rule_groups() for rule in group["rules"] if "record" in rule
    }


def contract_series() -> set[str]:
    """Every series name the exporter's metric contract (exporter/metrics.py) produces."""
    names = set()
    for metric in metrics.ALL:
        if metric.kind == "histogram":
            names |= {f"{metric.name}_bucket", f"{metric.name}_sum", f"{metric.name}_count"}
        else:
            names.add(metric.name)
    return names


def known_series() -> set[str]:
    return contract_series() | committed_records() | PROMETHEUS_SERIES


def series_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: celery_* series and recording rules (a:b:c)."""
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    tokens = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", without_strings))
    return {t for t in tokens if t.startswith("celery_") or t.count(":") >= 2}


def dashboard_panels(name: str) -> list[dict]:
    """The non-row panels of a committed dashboard JSON file."""
    dashboard = json.loads((DASHBOARD_DIR / name).read_text())
    return [panel for panel in dashboard["panels"] if panel["type"] != "row"]

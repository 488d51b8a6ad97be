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

# Metrics of the contract of issues 12 and 13 that the rules and dashboards already use but
# exporter/metrics.py does not define yet: the exporter work adds them. Each entry says what
# the live tests must make happen for the metric to have data. When the exporter defines one,
# tests/test_alerts_rules.py says so: delete it here, and the live checks then require it.
PENDING_EXPORTER_METRICS: dict[str, str] = {}


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
    return (
        contract_series() | set(PENDING_EXPORTER_METRICS) | committed_records() | PROMETHEUS_SERIES
    )


def needs_pending_metric(expr: str) -> set[str]:
    """The pending exporter metrics ``expr`` reads, directly or through recording rules."""
    pending = set(PENDING_EXPORTER_METRICS)
    found = series_names(expr) & pending
    records = {
        rule["record"]: rule["expr"]
        for group in rule_groups()
        for rule in group["rules"]
        if "record" in rule
    }
    for name in series_names(expr) & set(records):
        found |= needs_pending_metric(records[name])  # record rules never refer to themselves
    return found


def series_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: celery_* series and recording rules (a:b:c)."""
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    tokens = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", without_strings))
    return {t for t in tokens if t.startswith("celery_") or t.count(":") >= 2}


def dashboard_panels(name: str) -> list[dict]:
    """The non-row panels of a committed dashboard JSON file."""
    dashboard = json.loads((DASHBOARD_DIR / name).read_text())
    return [panel for panel in dashboard["panels"] if panel["type"] != "row"]


SELECTOR_TOKENS = re.compile(
    r'"(?:[^"\\]|\\.)*"'  # a string: skipped whole
    r'|(?<![\w:])([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[^}"]|"(?:[^"\\]|\\.)*")*\})?'
)


def selectors(expr: str) -> list[tuple[str, str]]:
    """(series name, its braces or "") for every series selector in expr."""
    found = []
    for match in SELECTOR_TOKENS.finditer(expr):
        name = match[1]
        if name and (name in series_names(name) or name in PROMETHEUS_SERIES):
            found.append((name, match[2] or ""))
    return found


AGGREGATION = re.compile(r"\b(sum|count|avg)\s*(?:(without|by)\s*\(([^)]*)\))?\s*\(")
DEDUP = re.compile(r"\b(max|min|group) without \(instance, pod[^)]*\) \(")


def _argument(expr: str, open_paren: int) -> str:
    """The text inside the parenthesis that opens at ``open_paren``."""
    depth = 0
    for i in range(open_paren, len(expr)):
        depth += {"(": 1, ")": -1}.get(expr[i], 0)
        if depth == 0:
            return expr[open_paren + 1 : i]
    raise AssertionError(f"unbalanced: {expr}")


def undeduplicated_sums(expr: str) -> list[str]:
    """Aggregations that sum raw exporter series without taking one replica first."""
    bad = []
    for match in AGGREGATION.finditer(expr):
        if match[2] == "by" and "instance" in match[3]:
            continue  # per exporter process, on purpose
        argument = _argument(expr, match.end() - 1)
        outside = DEDUP.sub("", argument)
        for dedup in DEDUP.finditer(argument):
            outside = outside.replace(_argument(argument, dedup.end() - 1), "")
        if any(name.startswith("celery_") for name in series_names(outside)):
            bad.append(expr[match.start() : match.end() + 60])
    return bad

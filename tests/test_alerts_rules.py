"""Static checks of the alerting side: annotations, runbooks, generated files, overrides and
the Prometheus/Alertmanager configs (validated by the real promtool and amtool)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from alerts.configs import alertmanager_config, prometheus_config
from alerts.generate import render_rules, to_yaml
from alerts.settings import DEFAULTS, AlertSettings, SettingsError, fast, with_overrides
from tests.support.catalog import (
    RULES_FILE,
    committed_alerts,
    known_series,
    rule_groups,
    series_names,
)
from tests.support.procs import ROOT, require_binary

RUNBOOKS = ROOT / "alerts" / "runbooks"
SEVERITIES = {"critical", "warning", "info"}


@pytest.mark.parametrize("rule", committed_alerts(), ids=lambda rule: rule["alert"])
def test_alert_has_severity_summary_description_and_runbook(rule: dict) -> None:
    assert rule["labels"]["severity"] in SEVERITIES
    annotations = rule["annotations"]
    assert annotations["summary"].strip()
    assert "{{" in annotations["description"], "description should carry values or labels"
    assert annotations["runbook_url"] == f"alerts/runbooks/{rule['alert']}.md"
    assert rule["for"], "every alert states its for:"


@pytest.mark.parametrize("rule", committed_alerts(), ids=lambda rule: rule["alert"])
def test_runbook_exists_and_says_how_to_diagnose_and_fix(rule: dict) -> None:
    runbook = RUNBOOKS / f"{rule['alert']}.md"
    assert runbook.is_file(), f"missing runbook {runbook}"
    text = runbook.read_text()
    assert text.startswith(f"# {rule['alert']}\n")
    assert "## Diagnose" in text and "## Fix" in text
    assert "```" in text, "a runbook gives concrete commands"


def test_runbook_index_lists_every_alert_and_no_orphan_runbooks() -> None:
    names = {rule["alert"] for rule in committed_alerts()}
    pages = {path.stem for path in RUNBOOKS.glob("*.md")} - {"README"}
    assert pages == names
    index = (RUNBOOKS / "README.md").read_text()
    assert all(f"[{name}.md]({name}.md)" in index for name in names)


def test_rules_only_use_metrics_of_the_exporter_contract() -> None:
    known = known_series()
    for rule in (rule for group in rule_groups() for rule in group["rules"]):
        unknown = series_names(rule["expr"]) - known
        assert not unknown, f"{rule.get('alert') or rule['record']}: unknown series {unknown}"


@pytest.mark.parametrize("script", ["alerts/generate.py", "dashboards/generate.py"])
def test_generated_files_are_up_to_date(script: str) -> None:
    result = subprocess.run(
        [sys.executable, script, "--check"], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert result.returncode == 0, f"run python {script}:\n{result.stdout}{result.stderr}"


def test_check_reports_a_stale_file(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "alerts/generate.py", "--out-dir", str(tmp_path)],
        check=True, capture_output=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    rules = tmp_path / "celery-observatory.rules.yml"
    rules.write_text(rules.read_text().replace("> 0.05", "> 0.5"))
    result = subprocess.run(
        [sys.executable, "alerts/generate.py", "--check", "--out-dir", str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    removed = [line for line in result.stdout.splitlines() if line.startswith("-")]
    assert any("ratio_rate5m > 0.5" in line for line in removed), result.stdout
    assert "out of date" in result.stderr


def test_yaml_override_regenerates_with_the_users_slos(tmp_path: Path) -> None:
    slos = tmp_path / "slos.yml"
    slos.write_text("failure_ratio: 0.2\nworker_down_for: 10m\n")
    out = tmp_path / "out"
    subprocess.run(
        [sys.executable, "alerts/generate.py", "--config", str(slos), "--set",
         "oldest_message_age_seconds=900", "--runbook-base-url", "https://wiki.example/rb",
         "--webhook-url", "http://hooks.example:9000/celery", "--out-dir", str(out)],
        check=True, capture_output=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    rules = {r["alert"]: r for g in yaml.safe_load((out / RULES_FILE.name).read_text())["groups"]
             for r in g["rules"] if "alert" in r}  # fmt: skip
    assert "ratio_rate5m > 0.2\n" in rules["CeleryTaskFailureRatioHigh"]["expr"]
    assert rules["CeleryWorkerDown"]["for"] == "10m"
    assert rules["CeleryQueueOldestMessageTooOld"]["expr"].endswith("> 900")
    assert (
        rules["CeleryWorkerDown"]["annotations"]["runbook_url"]
        == "https://wiki.example/rb/CeleryWorkerDown.md"
    )
    manager = yaml.safe_load((out / "alertmanager.yml").read_text())
    assert (
        manager["receivers"][0]["webhook_configs"][0]["url"] == "http://hooks.example:9000/celery"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "no_such_setting=1"], "unknown setting 'no_such_setting'"),
        (["--set", "failure_ratio=lots"], "failure_ratio: expected float"),
        (["--set", "worker_down_for=5 minutes"], "not a Prometheus duration"),
        (["--set", "failure_ratio=1.5"], "failure_ratio must be between 0 and 1"),
        (["--set", "failure_ratio"], "--set expects KEY=VALUE"),
        (["--config", "/nonexistent/slos.yml"], "cannot read /nonexistent/slos.yml"),
    ],
)
def test_bad_overrides_get_a_clear_error_not_a_traceback(args: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "alerts/generate.py", "--check", *args],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_override_rejects_a_config_that_is_not_a_mapping(tmp_path: Path) -> None:
    slos = tmp_path / "slos.yml"
    slos.write_text("- failure_ratio\n")
    result = subprocess.run(
        [sys.executable, "alerts/generate.py", "--check", "--config", str(slos)],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "must hold a mapping" in result.stderr


def test_with_overrides_coerces_types_and_keeps_the_base() -> None:
    changed = with_overrides(DEFAULTS, {"backlog_min_length": "250", "failure_ratio": "0.1"})
    assert changed.backlog_min_length == 250 and changed.failure_ratio == 0.1
    assert DEFAULTS.backlog_min_length == 100
    with pytest.raises(SettingsError, match="expected a number"):
        with_overrides(DEFAULTS, {"backlog_min_length": True})


def test_fast_preset_shortens_every_for_clause() -> None:
    rules = yaml.safe_load(render_rules(fast()))["groups"]
    assert all(group["interval"] == "1s" for group in rules)
    for rule in rules[1]["rules"]:
        assert rule["for"] in {"0s", "1s", "2s"}, rule["alert"]


def test_prometheus_config_is_valid_for_promtool(tmp_path: Path) -> None:
    (tmp_path / "rules.yml").write_text(render_rules(DEFAULTS))
    config = prometheus_config(
        targets=["127.0.0.1:9808"],
        rule_files=["rules.yml"],
        alertmanagers=["127.0.0.1:9093"],
        scrape_interval="1s",
        basic_auth=("prometheus", "s3cret"),
    )
    assert config["global"]["evaluation_interval"] == "1s"
    assert config["scrape_configs"][0]["job_name"] == "celery-exporter"
    (tmp_path / "prometheus.yml").write_text(to_yaml(config))
    result = subprocess.run(
        [require_binary("promtool", "prometheus"), "check", "config", "prometheus.yml"],
        capture_output=True, text=True, cwd=tmp_path, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout


def test_alertmanager_config_is_valid_for_amtool(tmp_path: Path) -> None:
    config = alertmanager_config(webhook_url="http://127.0.0.1:5001/hook", group_wait="1s")
    assert config["route"]["group_wait"] == "1s"
    (tmp_path / "alertmanager.yml").write_text(to_yaml(config))
    result = subprocess.run(
        [require_binary("amtool", "prometheus-alertmanager"), "check-config", "alertmanager.yml"],
        capture_output=True, text=True, cwd=tmp_path, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 inhibit rules" in result.stdout and "1 receivers" in result.stdout


def test_docs_list_every_setting_and_every_alert() -> None:
    docs = (ROOT / "docs" / "dashboards-alerts.md").read_text()
    for setting in dataclasses.fields(AlertSettings):
        assert f"| `{setting.name}` |" in docs, f"setting {setting.name} not documented"
    for rule in committed_alerts():
        assert f"| `{rule['alert']}` |" in docs, f"alert {rule['alert']} not documented"

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
from alerts.rules import ALERTING_GROUP
from alerts.rules import rule_groups as generated_groups
from alerts.settings import (
    DEFAULTS,
    PROJECT_RUNBOOKS_URL,
    AlertSettings,
    SettingsError,
    fast,
    matchers,
    with_overrides,
)
from exporter import metrics
from tests.support.catalog import (
    PENDING_EXPORTER_METRICS,
    RULES_FILE,
    committed_alerts,
    dashboard_panels,
    known_series,
    rule_groups,
    selectors,
    series_names,
    undeduplicated_sums,
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
    # Absolute: Alertmanager shows the link as it is, and a relative path opens nothing.
    assert annotations["runbook_url"] == f"{PROJECT_RUNBOOKS_URL}/{rule['alert']}.md"
    assert rule["for"], "every alert states its for:"


@pytest.mark.parametrize("rule", committed_alerts(), ids=lambda rule: rule["alert"])
def test_runbook_exists_and_says_how_to_diagnose_and_fix(rule: dict) -> None:
    runbook = RUNBOOKS / f"{rule['alert']}.md"
    assert runbook.is_file(), f"missing runbook {runbook}"
    text = runbook.read_text()
    assert text.startswith(f"# {rule['alert']}\n")
    assert "## Diagnose" in text and "## Fix" in text
    assert "```" in text, "a runbook gives concrete commands"


def test_runbook_pages_follow_the_alert_names_and_the_repository_layout() -> None:
    """The default base URL is this repository's alerts/runbooks directory."""
    assert PROJECT_RUNBOOKS_URL.endswith("/alerts/runbooks")
    for rule in committed_alerts():
        page = rule["annotations"]["runbook_url"].removeprefix(PROJECT_RUNBOOKS_URL + "/")
        assert (RUNBOOKS / page).is_file(), page


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
    (alerting,) = [group for group in rules if group["name"] == ALERTING_GROUP]
    for rule in alerting["rules"]:
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


def test_inhibition_matches_deduplicated_alerts() -> None:
    """Alerts deduplicated across replicas carry no `instance`: the inhibition must not
    require one, or CeleryBrokerUnreachable would never silence CeleryWorkerDown."""
    (inhibit,) = alertmanager_config()["inhibit_rules"]
    assert "instance" not in inhibit["equal"]
    assert "job" in inhibit["equal"]
    assert "CeleryWorkerDown" in inhibit["target_matchers"][0]
    rules = {r["alert"]: r for r in committed_alerts()}
    assert "max without (instance, pod" in rules["CeleryWorkerDown"]["expr"]


def test_docs_list_every_setting_and_every_alert() -> None:
    docs = (ROOT / "docs" / "dashboards-alerts.md").read_text()
    for setting in dataclasses.fields(AlertSettings):
        assert f"| `{setting.name}` |" in docs, f"setting {setting.name} not documented"
    for rule in committed_alerts():
        assert f"| `{rule['alert']}` |" in docs, f"alert {rule['alert']} not documented"
    for group in rule_groups():
        for rule in group["rules"]:
            if "record" in rule:
                operation = rule["record"].rsplit(":", 1)[1]
                # ratio_rate30m is listed as `..._rate30m` after its 5m sibling
                short = f"`..._{operation.removeprefix('ratio_')}`"
                assert f"`{rule['record']}`" in docs or short in docs, rule["record"]


def test_docs_describe_every_dashboard_panel() -> None:
    docs = (ROOT / "docs" / "dashboards-alerts.md").read_text()
    for name in ("celery-overview.json", "celery-task-detail.json", "celery-exporter-health.json"):
        for panel in dashboard_panels(name):
            assert panel["title"] in docs, f"{name}: panel {panel['title']!r} not documented"


# --- scoping (selector), replica safety, settings of the new alerts ----------------------


def _exprs(settings: AlertSettings) -> list[tuple[str, str]]:
    return [
        (rule.get("alert") or rule["record"], rule["expr"])
        for group in generated_groups(settings)["groups"]
        for rule in group["rules"]
    ]


def test_a_selector_lands_in_every_series_selector_of_every_rule() -> None:
    selector = 'job=~"celery.*", cluster="eu-1"'
    scoped = with_overrides(DEFAULTS, {"selector": selector})
    checked = 0
    for name, expr in _exprs(scoped):
        for series, braces in selectors(expr):
            assert all(m in braces for m in matchers(selector)), f"{name}: {series}{braces}"
            checked += 1
    assert checked > 100, checked  # the walk found the selectors, it did not skip them all
    # Without a selector the same walk finds bare selectors: the check can fail.
    assert any(braces == "" for _, e in _exprs(DEFAULTS) for _, braces in selectors(e))


def test_every_aggregation_of_exporter_series_deduplicates_replicas_first() -> None:
    """sum/count over raw exporter series would double with two replicas: each must be fed
    by `max without (instance, pod)` (or keep `instance`, for per-exporter alerts)."""
    for name, expr in _exprs(DEFAULTS):
        assert not undeduplicated_sums(expr), name
    # The check can fail: the rules as they were before replicas were considered.
    assert undeduplicated_sums("sum without (hostname) (rate(celery_task_sent_total[5m]))")
    assert not undeduplicated_sums(
        "sum without (hostname) (max without (instance, pod) (rate(celery_task_sent_total[5m])))"
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"selector": "job=celery"}, "selector: cannot read"),
        ({"selector": 'job="a" namespace="b"'}, "expected ','"),
        ({"runbook_base_url": "alerts/runbooks"}, "must be an absolute URL"),
        ({"replica_labels": "instance, 9pod"}, "not a label name"),
        ({"queue_slos": {"q": {"wait_seconds": 7, "wait_objective": 0.99}}}, "not a queue-wait"),
        ({"queue_slos": {"q": {"wait_seconds": 10}}}, "go together"),
        ({"queue_slos": {"q": {"success_objective": 1.5}}}, "between 0 and 1"),
        ({"queue_slos": {"q": {"wait": 10}}}, "unknown wait"),
        ({"queue_slos": {"q": {}}}, "no objective"),
        ({"periodic_tasks": {"t": 0}}, "seconds must be positive"),
        ({"periodic_tasks": "[1, 2]"}, "expected a mapping"),
        ({"queue_wait_buckets": [5, 1]}, "must be increasing"),
        ({"slo_period": "a month"}, "not a Prometheus duration"),
    ],
)
def test_new_settings_refuse_bad_values_clearly(overrides: dict, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        with_overrides(DEFAULTS, overrides)


def test_structured_settings_come_from_yaml_and_set(tmp_path: Path) -> None:
    """Mappings (periodic tasks, per-task limits, SLOs) via --config and via --set as YAML."""
    config = tmp_path / "mine.yml"
    config.write_text(
        "periodic_tasks: {billing.nightly: 90000}\n"
        "queue_slos:\n  payments: {wait_seconds: 5, wait_objective: 0.999}\n"
    )
    out = tmp_path / "out"
    subprocess.run(
        [sys.executable, "alerts/generate.py", "--config", str(config), "--set",
         "running_too_long_per_task={billing.nightly: 7200}", "--out-dir", str(out)],
        check=True, capture_output=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    text = (out / RULES_FILE.name).read_text()
    assert 'name="billing.nightly"}) > 90000' in text
    assert 'name="billing.nightly"}) > 7200' in text
    assert 'queue_name="payments", le="5.0"' in text
    assert "/ 0.001 > 14.4" in text
    assert "workload.tasks.refresh_stats" not in text  # the mapping replaced the default
    result = subprocess.run(
        [require_binary("promtool", "prometheus"), "check", "rules", str(out / RULES_FILE.name)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_burn_rates_follow_the_slo_period() -> None:
    """The workbook's 14.4x/6x/3x/1x are for 30 days; a 28-day period scales them."""
    text = render_rules(with_overrides(DEFAULTS, {"slo_period": "28d"}))
    assert "> 13.44" in text and "> 5.6" in text and "> 2.8" in text and "> 0.933333" in text
    assert "[28d]" in text


def test_pending_exporter_metrics_are_still_pending() -> None:
    """A reminder for the merge: once exporter/metrics.py defines a pending metric, delete it
    from tests/support/catalog.py so the live tests require its data again."""
    defined = {metric.name for metric in metrics.ALL}
    arrived = sorted(set(PENDING_EXPORTER_METRICS) & defined)
    assert not arrived, (
        f"exporter/metrics.py now defines {arrived}: remove them from "
        "PENDING_EXPORTER_METRICS in tests/support/catalog.py (and re-enable their live checks)"
    )

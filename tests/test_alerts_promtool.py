"""The rules file passes ``promtool check rules`` and every promtool unit test in alerts/tests.

Also checks that the unit tests cover what they claim to: every alert has a case where it
fires and a case where it must stay silent, and every recording rule is evaluated; and that
the rules stay correct when scoped by a ``selector`` (the unit tests pass against rules
scoped to their job, and fail against rules scoped to another).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from alerts.generate import render_rules
from alerts.rules import alert_names, rule_groups
from alerts.settings import DEFAULTS, fast, with_overrides
from tests.support.procs import ROOT, require_binary

RULES = ROOT / "alerts" / "celery-observatory.rules.yml"
UNIT_TESTS = sorted((ROOT / "alerts" / "tests").glob("*.yml"))


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_binary("promtool", "prometheus"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def test_committed_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    expected = sum(len(group["rules"]) for group in rule_groups(DEFAULTS)["groups"])
    assert f"SUCCESS: {expected} rules found" in result.stdout


def test_fast_variant_passes_promtool_check(tmp_path: Path) -> None:
    rules = tmp_path / "fast.rules.yml"
    rules.write_text(render_rules(fast()))
    result = promtool("check", "rules", str(rules))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass() -> None:
    assert UNIT_TESTS, "no promtool unit tests found in alerts/tests"
    result = promtool("test", "rules", *map(str, UNIT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(UNIT_TESTS), result.stdout


def _alert_cases() -> tuple[set[str], set[str]]:
    fires: set[str] = set()
    silent: set[str] = set()
    for path in UNIT_TESTS:
        for group in yaml.safe_load(path.read_text())["tests"]:
            for case in group.get("alert_rule_test", []):
                (fires if case.get("exp_alerts") else silent).add(case["alertname"])
    return fires, silent


@pytest.mark.parametrize("alert", alert_names(DEFAULTS))
def test_every_alert_has_a_firing_and_a_silent_unit_test(alert: str) -> None:
    fires, silent = _alert_cases()
    assert alert in fires, f"{alert}: no promtool case where it fires"
    assert alert in silent, f"{alert}: no promtool case where it must stay silent"


def test_every_recording_rule_is_evaluated_by_a_unit_test() -> None:
    evaluated = set()
    for path in UNIT_TESTS:
        for group in yaml.safe_load(path.read_text())["tests"]:
            for case in group.get("promql_expr_test", []):
                for sample in case.get("exp_samples", []):
                    evaluated.add(sample["labels"].split("{")[0])
    records = {
        rule["record"]
        for group in rule_groups(DEFAULTS)["groups"]
        for rule in group["rules"]
        if "record" in rule
    }
    missing = records - evaluated
    assert not missing, f"recording rules without a promtool case: {sorted(missing)}"


def _unit_tests_against(rules_text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run every promtool unit test of alerts/tests against ``rules_text`` instead."""
    (tmp_path / "tests").mkdir()
    for path in UNIT_TESTS:
        (tmp_path / "tests" / path.name).write_text(path.read_text())
    (tmp_path / "celery-observatory.rules.yml").write_text(rules_text)
    names = [f"tests/{path.name}" for path in UNIT_TESTS]
    return subprocess.run(
        [require_binary("promtool", "prometheus"), "test", "rules", *names],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip


def test_rules_scoped_by_a_selector_still_pass_every_unit_test(tmp_path: Path) -> None:
    """The unit tests' series carry job="celery-exporter": scoped to it, nothing changes."""
    # Matchers the unit tests' series (no cluster or namespace label) pass. (A matcher on `job`
    # would pass too, but absent() drops a label matched twice, so CeleryExporterDown's
    # no-target case would lose its job label.)
    scoped = with_overrides(DEFAULTS, {"selector": 'cluster=~".*", namespace!="kube-system"'})
    result = _unit_tests_against(render_rules(scoped), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(UNIT_TESTS), result.stdout


def test_rules_scoped_to_another_job_see_nothing(tmp_path: Path) -> None:
    """...and scoped to another job, the firing cases fail: the selector really filters."""
    elsewhere = with_overrides(DEFAULTS, {"selector": 'job="another-cluster"'})
    result = _unit_tests_against(render_rules(elsewhere), tmp_path)
    assert result.returncode != 0
    failures = result.stdout + result.stderr
    for alert in alert_names(DEFAULTS):
        assert f"alertname: {alert}," in failures, f"{alert} fired outside its scope"


def test_unit_tests_break_when_a_threshold_changes(tmp_path: Path) -> None:
    """The unit tests pin the committed thresholds: a changed threshold must fail them."""
    (tmp_path / "tests").mkdir()
    for path in UNIT_TESTS:
        (tmp_path / "tests" / path.name).write_text(path.read_text())
    loose = DEFAULTS.__class__(worker_down_for="30m", failure_ratio=0.5)
    (tmp_path / "celery-observatory.rules.yml").write_text(render_rules(loose))
    result = subprocess.run(
        [require_binary("promtool", "prometheus"), "test", "rules", "tests/workers.yml",
         "tests/tasks.yml"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode != 0
    assert "CeleryWorkerDown" in result.stdout + result.stderr
    assert "CeleryTaskFailureRatioHigh" in result.stdout + result.stderr

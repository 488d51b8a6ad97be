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


def test_periodic_intervals_of_any_length_pass_promtool_check(tmp_path: Path) -> None:
    """A periodic task's longest gap is a range and an offset in CeleryPeriodicTaskMissed: a
    weekly task (3 x 604800 s) or a fractional interval must still be a PromQL duration."""
    tasks = {"weekly": 3 * 604800.0, "tick": 45.5}
    rules = tmp_path / "periodic.rules.yml"
    rules.write_text(render_rules(with_overrides(DEFAULTS, {"periodic_tasks": tasks})))
    result = promtool("check", "rules", str(rules))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[1814400s]" in rules.read_text() and "offset 45500ms" in rules.read_text()


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


def _unit_tests_against(rules_text: str, directory: Path) -> subprocess.Popen[str]:
    """Start promtool on every unit test of alerts/tests, against ``rules_text`` instead."""
    (directory / "tests").mkdir(parents=True)
    for path in UNIT_TESTS:
        (directory / "tests" / path.name).write_text(path.read_text())
    (directory / "celery-observatory.rules.yml").write_text(rules_text)
    names = [f"tests/{path.name}" for path in UNIT_TESTS]
    return subprocess.Popen(
        [require_binary("promtool", "prometheus"), "test", "rules", *names],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=directory,
    )  # fmt: skip


def test_a_selector_scopes_every_rule(tmp_path: Path) -> None:
    """Rules scoped to the unit tests' series pass every unit test; scoped to another job,
    every alert's firing case fails: the selector reaches every rule and really filters.
    (Both promtool runs at once: each evaluates every rule at every step of every case.)"""
    # Matchers the unit tests' series (no cluster or namespace label) pass. (A matcher on `job`
    # would pass too, but absent() drops a label matched twice, so CeleryExporterDown's
    # no-target case would lose its job label.)
    inside = with_overrides(DEFAULTS, {"selector": 'cluster=~".*", namespace!="kube-system"'})
    outside = with_overrides(DEFAULTS, {"selector": 'job="another-cluster"'})
    runs = [
        _unit_tests_against(render_rules(inside), tmp_path / "inside"),
        _unit_tests_against(render_rules(outside), tmp_path / "outside"),
    ]
    (passed, passed_err), (failed, failed_err) = (run.communicate(timeout=300) for run in runs)
    assert runs[0].returncode == 0, passed + passed_err
    assert passed.count("SUCCESS") == len(UNIT_TESTS), passed
    assert runs[1].returncode != 0
    for alert in alert_names(DEFAULTS):
        assert f"alertname: {alert}," in failed + failed_err, f"{alert} fired outside its scope"


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

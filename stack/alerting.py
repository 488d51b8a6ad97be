"""The stack's own alert rules, and the Prometheus and Alertmanager configs that load them.

The rules are generated at start from ``alerts/settings.py`` exactly as the committed file is,
with two differences: the runbook links point at the stack's own server (so they open on a
machine without internet), and ``--fast`` uses ``alerts.settings.fast()``: second-scale
windows, so that every fault shows its alert within seconds instead of minutes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from alerts.configs import alertmanager_config, prometheus_config
from alerts.generate import render_rules
from alerts.settings import DEFAULTS, AlertSettings, duration_seconds, fast, with_overrides
from stack.ports import HOST, Ports


@dataclass(frozen=True)
class Timing:
    """How often things are measured and notified."""

    scrape: str  # Prometheus scrape and rule evaluation interval
    group_wait: str  # Alertmanager: first notification of a new alert group
    group_interval: str  # Alertmanager: further changes of a group (e.g. resolved)
    inspect_interval: float  # the exporter's background inspect (consumers per queue)

    @property
    def scrape_seconds(self) -> float:
        return duration_seconds(self.scrape)


DEFAULT_TIMING = Timing(scrape="5s", group_wait="10s", group_interval="30s", inspect_interval=10)
FAST_TIMING = Timing(scrape="1s", group_wait="1s", group_interval="2s", inspect_interval=2)


def runbook_base_url(ports: Ports) -> str:
    return f"http://{HOST}:{ports.webhook}/runbooks"


# fast() lowers the minimum traffic of the ratio alerts to a handful of tasks, so that tests
# fire them with a few failures. A live stack's first minute holds such handfuls by chance:
# one failed thumbnail among its first three, or one task-started event counted in a series
# born after the worker's heartbeat count. --fast keeps the fast windows and these minimums.
PRODUCTION_MINIMUMS = ("failure_min_tasks", "event_loss_min_tasks")


# The slow-task fault's task (it sleeps at most 60 s) gets a running-time limit of its own,
# so that CeleryTaskRunningTooLong can fire for it.
SLOW_TASK = "workload.tasks.dummy_task"
SLOW_TASK_LIMIT = 10.0


def settings_for(fast_mode: bool, overrides: Mapping[str, Any], ports: Ports) -> AlertSettings:
    """The alert settings the stack's Prometheus evaluates (``--fast``, ``--alert-setting``)."""
    base = DEFAULTS
    if fast_mode:
        minimums = {name: getattr(DEFAULTS, name) for name in PRODUCTION_MINIMUMS}
        base = with_overrides(fast(), minimums)
    stack = {"runbook_base_url": runbook_base_url(ports), **_slow_task_limit(base)}
    return with_overrides(base, {**stack, **overrides})


def _slow_task_limit(base: AlertSettings) -> dict[str, Any]:
    # Only where alerts/settings.py has per-task limits (issue 13's CeleryTaskRunningTooLong).
    if "running_too_long_per_task" not in {f.name for f in dataclasses.fields(base)}:
        return {}
    limits = dict(setting(base, "running_too_long_per_task", {}))
    return {"running_too_long_per_task": {**limits, SLOW_TASK: SLOW_TASK_LIMIT}}


def setting(settings: AlertSettings, name: str, default: Any = None) -> Any:
    """A setting that alerts/settings.py may not define (yet): the faults read them so."""
    return getattr(settings, name, default)


@dataclass(frozen=True)
class AlertConfig:
    """The files written for Prometheus and Alertmanager, and what the rules contain.

    Prometheus starts without the rules and gets them (:meth:`enable_rules`, then SIGHUP)
    once it has scraped the exporter: its first scrape comes up to 5 s after it starts (its
    target discovery is throttled), and until then ``absent(up{job=...})`` would make
    CeleryExporterDown fire at every start with --fast's 2 s ``for:``.
    """

    prometheus: Path
    alertmanager: Path
    rules: Path
    prometheus_config: dict[str, Any]
    # alert name -> its `for:` in seconds, for the alerts present in the rules
    alert_for: dict[str, float]

    def enable_rules(self) -> None:
        config = {**self.prometheus_config, "rule_files": [str(self.rules)]}
        _write(self.prometheus, yaml.safe_dump(config, sort_keys=False))


def write_configs(
    state: Path, ports: Ports, settings: AlertSettings, timing: Timing
) -> AlertConfig:
    rules_text = render_rules(settings)
    rules = _write(state / "rules.yml", rules_text)
    prometheus = prometheus_config(
        [f"{HOST}:{ports.exporter}"],
        [],
        [f"{HOST}:{ports.alertmanager}"],
        scrape_interval=timing.scrape,
    )
    alertmanager = _write(
        state / "alertmanager.yml",
        yaml.safe_dump(
            alertmanager_config(
                f"http://{HOST}:{ports.webhook}/alerts",
                group_wait=timing.group_wait,
                group_interval=timing.group_interval,
            ),
            sort_keys=False,
        ),
    )
    return AlertConfig(
        _write(state / "prometheus.yml", yaml.safe_dump(prometheus, sort_keys=False)),
        alertmanager,
        rules,
        prometheus,
        alert_durations(rules_text),
    )


def alert_durations(rules_text: str) -> dict[str, float]:
    """Alert name -> `for:` seconds of every alerting rule in a rules file."""
    found = {}
    for group in yaml.safe_load(rules_text)["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                found[rule["alert"]] = duration_seconds(rule.get("for") or "0s")
    return found


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path

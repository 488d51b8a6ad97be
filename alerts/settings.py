"""Every alert threshold, window and ``for:`` in one place, overridable from YAML or the CLI.

The committed rules file is generated from :data:`DEFAULTS`. Users regenerate with their own
SLOs (``python alerts/generate.py --config my-slos.yml --set failure_ratio=0.1``), and the
live tests generate a fast variant (:func:`fast`) with second-scale windows.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

# Prometheus' duration syntax, e.g. 90s, 5m, 1h30m.
DURATION = re.compile(r"^((\d+)y)?((\d+)w)?((\d+)d)?((\d+)h)?((\d+)m)?((\d+)s)?((\d+)ms)?$")
UNITS_SECONDS = {"y": 365 * 86400, "w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}


class SettingsError(ValueError):
    """An override names an unknown setting or gives a value of the wrong type."""


@dataclasses.dataclass(frozen=True)
class AlertSettings:
    """Thresholds and windows of every alert. Field comments say what each one controls."""

    # Where the runbooks live; each alert links to <base>/<AlertName>.md.
    runbook_base_url: str = "alerts/runbooks"
    # The scrape job of the exporter (CeleryExporterDown looks at up{job=...}).
    exporter_job: str = "celery-exporter"
    # Rule group evaluation interval; empty means Prometheus' global evaluation_interval.
    evaluation_interval: str = ""

    # CeleryTaskFailureRatioHigh: failed / (succeeded + failed) per task over 5m ...
    failure_ratio: float = 0.05
    # ... but only for tasks that finished at least this many times in those 5m.
    failure_min_tasks: int = 20
    failure_for: str = "5m"

    # CeleryQueueBacklogGrowing: a queue longer than this that kept growing over the window.
    backlog_min_length: int = 100
    backlog_window: str = "10m"
    backlog_for: str = "10m"

    # CeleryQueueOldestMessageTooOld: the latency SLO for waiting messages, in seconds.
    oldest_message_age_seconds: float = 300.0
    oldest_message_for: str = "2m"

    # CeleryQueueNoConsumers: a queue has messages and no worker consumes it.
    no_consumers_for: str = "5m"

    # CeleryWorkerDown: a worker stopped heartbeating (celery_worker_up == 0).
    worker_down_for: str = "2m"

    # CeleryUnackedDeliveryStale: oldest unacked delivery older than this fraction of
    # visibility_timeout (redelivery, and a duplicate run, happens at 1.0).
    unacked_visibility_fraction: float = 0.5
    unacked_for: str = "5m"

    # CeleryEventsNotArriving: no events at all over the window while workers consume queues.
    events_window: str = "5m"
    events_for: str = "5m"

    # CeleryWorkerTaskEventsMissing: a worker heartbeats and works but sends no task events.
    task_events_missing_for: str = "10m"

    # CeleryExporterDown / CeleryBrokerUnreachable.
    exporter_down_for: str = "2m"
    broker_down_for: str = "1m"

    # CeleryEventLoss: task-started events counted per worker below this fraction of the
    # worker's own count over the window, for workers that accepted at least min tasks.
    event_loss_window: str = "15m"
    event_loss_ratio: float = 0.9
    event_loss_min_tasks: int = 100
    event_loss_for: str = "5m"

    # CeleryExporterDroppingEvents: any event message dropped in the window.
    events_dropped_window: str = "5m"
    events_dropped_for: str = "0s"

    # CeleryBrokerPollStale: queue figures older than this many seconds.
    broker_poll_stale_seconds: float = 60.0
    broker_poll_stale_for: str = "2m"

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "evaluation_interval" and value == "":
                continue  # Prometheus' global evaluation_interval applies
            if _is_duration_field(field.name) and not valid_duration(value):
                raise SettingsError(
                    f"{field.name}: {value!r} is not a Prometheus duration (e.g. 30s, 5m, 1h)"
                )
        if not 0 < self.failure_ratio < 1:
            raise SettingsError(f"failure_ratio must be between 0 and 1, got {self.failure_ratio}")
        if not 0 < self.unacked_visibility_fraction <= 1:
            raise SettingsError("unacked_visibility_fraction must be in (0, 1]")
        if not 0 < self.event_loss_ratio < 1:
            raise SettingsError("event_loss_ratio must be between 0 and 1")


def _is_duration_field(name: str) -> bool:
    return name.endswith(("_for", "_window")) or name == "evaluation_interval"


def valid_duration(value: str) -> bool:
    """True for a Prometheus duration such as ``30s``, ``5m`` or ``1h30m``."""
    return isinstance(value, str) and value != "" and DURATION.match(value) is not None


def duration_seconds(value: str) -> float:
    """``"1h30m"`` -> 5400.0 (used to express windows in the alert text)."""
    match = DURATION.match(value)
    if not value or match is None:
        raise SettingsError(f"{value!r} is not a Prometheus duration")
    total = 0.0
    for number, unit in re.findall(r"(\d+)(ms|y|w|d|h|m|s)", value):
        total += int(number) / 1000 if unit == "ms" else int(number) * UNITS_SECONDS[unit]
    return total


DEFAULTS = AlertSettings()


def fast() -> AlertSettings:
    """Second-scale windows for live tests against a Prometheus scraping every second."""
    return with_overrides(
        DEFAULTS,
        {
            "evaluation_interval": "1s",
            "failure_min_tasks": 3,
            "failure_for": "2s",
            "backlog_min_length": 3,
            "backlog_window": "20s",
            "backlog_for": "2s",
            "oldest_message_age_seconds": 5.0,
            "oldest_message_for": "2s",
            "no_consumers_for": "2s",
            "worker_down_for": "2s",
            "unacked_for": "2s",
            "events_window": "20s",
            "events_for": "2s",
            "task_events_missing_for": "2s",
            "exporter_down_for": "2s",
            "broker_down_for": "2s",
            "event_loss_window": "1m",
            "event_loss_min_tasks": 5,
            "event_loss_for": "2s",
            "events_dropped_window": "20s",
            "broker_poll_stale_seconds": 10.0,
            "broker_poll_stale_for": "2s",
        },
    )


def with_overrides(base: AlertSettings, overrides: Mapping[str, Any]) -> AlertSettings:
    """A copy of ``base`` with ``overrides`` applied; values are coerced to the field's type."""
    fields = {field.name: field for field in dataclasses.fields(AlertSettings)}
    changes: dict[str, Any] = {}
    for key, raw in overrides.items():
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise SettingsError(f"unknown setting {key!r}; known settings: {known}")
        changes[key] = _coerce(key, fields[key].type, raw)
    return dataclasses.replace(base, **changes)


def _coerce(key: str, type_name: Any, raw: Any) -> Any:
    # With `from __future__ import annotations` the field type is its source text.
    kind = {"str": str, "int": int, "float": float}[str(type_name)]
    if kind is str:
        if isinstance(raw, bool | dict | list) or raw is None:
            raise SettingsError(f"{key}: expected a string, got {raw!r}")
        return str(raw)
    if isinstance(raw, bool):
        raise SettingsError(f"{key}: expected a number, got {raw!r}")
    try:
        number = kind(raw)
    except (TypeError, ValueError):
        raise SettingsError(f"{key}: expected {kind.__name__}, got {raw!r}") from None
    if number < 0:
        raise SettingsError(f"{key}: must not be negative, got {raw!r}")
    return number


def parse_assignments(pairs: Iterable[str]) -> dict[str, str]:
    """``["failure_ratio=0.1"]`` -> ``{"failure_ratio": "0.1"}`` (the CLI's ``--set``)."""
    result: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise SettingsError(f"--set expects KEY=VALUE, got {pair!r}")
        result[key.strip()] = value.strip()
    return result


def load_overrides(path: Path) -> dict[str, Any]:
    """Read a YAML mapping of setting -> value (the user's own SLOs)."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise SettingsError(f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise SettingsError(f"{path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"{path} must hold a mapping of setting: value")
    return data

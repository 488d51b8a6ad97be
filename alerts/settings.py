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

from exporter.exposition import format_bound
from exporter.state import Options as ExporterOptions

# Prometheus' duration syntax, e.g. 90s, 5m, 1h30m.
DURATION = re.compile(r"^((\d+)y)?((\d+)w)?((\d+)d)?((\d+)h)?((\d+)m)?((\d+)s)?((\d+)ms)?$")
UNITS_SECONDS = {"y": 365 * 86400, "w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
# One PromQL label matcher: name, operator, double-quoted value (escaped quotes allowed).
MATCHER = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*')
# The exporter's default --queue-wait-buckets: SLO wait thresholds must be one of the bounds.
EXPORTER_QUEUE_WAIT_BUCKETS = ExporterOptions().queue_wait_buckets
# Where this repository's runbooks are published. Users set their own (--runbook-base-url).
PROJECT_RUNBOOKS_URL = (
    "https://github.com/celery-observatory/celery-observatory/blob/main/alerts/runbooks"
)


class SettingsError(ValueError):
    """An override names an unknown setting or gives a value of the wrong type."""


@dataclasses.dataclass(frozen=True)
class QueueSLO:
    """The objectives of one queue; leave out a part to have no SLO of that kind.

    The queue-wait objective reads ``celery_task_queue_wait_time``: ``wait_objective`` of the
    tasks started from the queue must have waited at most ``wait_seconds``, which must be one
    of the histogram's bucket bounds (a quantile between bounds cannot be counted exactly).
    The success objective: succeeded / (succeeded + failed) of the queue's tasks.
    """

    wait_seconds: float | None = None
    wait_objective: float | None = None
    success_objective: float | None = None

    def problems(self, buckets: tuple[float, ...]) -> list[str]:
        found = []
        if (self.wait_seconds is None) != (self.wait_objective is None):
            found.append("wait_seconds and wait_objective go together")
        if self.wait_seconds is not None and self.wait_seconds not in buckets:
            bounds = ", ".join(f"{b:g}" for b in buckets)
            found.append(
                f"wait_seconds {self.wait_seconds:g} is not a queue-wait bucket bound ({bounds})"
            )
        for name in ("wait_objective", "success_objective"):
            value = getattr(self, name)
            if value is not None and not 0 < value < 1:
                found.append(f"{name} must be between 0 and 1, got {value:g}")
        if self.wait_seconds is None and self.success_objective is None:
            found.append("no objective given (wait_seconds/wait_objective, success_objective)")
        return found


# A periodic task's longest acceptable gap, in runs of its schedule: two missed runs are
# tolerated, so a beat restart or a slow first run does not page.
PERIODIC_TOLERANCE_RUNS = 3


def periodic_max_gaps(schedule: Mapping[str, float]) -> dict[str, float]:
    """Task name -> seconds between runs, as beat schedules them -> the ``periodic_tasks``
    setting (the longest acceptable gap of each). Tests that shorten the workload's schedule
    derive their alert settings from it with this, as the defaults below are derived."""
    return {task: PERIODIC_TOLERANCE_RUNS * seconds for task, seconds in schedule.items()}


def _workload_periodic_tasks() -> dict[str, float]:
    # The workload's beat schedule: refresh_stats every 30 s, purge_expired_reports every 300 s.
    return periodic_max_gaps(
        {"workload.tasks.refresh_stats": 30.0, "workload.tasks.purge_expired_reports": 300.0}
    )


def _workload_running_limits() -> dict[str, float]:
    # Tasks whose normal run time is far below the default: an e-mail that takes two
    # minutes is stuck on the SMTP server; a report past 15 minutes will not finish.
    return {"workload.tasks.send_welcome_email": 120.0, "workload.tasks.generate_report": 900.0}


def _workload_slos() -> dict[str, QueueSLO]:
    return {
        "default": QueueSLO(wait_seconds=10.0, wait_objective=0.99, success_objective=0.99),
        "cpu": QueueSLO(wait_seconds=60.0, wait_objective=0.99, success_objective=0.99),
        "io": QueueSLO(wait_seconds=30.0, wait_objective=0.99, success_objective=0.99),
        "email": QueueSLO(wait_seconds=60.0, wait_objective=0.99, success_objective=0.99),
    }


@dataclasses.dataclass(frozen=True)
class AlertSettings:
    """Thresholds and windows of every alert. Field comments say what each one controls."""

    # Where the runbooks live; each alert links to <base>/<AlertName>.md. Must be absolute
    # (Alertmanager shows the link as is); set your own fork, wiki or static server.
    runbook_base_url: str = PROJECT_RUNBOOKS_URL
    # The scrape job of the exporter (CeleryExporterDown looks at up{job=...}).
    exporter_job: str = "celery-exporter"
    # Label matchers added to every series selector of every rule, e.g. job=~"celery.*" or
    # cluster="eu-1", namespace="payments" (the celery-mixin's celerySelector). Empty: all.
    # Match on target labels that survive aggregation (job, namespace, cluster), not instance.
    selector: str = ""
    # Labels that tell exporter replicas apart. Rules take the max over them before any
    # sum, so two exporters watching one broker count every task once.
    replica_labels: str = "instance, pod"
    # Rule group evaluation interval; empty means Prometheus' global evaluation_interval.
    evaluation_interval: str = ""

    # CeleryTaskFailureRatioHigh: failed / (succeeded + failed) per task over 5m ...
    failure_ratio: float = 0.05
    # ... but only for tasks that finished at least this many times in those 5m.
    failure_min_tasks: int = 20
    failure_for: str = "5m"

    # CeleryTaskLost: tasks that died with their worker, counted over the window.
    lost_window: str = "15m"
    lost_for: str = "0s"
    # CeleryTaskRedelivered: a task received twice (visibility timeout or crash redelivery).
    redelivered_window: str = "15m"
    redelivered_for: str = "0s"

    # CeleryTaskRunningTooLong: the oldest running task of a name older than its limit:
    # the per-task limit if the task is listed, else the default (half of the workers'
    # default visibility_timeout of 1 h: past it, an acks_late task is redelivered and runs twice).
    running_too_long_seconds: float = 1800.0
    running_too_long_per_task: dict[str, float] = dataclasses.field(
        default_factory=_workload_running_limits
    )
    running_too_long_for: str = "1m"

    # CeleryPeriodicTaskMissed: task name -> the longest acceptable gap (seconds) between
    # two task-sent events of that periodic task.
    periodic_tasks: dict[str, float] = dataclasses.field(default_factory=_workload_periodic_tasks)
    periodic_missed_for: str = "0s"

    # CeleryQueueBacklogGrowing: a queue longer than this that kept growing over the window.
    backlog_min_length: int = 100
    backlog_window: str = "10m"
    backlog_for: str = "10m"

    # CeleryQueueOldestMessageTooOld: the latency SLO for waiting messages, in seconds.
    oldest_message_age_seconds: float = 300.0
    oldest_message_for: str = "2m"

    # CeleryQueueNoConsumers: a queue has messages and no worker consumes it.
    no_consumers_for: str = "5m"

    # CeleryQueueDrainTimeTooLong: backlog / consumption rate above this many seconds
    # (a backlog nobody consumes is an infinite drain time and alerts too).
    drain_time_seconds: float = 600.0
    drain_time_for: str = "10m"

    # CeleryQueueConsumersSaturated: active tasks / pool size of the queue's consumers at or
    # above this ratio while the backlog grew over the window.
    saturation_ratio: float = 0.9
    saturation_window: str = "10m"
    saturation_for: str = "10m"

    # CeleryWorkerDown: a worker in state lost (heartbeats stopped without a goodbye).
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

    # CeleryExporterDown (no replica up) / CeleryExporterReplicaDown (some, not all, down) /
    # CeleryBrokerUnreachable.
    exporter_down_for: str = "2m"
    exporter_replica_down_for: str = "15m"
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

    # SLOs per queue (CeleryErrorBudgetBurnFast / CeleryErrorBudgetBurnSlow): queue -> its
    # objectives. The error budget is spent over slo_period; the long burn-rate windows
    # (2h, 1d, 3d and the period) are evaluated every slo_long_interval, as they are costly.
    queue_slos: dict[str, QueueSLO] = dataclasses.field(default_factory=_workload_slos)
    slo_period: str = "30d"
    slo_long_interval: str = "1m"
    slo_page_for: str = "2m"
    slo_ticket_for: str = "15m"
    # A burn-rate alert also needs this many events (tasks started for queue_wait, finished
    # runs for success) in its long window: on a quiet queue one failure in three runs is a
    # 33% error ratio, a "burn" no one should be paged for. 0 turns the guard off.
    slo_min_events: int = 20
    # The exporter's --queue-wait-buckets (the SLO wait thresholds are checked against them).
    queue_wait_buckets: tuple[float, ...] = EXPORTER_QUEUE_WAIT_BUCKETS

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
        if self.slo_min_events < 0:
            raise SettingsError(f"slo_min_events must be 0 or more, got {self.slo_min_events}")
        if not 0 < self.saturation_ratio <= 1:
            raise SettingsError("saturation_ratio must be in (0, 1]")
        if "://" not in self.runbook_base_url:
            raise SettingsError(
                f"runbook_base_url must be an absolute URL (https://...), got "
                f"{self.runbook_base_url!r}: a relative path cannot be opened from Alertmanager"
            )
        matchers(self.selector)  # raises on a malformed selector
        if not self.replica_label_names():
            raise SettingsError("replica_labels: name at least one label (e.g. instance)")
        self._check_task_maps()
        self._check_slos()

    def _check_task_maps(self) -> None:
        for name in ("running_too_long_per_task", "periodic_tasks"):
            for task, seconds in getattr(self, name).items():
                if not task or '"' in task or "\\" in task:
                    raise SettingsError(f"{name}: task name {task!r} cannot be matched")
                if seconds <= 0:
                    raise SettingsError(f"{name}: {task}: seconds must be positive")

    def _check_slos(self) -> None:
        if list(self.queue_wait_buckets) != sorted(set(self.queue_wait_buckets)):
            raise SettingsError("queue_wait_buckets must be increasing")
        for queue, slo in self.queue_slos.items():
            if not queue or '"' in queue or "\\" in queue:
                raise SettingsError(f"queue_slos: queue name {queue!r} cannot be matched")
            for problem in slo.problems(self.queue_wait_buckets):
                raise SettingsError(f"queue_slos: {queue}: {problem}")

    def replica_label_names(self) -> tuple[str, ...]:
        names = tuple(name.strip() for name in self.replica_labels.split(",") if name.strip())
        for name in names:
            if not LABEL_NAME.match(name):
                raise SettingsError(f"replica_labels: {name!r} is not a label name")
        return names


def matchers(selector: str) -> list[str]:
    """``'job=~"a.*", ns="x"'`` -> ``['job=~"a.*"', 'ns="x"']``; a clear error if malformed."""
    found: list[str] = []
    rest = selector.strip()
    while rest:
        match = MATCHER.match(rest)
        if match is None:
            raise SettingsError(
                f'selector: cannot read {rest!r}; expected label matchers like job=~"celery.*", '
                'namespace="prod"'
            )
        found.append(f'{match[1]}{match[2]}"{match[3]}"')
        rest = rest[match.end() :]
        if rest and not rest.startswith(","):
            raise SettingsError(f"selector: expected ',' before {rest!r}")
        rest = rest[1:].strip()
    return found


def le_label(bound: float) -> str:
    """The ``le`` label value the exporter writes for a bucket bound (``10`` -> ``"10.0"``)."""
    return format_bound(bound)


def _is_duration_field(name: str) -> bool:
    return name.endswith(("_for", "_window")) or name in (
        "evaluation_interval",
        "slo_period",
        "slo_long_interval",
    )


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
            "lost_window": "30s",
            "redelivered_window": "30s",
            "running_too_long_for": "1s",
            "backlog_min_length": 3,
            "backlog_window": "20s",
            "backlog_for": "2s",
            "oldest_message_age_seconds": 5.0,
            "oldest_message_for": "2s",
            "no_consumers_for": "2s",
            "drain_time_for": "2s",
            "saturation_window": "20s",
            "saturation_for": "2s",
            "worker_down_for": "2s",
            "unacked_for": "2s",
            "events_window": "20s",
            "events_for": "2s",
            "task_events_missing_for": "2s",
            "exporter_down_for": "2s",
            "exporter_replica_down_for": "2s",
            "broker_down_for": "2s",
            "event_loss_window": "1m",
            "event_loss_min_tasks": 5,
            "event_loss_for": "2s",
            "events_dropped_window": "20s",
            "broker_poll_stale_seconds": 10.0,
            "broker_poll_stale_for": "2s",
            "slo_long_interval": "1s",
            "slo_page_for": "1s",
            "slo_ticket_for": "1s",
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
        changes[key] = _coerce(key, str(fields[key].type), raw)
    return dataclasses.replace(base, **changes)


def _coerce(key: str, type_name: str, raw: Any) -> Any:
    # With `from __future__ import annotations` the field type is its source text.
    if type_name.startswith(("dict[", "tuple[")):
        if isinstance(raw, str):  # --set periodic_tasks='{a: 60}' arrives as text
            try:
                raw = yaml.safe_load(raw)
            except yaml.YAMLError:
                raise SettingsError(f"{key}: {raw!r} is not valid YAML") from None
        if type_name.startswith("tuple["):
            if not isinstance(raw, list | tuple) or not raw:
                raise SettingsError(f"{key}: expected a list of numbers, got {raw!r}")
            return tuple(_number(key, float, item) for item in raw)
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            raise SettingsError(f"{key}: expected a mapping, got {raw!r}")
        if type_name == "dict[str, QueueSLO]":
            return {str(queue): _queue_slo(key, queue, spec) for queue, spec in raw.items()}
        return {str(name): _number(f"{key}: {name}", float, value) for name, value in raw.items()}
    kind = {"str": str, "int": int, "float": float}[type_name]
    if kind is str:
        if isinstance(raw, bool | dict | list) or raw is None:
            raise SettingsError(f"{key}: expected a string, got {raw!r}")
        return str(raw)
    return _number(key, kind, raw)


def _number(key: str, kind: type, raw: Any) -> Any:
    if isinstance(raw, bool):
        raise SettingsError(f"{key}: expected a number, got {raw!r}")
    try:
        number = kind(raw)
    except (TypeError, ValueError):
        raise SettingsError(f"{key}: expected {kind.__name__}, got {raw!r}") from None
    if number < 0:
        raise SettingsError(f"{key}: must not be negative, got {raw!r}")
    return number


def _queue_slo(key: str, queue: Any, spec: Any) -> QueueSLO:
    if isinstance(spec, QueueSLO):
        return spec
    if not isinstance(spec, dict):
        raise SettingsError(f"{key}: {queue}: expected a mapping of objectives, got {spec!r}")
    known = {field.name for field in dataclasses.fields(QueueSLO)}
    unknown = set(spec) - known
    if unknown:
        raise SettingsError(
            f"{key}: {queue}: unknown {', '.join(sorted(map(str, unknown)))}; "
            f"known: {', '.join(sorted(known))}"
        )
    values = {name: _number(f"{key}: {queue}: {name}", float, v) for name, v in spec.items()}
    return QueueSLO(**values)


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

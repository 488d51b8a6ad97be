"""Recording and alerting rules, built from :class:`~alerts.settings.AlertSettings`.

Recording rules use a fixed 5m window: their names carry the window (``...:rate5m``) and the
dashboards query them by name, so the window is part of the contract, not a setting.
Aggregations use ``without (instance, pod, hostname, ...)`` so that target labels such as
``job`` or ``namespace`` survive and two Celery clusters in one Prometheus stay apart.
"""

from __future__ import annotations

import dataclasses
import textwrap
from typing import Any

from alerts.settings import AlertSettings

RECORDING_GROUP = "celery-observatory.recording"
ALERTING_GROUP = "celery-observatory.alerts"

RATE_WINDOW = "5m"
RATE_WINDOW_SECONDS = 300
DROP = "instance, pod, hostname"  # labels summed away in per-task recording rules

SUCCEEDED_RATE = "name_queue_name:celery_task_succeeded:rate5m"
FAILED_RATE = "name_queue_name:celery_task_failed:rate5m"
FAILURE_RATIO = "name_queue_name:celery_task_failure:ratio_rate5m"
SENT_RATE_BY_QUEUE = "queue_name:celery_task_sent:rate5m"
STARTED_RATE_BY_QUEUE = "queue_name:celery_task_started:rate5m"
RUNTIME_BUCKET_RATE = "name_queue_name_le:celery_task_runtime_bucket:rate5m"
QUEUE_WAIT_BUCKET_RATE = "name_queue_name_le:celery_task_queue_wait_time_bucket:rate5m"
RUNTIME_QUANTILE = "name_queue_name:celery_task_runtime:quantile_rate5m"
QUEUE_WAIT_QUANTILE = "name_queue_name:celery_task_queue_wait_time:quantile_rate5m"
QUANTILES = ("0.5", "0.95", "0.99")


def _expr(text: str) -> str:
    return textwrap.dedent(text).strip()


def recording_rules() -> list[dict[str, Any]]:
    """Rates, ratios and latency quantiles the dashboards and alerts read by name."""
    rules: list[dict[str, Any]] = [
        {
            "record": SUCCEEDED_RATE,
            "expr": f"sum without ({DROP}) (rate(celery_task_succeeded_total[{RATE_WINDOW}]))",
        },
        {
            "record": FAILED_RATE,
            "expr": (
                f"sum without ({DROP}, exception) (rate(celery_task_failed_total[{RATE_WINDOW}]))"
            ),
        },
        {
            # A ratio, not the article's rate: 0/0 (no traffic) is NaN and never alerts.
            "record": FAILURE_RATIO,
            "expr": f"{FAILED_RATE}\n/\n({SUCCEEDED_RATE} + {FAILED_RATE})",
        },
        {
            "record": SENT_RATE_BY_QUEUE,
            "expr": f"sum without ({DROP}, name) (rate(celery_task_sent_total[{RATE_WINDOW}]))",
        },
        {
            "record": STARTED_RATE_BY_QUEUE,
            "expr": (
                f"sum without ({DROP}, name) (rate(celery_task_started_total[{RATE_WINDOW}]))"
            ),
        },
        {
            "record": RUNTIME_BUCKET_RATE,
            "expr": f"sum without ({DROP}) (rate(celery_task_runtime_bucket[{RATE_WINDOW}]))",
        },
        {
            "record": QUEUE_WAIT_BUCKET_RATE,
            "expr": (
                f"sum without ({DROP}) (rate(celery_task_queue_wait_time_bucket[{RATE_WINDOW}]))"
            ),
        },
    ]
    for record, source in (
        (RUNTIME_QUANTILE, RUNTIME_BUCKET_RATE),
        (QUEUE_WAIT_QUANTILE, QUEUE_WAIT_BUCKET_RATE),
    ):
        for quantile in QUANTILES:
            rules.append(
                {
                    "record": record,
                    "expr": f"histogram_quantile({quantile}, {source})",
                    "labels": {"quantile": quantile},
                }
            )
    return rules


@dataclasses.dataclass(frozen=True)
class Alert:
    """One alerting rule; ``summary`` and ``description`` are Go templates."""

    name: str
    expr: str
    for_: str
    severity: str
    summary: str
    description: str

    def to_rule(self, runbook_base_url: str) -> dict[str, Any]:
        return {
            "alert": self.name,
            "expr": self.expr,
            "for": self.for_,
            "labels": {"severity": self.severity},
            "annotations": {
                "summary": self.summary,
                "description": self.description,
                "runbook_url": f"{runbook_base_url.rstrip('/')}/{self.name}.md",
            },
        }


def _pct(ratio: float) -> str:
    return f"{ratio * 100:g}%"


def _event_loss_expr(s: AlertSettings) -> str:
    # A worker whose task events are all lost has no started series at all: `or ... * 0`
    # gives it an explicit zero, so the worst loss alerts too.
    accepted = f"increase(celery_worker_tasks_processed[{s.event_loss_window}])"
    started = f"increase(celery_task_started_total[{s.event_loss_window}])"
    return _expr(
        f"""
        (
          sum without (name, queue_name) ({started})
          or
          {accepted} * 0
        )
        < {s.event_loss_ratio:g} * {accepted}
        and
        {accepted} >= {s.event_loss_min_tasks}
        """
    )


def _task_alerts(s: AlertSettings) -> list[Alert]:
    return [
        Alert(
            name="CeleryTaskFailureRatioHigh",
            expr=(
                f"{FAILURE_RATIO} > {s.failure_ratio:g}\nand\n"
                f"({SUCCEEDED_RATE} + {FAILED_RATE}) * {RATE_WINDOW_SECONDS} "
                f">= {s.failure_min_tasks}"
            ),
            for_=s.failure_for,
            severity="warning",
            summary="Task {{ $labels.name }} fails too often.",
            description=(
                "{{ $value | humanizePercentage }} of the runs of {{ $labels.name }} on queue "
                "{{ $labels.queue_name }} failed over the last 5m (threshold "
                f"{_pct(s.failure_ratio)}, counted only with at least {s.failure_min_tasks} "
                "finished runs in 5m)."
            ),
        ),
        Alert(
            name="CeleryEventLoss",
            expr=_event_loss_expr(s),
            for_=s.event_loss_for,
            severity="warning",
            summary="Task events from {{ $labels.hostname }} are being lost.",
            description=(
                "The exporter counted only {{ $value | humanize }} task-started events from "
                f"{{{{ $labels.hostname }}}} over the last {s.event_loss_window}, less than "
                f"{_pct(s.event_loss_ratio)} of the tasks the worker itself reports having "
                "accepted (heartbeat 'processed'). Task counters and latencies undercount."
            ),
        ),
    ]


def _queue_alerts(s: AlertSettings) -> list[Alert]:
    return [
        Alert(
            name="CeleryQueueBacklogGrowing",
            expr=_expr(
                f"""
                celery_queue_length > {s.backlog_min_length}
                and
                deriv(celery_queue_length[{s.backlog_window}]) > 0
                """
            ),
            for_=s.backlog_for,
            severity="warning",
            summary="Queue {{ $labels.queue_name }} backlog keeps growing.",
            description=(
                "Queue {{ $labels.queue_name }} holds {{ $value | humanize }} messages and "
                f"grew over the last {s.backlog_window} (alerting above "
                f"{s.backlog_min_length}): producers outpace its workers."
            ),
        ),
        Alert(
            name="CeleryQueueOldestMessageTooOld",
            expr=f"celery_queue_oldest_message_age_seconds > {s.oldest_message_age_seconds:g}",
            for_=s.oldest_message_for,
            severity="critical",
            summary="Messages in queue {{ $labels.queue_name }} wait longer than the SLO.",
            description=(
                "The oldest message in queue {{ $labels.queue_name }} has waited "
                "{{ $value | humanizeDuration }}; the SLO is "
                f"{s.oldest_message_age_seconds:g}s."
            ),
        ),
        Alert(
            name="CeleryQueueNoConsumers",
            expr=_expr(
                """
                celery_queue_length > 0
                and
                celery_active_consumer_count == 0
                """
            ),
            for_=s.no_consumers_for,
            severity="critical",
            summary="Queue {{ $labels.queue_name }} has messages but no consumer.",
            description=(
                "Queue {{ $labels.queue_name }} holds {{ $value | humanize }} messages and no "
                "worker consumes it: nothing will drain it until a worker for this queue runs."
            ),
        ),
        Alert(
            name="CeleryUnackedDeliveryStale",
            expr=_expr(
                f"""
                celery_broker_unacked_oldest_age_seconds
                > {s.unacked_visibility_fraction:g} * celery_broker_visibility_timeout_seconds
                """
            ),
            for_=s.unacked_for,
            severity="warning",
            summary="An unacknowledged delivery is close to the visibility timeout.",
            description=(
                "The oldest unacknowledged delivery on {{ $labels.instance }} is "
                "{{ $value | humanizeDuration }} old, over "
                f"{_pct(s.unacked_visibility_fraction)} of visibility_timeout"
                "{{ with printf `celery_broker_visibility_timeout_seconds{instance='%s'}` "
                "$labels.instance | query }} ({{ . | first | value | humanizeDuration }})"
                "{{ end }}. At the timeout Redis redelivers it and the task runs twice."
            ),
        ),
    ]


def _worker_alerts(s: AlertSettings) -> list[Alert]:
    return [
        Alert(
            name="CeleryWorkerDown",
            expr="celery_worker_up == 0",
            for_=s.worker_down_for,
            severity="warning",
            summary="Celery worker {{ $labels.hostname }} is down.",
            description=(
                "Worker {{ $labels.hostname }} sent no heartbeat within the exporter's worker "
                "timeout (or went offline)"
                "{{ with printf `time() - celery_worker_last_heartbeat_timestamp_seconds"
                "{hostname='%s'}` $labels.hostname | query }}; last heard "
                "{{ . | first | value | humanizeDuration }} ago{{ end }}."
            ),
        ),
        Alert(
            name="CeleryWorkerTaskEventsMissing",
            expr=_expr(
                """
                celery_worker_sends_task_events == 0
                and
                celery_worker_up == 1
                """
            ),
            for_=s.task_events_missing_for,
            severity="warning",
            summary="Worker {{ $labels.hostname }} sends no task events.",
            description=(
                "Worker {{ $labels.hostname }} heartbeats and processes tasks but no task "
                "events arrive from it (started without -E?): its tasks are invisible to "
                "every task metric."
            ),
        ),
    ]


def _exporter_alerts(s: AlertSettings) -> list[Alert]:
    job = s.exporter_job
    return [
        Alert(
            name="CeleryExporterDown",
            expr=f'up{{job="{job}"}} == 0 or absent(up{{job="{job}"}})',
            for_=s.exporter_down_for,
            severity="critical",
            summary="The Celery exporter is down: every Celery alert is blind.",
            description=(
                "{{ if $labels.instance }}Prometheus cannot scrape the Celery exporter "
                f'{{{{ $labels.instance }}}} (job="{job}").{{{{ else }}}}Prometheus has no '
                f'target of job="{job}" at all.{{{{ end }}}}'
            ),
        ),
        Alert(
            name="CeleryBrokerUnreachable",
            expr="celery_exporter_broker_up == 0",
            for_=s.broker_down_for,
            severity="critical",
            summary="The Celery exporter cannot reach the broker.",
            description=(
                "Exporter {{ $labels.instance }} cannot reach the broker or lost its event "
                "subscription; workers likely cannot either."
            ),
        ),
        Alert(
            name="CeleryEventsNotArriving",
            expr=_expr(
                f"""
                (
                  sum by (job, instance) (rate(celery_exporter_events_total[{s.events_window}]))
                  or
                  sum by (job, instance) (celery_active_consumer_count) * 0
                ) == 0
                and on (job, instance)
                sum by (job, instance) (celery_active_consumer_count) > 0
                """
            ),
            for_=s.events_for,
            severity="warning",
            summary="No Celery events arrive although workers consume the queues.",
            description=(
                "Exporter {{ $labels.instance }} received no event at all in the last "
                f"{s.events_window} while inspect sees consumers on its queues: the event "
                "subscription is broken or points at the wrong database or key prefix."
            ),
        ),
        Alert(
            name="CeleryExporterDroppingEvents",
            expr=f"increase(celery_exporter_events_dropped_total[{s.events_dropped_window}]) > 0",
            for_=s.events_dropped_for,
            severity="warning",
            summary="The Celery exporter drops events: it cannot keep up.",
            description=(
                "Exporter {{ $labels.instance }} dropped {{ $value | humanize }} event messages "
                f"in the last {s.events_dropped_window} because its in-memory backlog was full."
            ),
        ),
        Alert(
            name="CeleryBrokerPollStale",
            expr=f"celery_exporter_broker_poll_age_seconds > {s.broker_poll_stale_seconds:g}",
            for_=s.broker_poll_stale_for,
            severity="warning",
            summary="Queue figures from the Celery exporter are stale.",
            description=(
                "Exporter {{ $labels.instance }} last polled the broker "
                "{{ $value | humanizeDuration }} ago (threshold "
                f"{s.broker_poll_stale_seconds:g}s): queue length, age and unacked figures "
                "are out of date."
            ),
        ),
    ]


def alerts(settings: AlertSettings) -> list[Alert]:
    """Every alert, in the order of the generated file."""
    return [
        *_task_alerts(settings),
        *_queue_alerts(settings),
        *_worker_alerts(settings),
        *_exporter_alerts(settings),
    ]


def rule_groups(settings: AlertSettings) -> dict[str, Any]:
    """The whole rules file as a dict (``groups:`` with a recording and an alerting group)."""
    interval = {"interval": settings.evaluation_interval} if settings.evaluation_interval else {}
    return {
        "groups": [
            {"name": RECORDING_GROUP, **interval, "rules": recording_rules()},
            {
                "name": ALERTING_GROUP,
                **interval,
                "rules": [alert.to_rule(settings.runbook_base_url) for alert in alerts(settings)],
            },
        ]
    }

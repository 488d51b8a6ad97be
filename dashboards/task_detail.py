"""The *Celery task detail* dashboard: one task (or a few) on one queue, in depth."""

from __future__ import annotations

from grafanalib.core import Dashboard

from alerts import recording as rules
from alerts.settings import DEFAULTS
from dashboards.panels import (
    dashboard,
    heatmap,
    query_variable,
    rate,
    rec,
    sel,
    target,
    timeseries,
)

UID = "celery-task-detail"
QUEUE, TASK = 'queue_name=~"$queue"', 'name=~"$task"'
SEL = (QUEUE, TASK)
FAILURES = rate("celery_task_failed_total", *SEL, 'exception!=""')
STATES = ("received", "started", "succeeded", "failed", "retried", "rejected", "revoked")


def _rates() -> list:
    return [
        timeseries(
            "Task rates by state",
            "Events per second for the selected tasks. Bad: failed or retried rising, "
            "started below received (waiting for a free pool slot), rejected/revoked "
            "above 0.",
            [
                target(
                    f"sum by (name) ({rate(f'celery_task_{state}_total', *SEL)})",
                    legend=f"{{{{name}}}} {state}",
                )
                for state in STATES
            ],
            unit="ops",
            axis_label="tasks/s",
        ),
        timeseries(
            "Failure ratio",
            "failed / (succeeded + failed) over 5m (recording rule). Bad: above the red "
            f"line ({DEFAULTS.failure_ratio:.0%}, the alert threshold).",
            [target(rec(rules.FAILURE_RATIO, *SEL), legend="{{name}} ({{queue_name}})")],
            unit="percentunit",
            axis_label="failed / finished",
            red_above=DEFAULTS.failure_ratio,
        ),
        timeseries(
            "Exceptions",
            "Failures per second by exception class. Bad: a new class appearing, or one "
            "class growing; `workload-dlq list` shows the tracebacks of final failures.",
            [
                target(
                    f"sum by (name, exception) ({FAILURES})",
                    legend="{{name}}: {{exception}}",
                )
            ],
            unit="ops",
            axis_label="failures/s",
        ),
        timeseries(
            "Retries",
            "Retries per second. Bad: retries rising ahead of failures, the early sign of a "
            "failing dependency.",
            [
                target(
                    f"sum by (name) ({rate('celery_task_retried_total', *SEL)})",
                    legend="{{name}}",
                )
            ],
            unit="ops",
            axis_label="retries/s",
        ),
        timeseries(
            "Started per worker",
            "Which workers run the selected tasks, per second. Bad: one worker taking all "
            "(others idle or down), or a worker disappearing.",
            [
                target(
                    f"sum by (hostname) ({rate('celery_task_started_total', *SEL)})",
                    legend="{{hostname}}",
                )
            ],
            unit="ops",
            axis_label="tasks/s",
        ),
    ]


def _latency() -> list:
    return [
        heatmap(
            "Runtime heatmap",
            "Distribution of run times (histogram buckets) over time. Bad: mass moving up, "
            "or a second band appearing (a slow path, e.g. timeouts of a dependency).",
            [
                target(
                    f"sum by (le) ({rate('celery_task_runtime_bucket', *SEL, fn='increase')})",
                    legend="{{le}}",
                )
            ],
            y_unit="s",
        ),
        heatmap(
            "Queue wait heatmap",
            "Distribution of time spent waiting in the queue. Bad: mass moving up: tasks "
            "wait for workers.",
            [
                target(
                    "sum by (le) "
                    f"({rate('celery_task_queue_wait_time_bucket', *SEL, fn='increase')})",
                    legend="{{le}}",
                )
            ],
            y_unit="s",
        ),
        timeseries(
            "Runtime p50 / p95 / p99",
            "Run time quantiles over 5m (recording rule). Bad: p99 growing toward the task's "
            "time limit or visibility_timeout.",
            [target(rec(rules.RUNTIME_QUANTILE, *SEL), legend="{{name}} p{{quantile}}")],
            unit="s",
            axis_label="runtime",
        ),
        timeseries(
            "Queue wait p50 / p95 / p99",
            "Queue wait quantiles over 5m (recording rule). Bad: above the oldest-message "
            f"SLO ({DEFAULTS.oldest_message_age_seconds:g}s, red line).",
            [target(rec(rules.QUEUE_WAIT_QUANTILE, *SEL), legend="{{name}} p{{quantile}}")],
            unit="s",
            axis_label="wait",
            red_above=DEFAULTS.oldest_message_age_seconds,
        ),
    ]


def build() -> Dashboard:
    return dashboard(
        uid=UID,
        title="Celery task detail",
        description="Rates, failures, retries and latency of selected Celery tasks "
        "(celery-observatory exporter; needs alerts/celery-observatory.rules.yml loaded).",
        sections=[("Rates and failures", _rates()), ("Latency", _latency())],
        variables=[
            query_variable(
                "queue", "Queue", f"label_values({sel('celery_task_received_total')}, queue_name)"
            ),
            query_variable(
                "task", "Task", f"label_values({sel('celery_task_received_total', QUEUE)}, name)"
            ),
        ],
    )

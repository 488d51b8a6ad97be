"""The *Celery overview* dashboard: is the task system healthy, and if not, where."""

from __future__ import annotations

from grafanalib.core import Dashboard

from alerts import rules
from alerts.settings import DEFAULTS
from dashboards.panels import dashboard, stat, state_timeline, table, target, timeseries

UID = "celery-overview"
RI = "$__rate_interval"
STATES = ("sent", "received", "started", "succeeded", "failed", "retried", "rejected", "revoked")


def _tasks() -> list:
    return [
        timeseries(
            "Task throughput by state",
            "Task events per second, all tasks together. Healthy: started follows received, "
            "succeeded follows started. Bad: sent or received far above started (a backlog "
            "building), failed or retried climbing, rejected/revoked above zero.",
            [
                target(f"sum(rate(celery_task_{state}_total[{RI}]))", legend=state)
                for state in STATES
            ],
            unit="ops",
            axis_label="tasks/s",
        ),
        timeseries(
            "Failure ratio per task",
            "failed / (succeeded + failed) per task and queue over 5m (recording rule). Bad: "
            "a line above the red alert threshold "
            f"({DEFAULTS.failure_ratio:.0%}); the alert also needs "
            f"{DEFAULTS.failure_min_tasks} runs in 5m. Gaps mean no runs finished.",
            [target(rules.FAILURE_RATIO, legend="{{name}} ({{queue_name}})")],
            unit="percentunit",
            axis_label="failed / finished",
            red_above=DEFAULTS.failure_ratio,
        ),
        table(
            "Top failing tasks and exceptions (time range)",
            "Failures in the selected time range by task and exception class, most first. "
            "Bad: any new exception class, or one task dominating; open the task detail "
            "dashboard and `workload-dlq list` to see the failures.",
            [
                target(
                    "topk(10, sum by (name, exception) "
                    '(increase(celery_task_failed_total{exception!=""}[$__range])))',
                    instant=True,
                    table=True,
                )
            ],
            unit="short",
        ),
        timeseries(
            "Retries per task",
            "Tasks that raised Retry, per second. Bad: a sustained rise, which usually means a "
            "dependency is failing and the failures are still hidden behind retries.",
            [
                target(
                    f"sum by (name) (rate(celery_task_retried_total[{RI}]))",
                    legend="{{name}}",
                )
            ],
            unit="ops",
            axis_label="retries/s",
        ),
    ]


def _queues() -> list:
    return [
        timeseries(
            "Queue length",
            "Messages waiting per queue (all priorities). Bad: a line that keeps rising (the "
            f"backlog alert fires above {DEFAULTS.backlog_min_length} while growing), or a "
            "non-zero dead_letter queue.",
            [target("max by (queue_name) (celery_queue_length)", legend="{{queue_name}}")],
            unit="short",
            axis_label="messages",
            red_above=DEFAULTS.backlog_min_length,
        ),
        timeseries(
            "Oldest message age",
            "How long the oldest waiting message of each queue has waited: the latency users "
            "feel. Bad: above the red SLO line "
            f"({DEFAULTS.oldest_message_age_seconds:g}s), or a sawtooth that never returns "
            "to 0.",
            [
                target(
                    "max by (queue_name) (celery_queue_oldest_message_age_seconds)",
                    legend="{{queue_name}}",
                )
            ],
            unit="s",
            axis_label="age",
            red_above=DEFAULTS.oldest_message_age_seconds,
        ),
        timeseries(
            "Queue inflow vs outflow",
            "Tasks sent to (in) and started from (out) each queue per second, over 5m. Bad: "
            "in above out for long; the difference is how fast the backlog grows.",
            [
                target(rules.SENT_RATE_BY_QUEUE, legend="in: {{queue_name}}"),
                target(rules.STARTED_RATE_BY_QUEUE, legend="out: {{queue_name}}"),
            ],
            unit="ops",
            axis_label="tasks/s",
        ),
        timeseries(
            "Consumers per queue",
            "Workers consuming each queue (background inspect). Bad: 0 for a queue that has "
            "messages — nothing will drain it (CeleryQueueNoConsumers).",
            [
                target(
                    "max by (queue_name) (celery_active_consumer_count)",
                    legend="{{queue_name}}",
                )
            ],
            unit="short",
            axis_label="consumers",
        ),
        timeseries(
            "Unacked deliveries",
            "Messages delivered to workers and not yet acknowledged (acks_late). Normal: up "
            "to the number of busy pool slots. Bad: growing while workers are idle or down — "
            "they wait for visibility_timeout to be redelivered.",
            [target("max(celery_broker_unacked_messages)", legend="unacked")],
            unit="short",
            axis_label="messages",
        ),
        timeseries(
            "Oldest unacked delivery vs visibility timeout",
            "Age of the oldest unacknowledged delivery, against visibility_timeout. Bad: "
            "the age approaching the timeout line; at the timeout Redis redelivers the "
            "message and the task runs twice.",
            [
                target("max(celery_broker_unacked_oldest_age_seconds)", legend="oldest unacked"),
                target(
                    "max(celery_broker_visibility_timeout_seconds)", legend="visibility_timeout"
                ),
            ],
            unit="s",
            axis_label="age",
        ),
    ]


def _workers() -> list:
    return [
        stat(
            "Workers up",
            "Workers heartbeating now. Bad: fewer than you run.",
            [target("sum(celery_worker_up)")],
            unit="short",
        ),
        stat(
            "Workers down",
            "Workers the exporter knows that stopped heartbeating (kept for "
            "--worker-forget-after). Bad: anything above 0.",
            [target("sum(1 - celery_worker_up)")],
            unit="short",
            red_above=1,
        ),
        stat(
            "Tasks running",
            "Tasks executing on all workers now. Bad: pinned at the total pool size while "
            "queues grow (saturated), or 0 while queues have messages.",
            [target("sum(celery_worker_tasks_active)")],
            unit="short",
        ),
        stat(
            "Tasks/s finished",
            "Succeeded + failed per second over 5m. Bad: a sudden drop with queues growing.",
            [target(f"sum({rules.SUCCEEDED_RATE}) + sum({rules.FAILED_RATE})")],
            unit="ops",
        ),
        state_timeline(
            "Worker up/down",
            "One band per worker: green while it heartbeats, red when it stopped. Bad: red "
            "bands (CeleryWorkerDown), or flapping.",
            [target("max by (hostname) (celery_worker_up)", legend="{{hostname}}")],
        ),
        timeseries(
            "Active tasks per worker",
            "Tasks each worker executes, from its heartbeats. Bad: one worker at its pool "
            "size while others idle (routing or prefetch imbalance), or a worker stuck at the "
            "same non-zero value (hung tasks).",
            [
                target(
                    "max by (hostname) (celery_worker_tasks_active)",
                    legend="{{hostname}}",
                )
            ],
            unit="short",
            axis_label="tasks",
        ),
    ]


def _latency() -> list:
    return [
        timeseries(
            "Task runtime p50 / p95 / p99",
            "Run time per task from the runtime histogram over 5m. Bad: p99 growing (a slow "
            "dependency), or p99 near the task's time limit or visibility_timeout.",
            [target(rules.RUNTIME_QUANTILE, legend="{{name}} p{{quantile}}")],
            unit="s",
            axis_label="runtime",
        ),
        timeseries(
            "Queue wait p50 / p95 / p99",
            "Time from sent (or ETA) to started, per task, over 5m. Bad: growing wait with "
            "flat runtime means too few workers, not slow tasks.",
            [target(rules.QUEUE_WAIT_QUANTILE, legend="{{name}} p{{quantile}}")],
            unit="s",
            axis_label="wait",
        ),
    ]


def build() -> Dashboard:
    return dashboard(
        uid=UID,
        title="Celery overview",
        description="Throughput, failures, queues, workers and latency of a Celery fleet "
        "(celery-observatory exporter; needs alerts/celery-observatory.rules.yml loaded).",
        sections=[
            ("Tasks", _tasks()),
            ("Queues and broker", _queues()),
            ("Workers", _workers()),
            ("Latency", _latency()),
        ],
    )

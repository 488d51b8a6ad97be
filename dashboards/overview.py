"""The *Celery overview* dashboard: is the task system healthy, and if not, where."""

from __future__ import annotations

from grafanalib.core import Dashboard

from alerts import recording as rules
from alerts import slo
from alerts.settings import DEFAULTS
from dashboards.panels import (
    dashboard,
    one,
    rate,
    rec,
    sel,
    stat,
    state_map_timeline,
    table,
    target,
    timeseries,
)

UID = "celery-overview"
STATES = ("sent", "received", "started", "succeeded", "failed", "retried", "rejected", "revoked")
# Worker states as numbers, for the state timeline: (value, text, colour).
WORKER_STATES = (
    (1, "online", "green"),
    (2, "busy", "blue"),
    (3, "offline", "#8e8e8e"),
    (4, "lost", "red"),
)
# Drain time is +Inf for a backlog nothing consumes; the chart draws it at this ceiling.
DRAIN_CHART_CEILING = 86400


FAILURES_IN_RANGE = rate(
    "celery_task_failed_total", 'exception!=""', fn="increase", window="$__range"
)


def _state(name: str) -> str:
    """Workers in state ``name``, one series per worker (value 1), replicas deduplicated."""
    workers = one(sel("celery_worker_state", f'state="{name}"'))
    return f"{workers} == 1"


def _in_state(name: str) -> str:
    """1 per worker in state ``name``, 0 per other worker: its sum counts them, 0 included."""
    return one(sel("celery_worker_state", f'state="{name}"'))


def _tasks() -> list:
    return [
        timeseries(
            "Task throughput by state",
            "Task events per second, all tasks together. Healthy: started follows received, "
            "succeeded follows started. Bad: sent or received far above started (a backlog "
            "building), failed or retried climbing, rejected/revoked above zero.",
            [
                target(f"sum({rate(f'celery_task_{state}_total')})", legend=state)
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
            [target(rec(rules.FAILURE_RATIO), legend="{{name}} ({{queue_name}})")],
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
                    f"topk(10, sum by (name, exception) ({FAILURES_IN_RANGE}))",
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
            [target(f"sum by (name) ({rate('celery_task_retried_total')})", legend="{{name}}")],
            unit="ops",
            axis_label="retries/s",
        ),
    ]


def _task_faults() -> list:
    return [
        timeseries(
            "Lost tasks",
            "Tasks received or started on a worker that then was lost (killed, OOM) or went "
            "offline with them unfinished, per interval, by task. Bad: anything above 0 "
            "(CeleryTaskLost). A worker's very first loss creates its series; the table "
            "beside counts it.",
            [
                target(
                    f"sum by (name, queue_name) ({rate('celery_task_lost_total', fn='increase')})",
                    legend="{{name}} ({{queue_name}})",
                )
            ],
            unit="short",
            axis_label="tasks",
            width=8,
        ),
        table(
            "Lost tasks by worker (since the exporter started)",
            "Which worker took which tasks down with it. Bad: any row above 0; the hostname "
            "says which pod or host died.",
            [
                target(
                    f"sum by (hostname, name, queue_name) ({one(sel('celery_task_lost_total'))})",
                    instant=True,
                    table=True,
                )
            ],
            unit="short",
            width=8,
            columns=("lost",),
        ),
        timeseries(
            "Redelivered tasks",
            "Tasks a worker received a second time (visibility_timeout or crash redelivery): "
            "they run twice. Bad: anything above 0 (CeleryTaskRedelivered).",
            [
                target(
                    "sum by (name, queue_name) "
                    f"({rate('celery_task_redelivered_total', fn='increase')})",
                    legend="{{name}} ({{queue_name}})",
                )
            ],
            unit="short",
            axis_label="tasks",
            width=8,
        ),
        timeseries(
            "Stuck tasks: oldest running task age",
            "How long the oldest running task of each name has been running. Bad: above the "
            f"red line ({DEFAULTS.running_too_long_seconds:g}s, the default limit; some tasks "
            "have their own) or growing steadily: a stuck task holds a pool slot "
            "(CeleryTaskRunningTooLong).",
            [
                target(
                    f"max by (name, queue_name) ({sel('celery_task_oldest_running_age_seconds')})",
                    legend="{{name}} ({{queue_name}})",
                )
            ],
            unit="s",
            axis_label="age",
            red_above=DEFAULTS.running_too_long_seconds,
        ),
        timeseries(
            "Scheduled tasks held by workers (ETA / countdown)",
            "Tasks with a future ETA or countdown that a worker has received and not started: "
            "they sit in worker memory, invisible to the queue length, and are lost if the "
            "worker dies without acks_late. Bad: a steady rise (countdowns piling up), or a "
            "drop to 0 together with a lost worker.",
            [
                target(
                    f"max by (queue_name) ({sel('celery_queue_scheduled_messages')})",
                    legend="{{queue_name}}",
                )
            ],
            unit="short",
            axis_label="tasks",
        ),
        table(
            "Periodic tasks: last sent",
            "Seconds since each task name was last sent, longest first, and the maximum "
            "interval alerts/settings.py expects for periodic tasks (CeleryPeriodicTaskMissed). "
            "Bad: 'since last sent' above 'max interval'. Every task name is listed; only "
            "those with a max interval are watched.",
            [
                target(
                    f"time() - max by (name) ({sel('celery_task_last_sent_timestamp_seconds')})",
                    instant=True,
                    table=True,
                ),
                target(_expected_intervals(), instant=True, table=True),
            ],
            unit="s",
            width=24,
            columns=("since last sent", "max interval"),
        ),
    ]


def _expected_intervals() -> str:
    """The periodic-task spec of alerts/settings.py as constant series (name -> seconds)."""
    return " or ".join(
        f'label_replace(vector({seconds:g}), "name", "{task}", "", "")'
        for task, seconds in DEFAULTS.periodic_tasks.items()
    )


def _queues() -> list:
    return [
        timeseries(
            "Queue length",
            "Messages waiting per queue (all priorities). Bad: a line that keeps rising (the "
            f"backlog alert fires above {DEFAULTS.backlog_min_length} while growing), or a "
            "non-zero dead_letter queue.",
            [target(f"max by (queue_name) ({sel('celery_queue_length')})", "{{queue_name}}")],
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
                    f"max by (queue_name) ({sel('celery_queue_oldest_message_age_seconds')})",
                    legend="{{queue_name}}",
                )
            ],
            unit="s",
            axis_label="age",
            red_above=DEFAULTS.oldest_message_age_seconds,
        ),
        timeseries(
            "Drain time per queue",
            "Waiting messages / tasks started per second over 5m (recording rule): how long a "
            "task sent now waits. Unlike the length, this says whether the backlog matters. "
            f"A backlog nothing consumes never drains: drawn at the ceiling "
            f"({DRAIN_CHART_CEILING}s). Bad: above the red line "
            f"({DEFAULTS.drain_time_seconds:g}s, CeleryQueueDrainTimeTooLong).",
            [
                target(
                    f"clamp_max({rec(rules.DRAIN_TIME)}, {DRAIN_CHART_CEILING})",
                    legend="{{queue_name}}",
                )
            ],
            unit="s",
            axis_label="drain time",
            red_above=DEFAULTS.drain_time_seconds,
        ),
        timeseries(
            "Consumer utilisation per queue",
            "Active tasks / pool slots of the live workers consuming each queue (recording "
            "rule; pool sizes come from inspect). Bad: at the red line "
            f"({DEFAULTS.saturation_ratio:.0%}) while the backlog grows "
            "(CeleryQueueConsumersSaturated): only more workers drain it. Empty: inspect is "
            "off, so pool sizes are unknown.",
            [target(rec(rules.UTILISATION), legend="{{queue_name}}")],
            unit="percentunit",
            axis_label="busy slots",
            red_above=DEFAULTS.saturation_ratio,
        ),
        timeseries(
            "Queue inflow vs outflow",
            "Tasks sent to (in) and started from (out) each queue per second, over 5m. Bad: "
            "in above out for long; the difference is how fast the backlog grows.",
            [
                target(rec(rules.SENT_RATE_BY_QUEUE), legend="in: {{queue_name}}"),
                target(rec(rules.STARTED_RATE_BY_QUEUE), legend="out: {{queue_name}}"),
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
                    f"max by (queue_name) ({sel('celery_active_consumer_count')})",
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
            [target(f"max({sel('celery_broker_unacked_messages')})", legend="unacked")],
            unit="short",
            axis_label="messages",
        ),
        timeseries(
            "Oldest unacked delivery vs visibility timeout",
            "Age of the oldest unacknowledged delivery, against visibility_timeout. Bad: "
            "the age approaching the timeout line; at the timeout Redis redelivers the "
            "message and the task runs twice.",
            [
                target(
                    f"max({sel('celery_broker_unacked_oldest_age_seconds')})",
                    legend="oldest unacked",
                ),
                target(
                    f"max({sel('celery_broker_visibility_timeout_seconds')})",
                    legend="visibility_timeout",
                ),
            ],
            unit="s",
            axis_label="age",
        ),
    ]


def _worker_state_value() -> str:
    """One number per worker for its state (see WORKER_STATES), deduplicated."""
    branches = [f"({_state(name)}) * {value}" for value, name, _ in WORKER_STATES]
    return "max by (hostname) (\n  " + "\n  or ".join(branches) + "\n)"


def _workers() -> list:
    return [
        stat(
            "Workers online",
            "Workers heartbeating now. Bad: fewer than you run.",
            [target(f"sum({_in_state('online')})")],
            unit="short",
        ),
        stat(
            "Workers lost",
            "Workers whose heartbeats stopped without a goodbye (killed, OOM, node lost), "
            "kept for --worker-forget-after. Workers that left gracefully (offline) are not "
            "counted. Bad: anything above 0 (CeleryWorkerDown).",
            [target(f"sum({_in_state('lost')})")],
            unit="short",
            red_above=1,
        ),
        stat(
            "Tasks running",
            "Tasks executing on all workers now. Bad: pinned at the total pool size while "
            "queues grow (saturated), or 0 while queues have messages.",
            [target(f"sum({one(sel('celery_worker_tasks_active'))})")],
            unit="short",
        ),
        stat(
            "Tasks/s finished",
            "Succeeded + failed per second over 5m. Bad: a sudden drop with queues growing.",
            [target(f"sum({rec(rules.SUCCEEDED_RATE)}) + sum({rec(rules.FAILED_RATE)})")],
            unit="ops",
        ),
        state_map_timeline(
            "Worker states",
            "One band per worker: online (green), busy (blue: heartbeats blocked by a running "
            "task on a solo/threads pool, probably working), offline (grey: left gracefully, "
            "never alerts), lost (red: stopped without a goodbye). Bad: red bands "
            "(CeleryWorkerDown), or flapping.",
            [target(_worker_state_value(), legend="{{hostname}}")],
            WORKER_STATES,
        ),
        timeseries(
            "Active tasks per worker",
            "Tasks each worker executes, from its heartbeats. Bad: one worker at its pool "
            "size while others idle (routing or prefetch imbalance), or a worker stuck at the "
            "same non-zero value (hung tasks).",
            [
                target(
                    f"max by (hostname) ({sel('celery_worker_tasks_active')})",
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
            [target(rec(rules.RUNTIME_QUANTILE), legend="{{name}} p{{quantile}}")],
            unit="s",
            axis_label="runtime",
        ),
        timeseries(
            "Queue wait p50 / p95 / p99",
            "Time from sent (or ETA) to started, per task, over 5m. Bad: growing wait with "
            "flat runtime means too few workers, not slow tasks.",
            [target(rec(rules.QUEUE_WAIT_QUANTILE), legend="{{name}} p{{quantile}}")],
            unit="s",
            axis_label="wait",
        ),
    ]


BUDGET_STEPS = [
    {"color": "red", "value": None},
    {"color": "orange", "value": 0},
    {"color": "green", "value": 0.25},
]


def _slo() -> list:
    return [
        stat(
            f"Error budget left ({DEFAULTS.slo_period})",
            "Per queue and SLI (queue_wait: tasks start within the queue's wait objective; "
            "success: finished runs succeed), the share of the error budget not yet spent "
            f"over the last {DEFAULTS.slo_period}. 100%: untouched. Bad: orange near 0, red "
            "below 0 (overspent). Objectives: queue_slos in alerts/settings.py.",
            [target(rec(slo.BUDGET_LEFT), legend="{{queue_name}} {{slo}}")],
            unit="percentunit",
            width=12,
            height=8,
            steps=BUDGET_STEPS,
        ),
        timeseries(
            "SLO error ratio (5m, 1h, 6h)",
            "Bad events / all events per queue and SLI over three of the burn-rate windows. "
            "Bad: 1h and 5m both above 14.4 x the budget (1 - objective), or 6h and 30m above "
            "6 x (CeleryErrorBudgetBurnFast); lower but lasting burns open a ticket "
            "(CeleryErrorBudgetBurnSlow).",
            [
                target(
                    rec(slo.errors_record(window)),
                    legend=f"{{{{queue_name}}}} {{{{slo}}}} {window}",
                )
                for window in ("5m", "1h", "6h")
            ],
            unit="percentunit",
            axis_label="bad / all",
        ),
    ]


def build() -> Dashboard:
    return dashboard(
        uid=UID,
        title="Celery overview",
        description="Throughput, failures, queues, workers, lost and stuck tasks, capacity, "
        "latency and SLOs of a Celery fleet (celery-observatory exporter; needs "
        "alerts/celery-observatory.rules.yml loaded).",
        sections=[
            ("Tasks", _tasks()),
            ("Lost, redelivered, stuck, scheduled and periodic tasks", _task_faults()),
            ("Queues, capacity and broker", _queues()),
            ("Workers", _workers()),
            ("Latency", _latency()),
            ("SLOs", _slo()),
        ],
    )

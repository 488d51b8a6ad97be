"""The metric contract, defined once: name, type, help and labels of every metric we publish.

Both renderers (the fast text renderer and the prometheus_client collector used for
OpenMetrics) and the generated documentation read this table; nothing else names a metric.
Run ``python -m exporter.metrics`` to print the Markdown reference (docs/metrics.md).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Literal

Kind = Literal["counter", "gauge", "histogram"]

TASK_LABELS = ("name", "hostname", "queue_name")
FAILED_LABELS = ("name", "hostname", "queue_name", "exception")
UNITS = ("seconds", "bytes", "ratio")  # base units a family name may end with
DEFAULT_PREFIX = "celery_"  # every name below starts with it; --metric-prefix replaces it


def rename(name: str, prefix: str) -> str:
    """``name`` under ``--metric-prefix``: the prefix replaces ``celery_``."""
    return name if prefix == DEFAULT_PREFIX else prefix + name.removeprefix(DEFAULT_PREFIX)


@dataclass(frozen=True)
class Metric:
    """One metric family. For counters ``name`` is the sample name, ending in ``_total``."""

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()
    peer: bool = False  # same name and labels as danihodovic/celery-exporter

    @property
    def family(self) -> str:
        """The family name as prometheus_client and OpenMetrics spell it (no ``_total``)."""
        if self.kind == "counter":
            return self.name.removesuffix("_total")
        return self.name

    @property
    def unit(self) -> str:
        """The OpenMetrics unit the family name ends with (``# UNIT``), or ""."""
        for unit in UNITS:
            if self.family.endswith("_" + unit):
                return unit
        return ""


def _task_counter(event: str, help_text: str) -> Metric:
    return Metric(f"celery_task_{event}_total", "counter", help_text, TASK_LABELS, peer=True)


# Event type -> the counter it increments. Order is the exposition order.
TASK_EVENT_COUNTERS: dict[str, Metric] = {
    "task-sent": _task_counter("sent", "Task messages published (task-sent events)."),
    "task-received": _task_counter("received", "Tasks received by a worker (task-received)."),
    "task-started": _task_counter("started", "Tasks a worker started executing (task-started)."),
    "task-succeeded": _task_counter("succeeded", "Tasks that succeeded (task-succeeded)."),
    "task-failed": Metric(
        "celery_task_failed_total",
        "counter",
        "Tasks that failed, by exception class (task-failed).",
        FAILED_LABELS,
        peer=True,
    ),
    "task-rejected": _task_counter("rejected", "Task messages a worker rejected (task-rejected)."),
    "task-revoked": _task_counter("revoked", "Tasks revoked before or while running."),
    "task-retried": _task_counter("retried", "Tasks that failed and will be retried."),
}

TASK_LOST = Metric(
    "celery_task_lost_total",
    "counter",
    "Tasks received or started on a worker that was then lost (heartbeats stopped) or went "
    "offline with the task unfinished; counted once per task.",
    TASK_LABELS,
)
TASK_REDELIVERED = Metric(
    "celery_task_redelivered_total",
    "counter",
    "A second task-received for one task id and attempt: a visibility-timeout or crash "
    "redelivery, the cause of duplicate execution (a retry is a new attempt, not counted).",
    TASK_LABELS,
)
TASK_PROCESSED = Metric(
    "celery_task_processed_total",
    "counter",
    "Tasks that finished, succeeded or failed (the article's name).",
    TASK_LABELS,
)
TASK_RUNTIME = Metric(
    "celery_task_runtime",
    "histogram",
    "Task run time in seconds: the worker's runtime on success, started to failed on failure.",
    TASK_LABELS,
    peer=True,
)
TASK_QUEUE_WAIT = Metric(
    "celery_task_queue_wait_time",
    "histogram",
    "Seconds a task waited in the queue: started - max(sent, eta), never negative.",
    TASK_LABELS,
)

TASK_OLDEST_RUNNING_AGE = Metric(
    "celery_task_oldest_running_age_seconds",
    "gauge",
    "Age of the oldest task started and not finished, by task name and queue (absent when "
    "none runs).",
    ("name", "queue_name"),
)
TASK_LAST_SENT = Metric(
    "celery_task_last_sent_timestamp_seconds",
    "gauge",
    "Unix time a task of this name was last sent (task-sent): a periodic task's dead-man switch.",
    ("name",),
)

WORKER_UP = Metric(
    "celery_worker_up",
    "gauge",
    "1 if the worker sent a heartbeat within the worker timeout, else 0 (also 0 once it "
    "went offline; kept for --worker-forget-after). Alert on celery_worker_state instead.",
    ("hostname",),
    peer=True,
)
WORKER_STATE = Metric(
    "celery_worker_state",
    "gauge",
    "1 for the worker's current state: online; offline (said goodbye: autoscale-down, "
    "deploy; never alerts); lost (heartbeats stopped without a goodbye); busy (heartbeats "
    "stopped while it runs a task it was seen to start, on a threads/gevent/eventlet pool: "
    "working, or killed mid-task).",
    ("hostname", "state"),
)
WORKER_POOL_SIZE = Metric(
    "celery_worker_pool_size",
    "gauge",
    "The worker's pool concurrency, from the background inspect (utilisation = "
    "celery_worker_tasks_active / this).",
    ("hostname",),
)
WORKER_TASKS_ACTIVE = Metric(
    "celery_worker_tasks_active",
    "gauge",
    "Tasks the worker is executing, from its last heartbeat.",
    ("hostname",),
    peer=True,
)
WORKER_LAST_HEARTBEAT = Metric(
    "celery_worker_last_heartbeat_timestamp_seconds",
    "gauge",
    "Unix time the exporter last received a heartbeat from the worker.",
    ("hostname",),
)
WORKER_PROCESSED = Metric(
    "celery_worker_tasks_processed",
    "gauge",
    "Tasks the worker itself says it accepted since it started (heartbeat 'processed'); "
    "compare with celery_task_started_total to see event loss.",
    ("hostname",),
)
WORKER_TASK_EVENTS = Metric(
    "celery_worker_sends_task_events",
    "gauge",
    "0 if the worker processes tasks but no task events arrive from it (started without -E), "
    "else 1.",
    ("hostname",),
)

QUEUE_LENGTH = Metric(
    "celery_queue_length",
    "gauge",
    "Messages waiting in the broker queue, summed over all priority sub-queues.",
    ("queue_name",),
    peer=True,
)
QUEUE_OLDEST_AGE = Metric(
    "celery_queue_oldest_message_age_seconds",
    "gauge",
    "Age of the oldest waiting message (0 when the queue is empty).",
    ("queue_name",),
)
QUEUE_SCHEDULED = Metric(
    "celery_queue_scheduled_messages",
    "gauge",
    "Tasks with a future ETA or countdown that a worker received and has not started: held "
    "in worker memory, invisible to celery_queue_length.",
    ("queue_name",),
)
QUEUE_ADMISSION_LIMIT = Metric(
    "celery_queue_admission_limit",
    "gauge",
    "The backlog past which the application refuses new work on this queue (--admission-limit, "
    "e.g. the workload API's 429s): compare with celery_queue_length.",
    ("queue_name",),
)
QUEUE_CONSUMERS = Metric(
    "celery_active_consumer_count",
    "gauge",
    "Consumers of the queue (workers consuming it), from the background inspect.",
    ("queue_name",),
    peer=True,
)
QUEUE_WORKERS = Metric(
    "celery_active_worker_count",
    "gauge",
    "Workers consuming the queue, from the background inspect.",
    ("queue_name",),
    peer=True,
)
QUEUE_PROCESSES = Metric(
    "celery_active_process_count",
    "gauge",
    "Pool processes of the workers consuming the queue, from the background inspect.",
    ("queue_name",),
    peer=True,
)

BROKER_UNACKED = Metric(
    "celery_broker_unacked_messages",
    "gauge",
    "Messages delivered to workers but not yet acknowledged (acks_late; Redis 'unacked').",
)
BROKER_UNACKED_OLDEST_AGE = Metric(
    "celery_broker_unacked_oldest_age_seconds",
    "gauge",
    "Age of the oldest unacknowledged delivery; redelivered at the visibility timeout.",
)
BROKER_VISIBILITY_TIMEOUT = Metric(
    "celery_broker_visibility_timeout_seconds",
    "gauge",
    "The visibility_timeout the exporter was told the workers use (--visibility-timeout).",
)

EXPORTER_EVENTS = Metric(
    "celery_exporter_events_total",
    "counter",
    "Events processed, by event type.",
    ("type",),
)
EXPORTER_REJECTED = Metric(
    "celery_exporter_events_rejected_total",
    "counter",
    "Messages or events rejected without being applied, by reason.",
    ("reason",),
)
EXPORTER_INVALID_FIELDS = Metric(
    "celery_exporter_event_fields_invalid_total",
    "counter",
    "Event fields out of range (a timestamp far ahead, freq, active, processed, runtime, "
    "retries), clamped or ignored; the event itself still counts.",
    ("field",),
)
EXPORTER_DROPPED = Metric(
    "celery_exporter_events_dropped_total",
    "counter",
    "Event messages dropped because the in-memory backlog reached --max-backlog-bytes.",
)
EXPORTER_BACKLOG = Metric(
    "celery_exporter_event_backlog_bytes",
    "gauge",
    "Event bytes received from the broker but not yet processed.",
)
EXPORTER_LAG = Metric(
    "celery_exporter_event_lag_seconds",
    "gauge",
    "Now minus the timestamp of the newest event processed.",
)
EXPORTER_BROKER_UP = Metric(
    "celery_exporter_broker_up",
    "gauge",
    "1 if the last broker poll succeeded and the event subscription is up, else 0.",
)
EXPORTER_SOURCE_RECONNECTS = Metric(
    "celery_exporter_event_source_reconnects_total",
    "counter",
    "Event-source reconnects, by reason: closed (Redis closed the subscription: restart, "
    "CLIENT KILL, output buffer limit), auth, permission, protocol, timeout, error.",
    ("reason",),
)
EXPORTER_POLL_AGE = Metric(
    "celery_exporter_broker_poll_age_seconds",
    "gauge",
    "Seconds since the last successful broker poll: queue figures are this old.",
)
EXPORTER_TRACKED = Metric(
    "celery_exporter_tracked_tasks",
    "gauge",
    "Tasks in the exporter's task index (bounded by --max-tracked-tasks).",
)
EXPORTER_EVICTED = Metric(
    "celery_exporter_tracked_tasks_evicted_total",
    "counter",
    "Tasks evicted from the full task index, oldest first.",
)
EXPORTER_OVERFLOW = Metric(
    "celery_exporter_label_overflow_total",
    "counter",
    "Label values or label sets folded into 'other' because a cap was reached, by label "
    "(name, hostname, producer, queue_name, exception; series: the total series budget).",
    ("label",),
)
# Why the HTTP server closed a connection without serving it (the reason label's values).
HTTP_REJECT_REASONS = ("limit", "timeout", "tls", "malformed")
EXPORTER_HTTP_REJECTED = Metric(
    "celery_exporter_http_connections_rejected_total",
    "counter",
    "HTTP connections closed before a request was served, by reason: limit (the "
    "open-connection cap was reached), timeout (no complete request head in time), tls "
    "(handshake failed: plain HTTP, a missing or wrong client certificate), malformed "
    "(unparsable request, answered 400 or 431).",
    ("reason",),
)
EXPORTER_BUILD = Metric(
    "celery_exporter_build_info",
    "gauge",
    "Always 1; the exporter's version and the Celery version it was built with.",
    ("version", "celery_version"),
)

ALL: tuple[Metric, ...] = (
    *TASK_EVENT_COUNTERS.values(),
    TASK_LOST,
    TASK_REDELIVERED,
    TASK_PROCESSED,
    TASK_RUNTIME,
    TASK_QUEUE_WAIT,
    TASK_OLDEST_RUNNING_AGE,
    TASK_LAST_SENT,
    WORKER_UP,
    WORKER_STATE,
    WORKER_TASKS_ACTIVE,
    WORKER_POOL_SIZE,
    WORKER_LAST_HEARTBEAT,
    WORKER_PROCESSED,
    WORKER_TASK_EVENTS,
    QUEUE_LENGTH,
    QUEUE_OLDEST_AGE,
    QUEUE_SCHEDULED,
    QUEUE_ADMISSION_LIMIT,
    QUEUE_CONSUMERS,
    QUEUE_WORKERS,
    QUEUE_PROCESSES,
    BROKER_UNACKED,
    BROKER_UNACKED_OLDEST_AGE,
    BROKER_VISIBILITY_TIMEOUT,
    EXPORTER_EVENTS,
    EXPORTER_REJECTED,
    EXPORTER_INVALID_FIELDS,
    EXPORTER_DROPPED,
    EXPORTER_BACKLOG,
    EXPORTER_LAG,
    EXPORTER_BROKER_UP,
    EXPORTER_SOURCE_RECONNECTS,
    EXPORTER_POLL_AGE,
    EXPORTER_TRACKED,
    EXPORTER_EVICTED,
    EXPORTER_OVERFLOW,
    EXPORTER_HTTP_REJECTED,
    EXPORTER_BUILD,
)


def markdown_table() -> str:
    """The metric reference as a Markdown table (README and docs/metrics.md)."""
    rows = [
        "| metric | type | labels | description |",
        "| --- | --- | --- | --- |",
    ]
    for metric in ALL:
        labels = ", ".join(metric.labels) or "—"
        mark = " ¹" if metric.peer else ""
        rows.append(f"| `{metric.name}`{mark} | {metric.kind} | {labels} | {metric.help} |")
    rows.append("")
    rows.append("¹ Same name and labels as danihodovic/celery-exporter (drop-in compatible).")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown_table())

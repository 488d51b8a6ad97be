"""Recording rules: rates, ratios, latency quantiles, drain time and utilisation per queue.

They use a fixed 5m window: the names carry it (``...:rate5m``) and the dashboards and the
KEDA triggers query them by name, so the window is part of the contract, not a setting.
Aggregations deduplicate exporter replicas first (``max without (instance, pod)``, see
:mod:`alerts.promql`) and then sum ``without (hostname, ...)``, so target labels such as
``job``, ``namespace`` or ``cluster`` survive and two Celery clusters stay apart.
"""

from __future__ import annotations

from typing import Any

from alerts.promql import PromQL, block, expr
from alerts.settings import DEFAULTS, AlertSettings

RATE_WINDOW = "5m"
RATE_WINDOW_SECONDS = 300

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

# Capacity: how long the backlog takes to drain, and how busy the queue's consumers are.
DRAIN_TIME = "queue_name:celery_queue_drain_time_seconds:rate5m"
WORKER_QUEUES = "hostname_queue_name:celery_task_started_total:group"
WORKER_POOL = "hostname:celery_worker_pool_size:max"
WORKER_ACTIVE = "hostname:celery_worker_tasks_active:max"
QUEUE_POOL = "queue_name:celery_worker_pool_size:sum"
QUEUE_ACTIVE = "queue_name:celery_worker_tasks_active:sum"
UTILISATION = "queue_name:celery_queue_utilisation:ratio"


def _throughput(q: PromQL) -> list[dict[str, Any]]:
    return [
        {
            "record": SUCCEEDED_RATE,
            "expr": q.sum_rate("celery_task_succeeded_total", RATE_WINDOW, "hostname"),
        },
        {
            "record": FAILED_RATE,
            "expr": q.sum_rate("celery_task_failed_total", RATE_WINDOW, "hostname, exception"),
        },
        {
            # A ratio, not the article's rate: 0/0 (no traffic) is NaN and never alerts.
            "record": FAILURE_RATIO,
            "expr": (f"{q.sel(FAILED_RATE)}\n/\n({q.sel(SUCCEEDED_RATE)} + {q.sel(FAILED_RATE)})"),
        },
        {
            "record": SENT_RATE_BY_QUEUE,
            "expr": q.sum_rate("celery_task_sent_total", RATE_WINDOW, "hostname, name"),
        },
        {
            "record": STARTED_RATE_BY_QUEUE,
            "expr": q.sum_rate("celery_task_started_total", RATE_WINDOW, "hostname, name"),
        },
    ]


def _latency(q: PromQL) -> list[dict[str, Any]]:
    # Each bucket is deduplicated on its own; should two replicas differ, histogram_quantile
    # repairs the (slightly) non-monotonic buckets itself.
    rules: list[dict[str, Any]] = [
        {
            "record": RUNTIME_BUCKET_RATE,
            "expr": q.sum_rate("celery_task_runtime_bucket", RATE_WINDOW, "hostname"),
        },
        {
            "record": QUEUE_WAIT_BUCKET_RATE,
            "expr": q.sum_rate("celery_task_queue_wait_time_bucket", RATE_WINDOW, "hostname"),
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
                    "expr": f"histogram_quantile({quantile}, {q.sel(source)})",
                    "labels": {"quantile": quantile},
                }
            )
    return rules


def _drain_time(q: PromQL) -> dict[str, Any]:
    """Backlog / consumption rate, in seconds, with the zero-rate cases made explicit:

    - a backlog that nothing consumed in 5m is an infinite drain time (x / 0 = +Inf), also
      when the queue has no started-tasks series at all (``or backlog * 0`` supplies the 0);
    - an empty queue drains in 0 s, whatever the rate (instead of 0/0 = NaN).
    """
    backlog = q.one(q.sel("celery_queue_length"))
    consumed = q.sel(STARTED_RATE_BY_QUEUE)
    return {
        "record": DRAIN_TIME,
        "expr": expr(
            f"""
            ({backlog} > 0)
            /
            ({consumed} or {backlog} * 0)
            or
            {backlog} * 0
            """
        ),
    }


def _utilisation(q: PromQL) -> list[dict[str, Any]]:
    """Active tasks / pool size of the workers that consume each queue.

    The exporter knows pool size and active tasks per worker (``hostname``), not per queue.
    The join table is the set of (hostname, queue_name) pairs of the task counters: a worker
    that started a task from a queue consumes it. A worker serving several queues counts
    fully in each: its pool is shared, so when it is saturated every one of its queues waits.
    A worker that never started a task from a queue is not attributed to it yet.

    Only live workers count: ``online`` ones with their active tasks from heartbeats, and
    ``busy`` ones (heartbeats blocked by a running task on a solo/threads pool) as fully used.
    ``offline`` and ``lost`` workers keep their last gauges for a while; they are left out.
    """
    live = q.worker_state("online", "busy")
    online = q.worker_state("online")
    busy = q.worker_state("busy")
    per_queue = "* ignoring (queue_name) group_right"
    return [
        {
            "record": WORKER_QUEUES,
            "expr": f"group without ({q.replicas}, name) ({q.sel('celery_task_started_total')})",
        },
        {
            "record": WORKER_POOL,
            "expr": f"{q.one(q.sel('celery_worker_pool_size'))}\nand\n{live}",
        },
        {
            "record": WORKER_ACTIVE,
            "expr": expr(
                f"""
                (
                  {q.one(q.sel("celery_worker_tasks_active"))}
                  and {online}
                )
                or
                (
                  {q.sel(WORKER_POOL)}
                  and {busy}
                )
                """
            ),
        },
        {
            "record": QUEUE_POOL,
            "expr": block(
                "sum without (hostname)",
                f"{q.sel(WORKER_POOL)}\n{per_queue}\n{q.sel(WORKER_QUEUES)}",
            ),
        },
        {
            "record": QUEUE_ACTIVE,
            "expr": block(
                "sum without (hostname)",
                f"{q.sel(WORKER_ACTIVE)}\n{per_queue}\n{q.sel(WORKER_QUEUES)}",
            ),
        },
        {"record": UTILISATION, "expr": f"{q.sel(QUEUE_ACTIVE)}\n/\n{q.sel(QUEUE_POOL)}"},
    ]


def recording_rules(settings: AlertSettings = DEFAULTS) -> list[dict[str, Any]]:
    """Rates, ratios, quantiles and capacity figures the dashboards and alerts read by name."""
    q = PromQL(settings)
    return [*_throughput(q), *_latency(q), _drain_time(q), *_utilisation(q)]

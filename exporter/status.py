"""The status page's data (``/api/status``), read off the metric families ``/metrics`` serves.

Nothing here decides what a figure means: worker states, the consumer rule, the event lag
and the broker's health are the collector's, so the page and Prometheus can never disagree.
The page itself only turns counters into rates and compares them with the alert thresholds.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from exporter import metrics as m
from exporter.collector import Family


class FamilyIndex:
    """Samples by metric, each as ``{label values: value}``."""

    def __init__(self, families: Iterable[Family]) -> None:
        self._by_metric: dict[m.Metric, dict[tuple[str, ...], Any]] = {}
        for family in families:
            if family.metric.kind == "histogram":
                continue
            self._by_metric[family.metric] = dict(family.samples)  # type: ignore[arg-type]

    def series(self, metric: m.Metric) -> dict[tuple[str, ...], Any]:
        return self._by_metric.get(metric, {})

    def value(self, metric: m.Metric, *labels: str) -> Any:
        return self.series(metric).get(tuple(labels))

    def total(self, metric: m.Metric) -> float:
        return sum(self.series(metric).values())

    def by(self, metric: m.Metric, position: int) -> dict[str, float]:
        """Sums grouped by one label (its position in the metric's labels)."""
        sums: dict[str, float] = defaultdict(float)
        for labels, value in self.series(metric).items():
            sums[labels[position]] += value
        return dict(sums)


def status_document(families: Iterable[Family], now: float, started_at: float) -> dict[str, Any]:
    f = FamilyIndex(families)
    totals = {
        event.removeprefix("task-"): f.total(metric)
        for event, metric in m.TASK_EVENT_COUNTERS.items()
    }
    totals["lost"] = f.total(m.TASK_LOST)
    totals["redelivered"] = f.total(m.TASK_REDELIVERED)
    unacked = f.value(m.BROKER_UNACKED)
    poll_age = f.value(m.EXPORTER_POLL_AGE)
    return {
        "now": now,
        "uptime_seconds": now - started_at,
        "broker_up": f.value(m.EXPORTER_BROKER_UP) == 1,
        "broker_poll_age_seconds": poll_age,
        "event_lag_seconds": f.value(m.EXPORTER_LAG),
        "events_total": f.total(m.EXPORTER_EVENTS),
        "events_rejected_total": f.total(m.EXPORTER_REJECTED),
        "events_dropped_total": f.total(m.EXPORTER_DROPPED),
        "tracked_tasks": f.value(m.EXPORTER_TRACKED),
        "unacked": unacked,
        "unacked_oldest_age_seconds": f.value(m.BROKER_UNACKED_OLDEST_AGE),
        "visibility_timeout_seconds": f.value(m.BROKER_VISIBILITY_TIMEOUT),
        "totals": totals,
        "queues": _queues(f),
        "workers": _workers(f, now),
        "running": _running(f),
        "version": next(iter(f.series(m.EXPORTER_BUILD)), ("",))[0],
    }


def _queues(f: FamilyIndex) -> list[dict[str, Any]]:
    lengths = f.series(m.QUEUE_LENGTH)
    consumers = f.series(m.QUEUE_CONSUMERS)  # absent until the first inspect: unknown
    return [
        {
            "name": queue,
            "length": length,
            "oldest_age_seconds": f.value(m.QUEUE_OLDEST_AGE, queue) or 0.0,
            "consumers": consumers.get((queue,)) if consumers else None,
            "scheduled": f.value(m.QUEUE_SCHEDULED, queue) or 0,
        }
        for (queue,), length in sorted(lengths.items())
    ]


def _workers(f: FamilyIndex, now: float) -> list[dict[str, Any]]:
    states = {host: state for (host, state), on in f.series(m.WORKER_STATE).items() if on}
    lost_by_host = f.by(m.TASK_LOST, 1)
    return [
        {
            "hostname": host,
            "state": states.get(host, "unknown"),
            "up": up == 1,
            "active": f.value(m.WORKER_TASKS_ACTIVE, host),
            "processed": f.value(m.WORKER_PROCESSED, host),
            "pool_size": f.value(m.WORKER_POOL_SIZE, host),
            "last_heartbeat_age_seconds": max(0.0, now - f.value(m.WORKER_LAST_HEARTBEAT, host)),
            "sends_task_events": f.value(m.WORKER_TASK_EVENTS, host) == 1,
            "lost_tasks": lost_by_host.get(host, 0),
        }
        for (host,), up in sorted(f.series(m.WORKER_UP).items())
    ]


def _running(f: FamilyIndex) -> list[dict[str, Any]]:
    """Task names running now, oldest first: a stuck task stands at the top."""
    ages = f.series(m.TASK_OLDEST_RUNNING_AGE)
    return [
        {"name": name, "queue": queue, "oldest_age_seconds": age}
        for (name, queue), age in sorted(ages.items(), key=lambda item: -item[1])
    ]

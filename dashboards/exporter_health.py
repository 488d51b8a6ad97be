"""The *Celery exporter health* dashboard: can the numbers on the other two be trusted?

Every panel is per exporter process (``by (instance)``): with two replicas each one shows
its own ingest, polls and cost, and a sum across them would count every event twice.
"""

from __future__ import annotations

from grafanalib.core import Dashboard

from alerts.settings import DEFAULTS
from dashboards.panels import RI, dashboard, sel, state_timeline, table, target, timeseries

UID = "celery-exporter-health"


def per_instance(metric: str, *labels: str, fn: str = "rate") -> str:
    """``sum by (instance, labels) (fn(metric[$__rate_interval]))``, scoped."""
    by = ", ".join(["instance", *labels])
    return f"sum by ({by}) ({fn}({sel(metric)}[{RI}]))"


def _events() -> list:
    return [
        timeseries(
            "Events per second by type",
            "Celery events the exporter applied. Healthy: worker-heartbeat about every 2 s "
            "per worker plus task events following the workload. Bad: flat zero while "
            "workers run (CeleryEventsNotArriving).",
            [
                target(
                    per_instance("celery_exporter_events_total", "type"),
                    legend="{{instance}} {{type}}",
                )
            ],
            unit="ops",
            axis_label="events/s",
            stacked=True,
        ),
        timeseries(
            "Rejected and dropped events",
            "Messages refused (by reason: non-JSON, malformed, unknown type...) and messages "
            "dropped because the in-memory backlog was full. Bad: anything sustained above "
            "0 — drops mean undercounted tasks.",
            [
                target(
                    f"sum by (instance, reason) "
                    f"(rate({sel('celery_exporter_events_rejected_total')}[{RI}]))",
                    legend="{{instance}} rejected: {{reason}}",
                ),
                target(
                    per_instance("celery_exporter_events_dropped_total"),
                    legend="{{instance}} dropped",
                ),
            ],
            unit="ops",
            axis_label="messages/s",
        ),
        timeseries(
            "Event source reconnects",
            "Times the event subscription was re-established, by reason (closed, auth, "
            "permission, protocol, timeout, error). Events published while it was down are "
            "lost. Bad: any reconnect other than a rare 'closed' (a broker restart); 'auth' "
            "or 'permission' means the exporter's Redis user or password changed.",
            [
                target(
                    "sum by (instance, reason) (increase("
                    f"{sel('celery_exporter_event_source_reconnects_total')}[{RI}]))",
                    "{{instance}} {{reason}}",
                )
            ],
            unit="short",
            axis_label="reconnects",
        ),
        timeseries(
            "Event lag",
            "Now minus the timestamp of the newest event applied. Healthy: a few seconds "
            "(heartbeats every 2 s). Bad: growing steadily — the exporter falls behind, or "
            "no events arrive.",
            [
                target(
                    f"max by (instance) ({sel('celery_exporter_event_lag_seconds')})",
                    "{{instance}}",
                )
            ],
            unit="s",
            axis_label="lag",
        ),
        timeseries(
            "Event backlog",
            "Event bytes received but not yet applied. Bad: climbing toward "
            "--max-backlog-bytes, after which events are dropped.",
            [
                target(
                    f"max by (instance) ({sel('celery_exporter_event_backlog_bytes')})",
                    "{{instance}}",
                )
            ],
            unit="bytes",
            axis_label="backlog",
        ),
    ]


def _broker() -> list:
    return [
        state_timeline(
            "Exporter scraped / broker reachable",
            "Green while Prometheus scrapes the exporter (up) and the exporter reaches the "
            "broker with its event subscription up. Bad: any red band "
            "(CeleryExporterDown, CeleryBrokerUnreachable).",
            [
                target(f"max by (instance) ({sel('up')})", "scrape {{instance}}"),
                target(
                    f"max by (instance) ({sel('celery_exporter_broker_up')})",
                    "broker {{instance}}",
                ),
            ],
        ),
        timeseries(
            "Broker poll age",
            "Seconds since the last successful broker poll (queue figures are this old). "
            "Healthy: below the poll interval. Bad: above the red line "
            f"({DEFAULTS.broker_poll_stale_seconds:g}s, CeleryBrokerPollStale).",
            [
                target(
                    f"max by (instance) ({sel('celery_exporter_broker_poll_age_seconds')})",
                    "{{instance}}",
                )
            ],
            unit="s",
            axis_label="age",
            red_above=DEFAULTS.broker_poll_stale_seconds,
        ),
    ]


def _memory_and_cost() -> list:
    return [
        timeseries(
            "Tracked tasks",
            "Tasks held in the exporter's task index (to label later events). Bad: flat at "
            "--max-tracked-tasks: the index is full and evicts.",
            [target(f"max by (instance) ({sel('celery_exporter_tracked_tasks')})", "{{instance}}")],
            unit="short",
            axis_label="tasks",
        ),
        timeseries(
            "Task index evictions",
            "Tasks evicted from the full index per second. Bad: above 0 — later events of "
            "evicted tasks lose their queue and queue-wait.",
            [
                target(
                    "sum by (instance) "
                    f"(rate({sel('celery_exporter_tracked_tasks_evicted_total')}[{RI}]))",
                    "{{instance}}",
                )
            ],
            unit="ops",
            axis_label="evictions/s",
        ),
        timeseries(
            "Label overflow",
            "Label values folded into 'other' because a cardinality cap (--max-task-names, "
            "--max-hostnames, --max-queues, --max-exception-types) was hit. Bad: above 0 — "
            "raise the cap or find the source of unbounded names.",
            [
                target(
                    per_instance("celery_exporter_label_overflow_total", "label"),
                    "{{instance}} {{label}}",
                )
            ],
            unit="ops",
            axis_label="folds/s",
        ),
        timeseries(
            "Scrape duration",
            "How long Prometheus takes to scrape the exporter. Bad: approaching the scrape "
            "timeout (10 s by default), usually from too many series.",
            [target(f"max by (instance) ({sel('scrape_duration_seconds')})", "{{instance}}")],
            unit="s",
            axis_label="duration",
        ),
        timeseries(
            "Series per scrape",
            "Samples in each scrape. Bad: growing without end (unbounded label values).",
            [target(f"max by (instance) ({sel('scrape_samples_scraped')})", "{{instance}}")],
            unit="short",
            axis_label="samples",
        ),
        table(
            "Exporter versions",
            "Version of each exporter and the Celery it was built with. Bad: different "
            "versions across replicas after a rollout.",
            [target(sel("celery_exporter_build_info"), instant=True, table=True)],
            unit="none",
        ),
    ]


def build() -> Dashboard:
    return dashboard(
        uid=UID,
        title="Celery exporter health",
        description="Event ingest, broker polling, memory bounds and scrape cost of the "
        "celery-observatory exporter.",
        sections=[
            ("Events", _events()),
            ("Broker", _broker()),
            ("Memory and scrape cost", _memory_and_cost()),
        ],
    )

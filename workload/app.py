"""The Celery application of the reference workload: ``celery -A workload.app worker ...``.

The article's configuration, corrected against celery/kombu 5.7 (see docs/design.md and
docs/workload.md): JSON only, late acknowledgement with a prefetch of one, a visibility timeout
that bounds how long a crashed worker's task waits before redelivery, task events on, one
queue per kind of work (workload/queues.py), and a beat schedule of two periodic tasks:
``celery -A workload.app beat``.
"""

from __future__ import annotations

import sys

from celery import Celery

from workload import config, logs, queues

try:
    settings = config.load()
except config.ConfigError as exc:  # a clear line instead of a traceback at import
    sys.exit(f"workload: configuration error: {exc}")

QUEUES = queues.QUEUES
ROUTES = {name: {"queue": queue} for name, queue in queues.ROUTES.items()}

# The periodic tasks (names fixed: alerts/settings.py watches them by name).
REFRESH_STATS = "workload.tasks.refresh_stats"
PURGE_EXPIRED_REPORTS = "workload.tasks.purge_expired_reports"


def beat_schedule(cfg: config.Settings) -> dict[str, dict[str, object]]:
    """Every entry on the default queue; the intervals are settings so tests can shorten them."""
    return {
        "refresh-stats": {
            "task": REFRESH_STATS,
            "schedule": cfg.beat_refresh_stats_seconds,
            "options": {"queue": queues.DEFAULT_QUEUE},
        },
        "purge-expired-reports": {
            "task": PURGE_EXPIRED_REPORTS,
            "schedule": cfg.beat_purge_seconds,
            "options": {"queue": queues.DEFAULT_QUEUE},
        },
    }


def transport_options(cfg: config.Settings) -> dict[str, object]:
    options: dict[str, object] = {
        "visibility_timeout": cfg.visibility_timeout,
        "socket_connect_timeout": cfg.redis_connect_timeout,
        # Without a socket timeout a publish to a Redis that vanished without closing the
        # TCP connection waits forever; kombu's BRPOP uses its own 1 s timeout.
        "socket_timeout": cfg.redis_socket_timeout,
    }
    # kombu sweeps unacked messages only every interval x throttle seconds (100 s by
    # default); tests with a short visibility timeout shorten the sweep too.
    if cfg.unacked_restore_interval is not None:
        options["unacked_restore_interval"] = cfg.unacked_restore_interval
    if cfg.unacked_restore_throttle is not None:
        options["unacked_restore_throttle"] = cfg.unacked_restore_throttle
    return options


def celery_config(cfg: config.Settings) -> dict[str, object]:
    return {
        "broker_url": cfg.broker_url,
        "result_backend": cfg.result_backend,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": transport_options(cfg),
        "redis_socket_connect_timeout": cfg.redis_connect_timeout,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "timezone": "UTC",
        "enable_utc": True,
        "task_acks_late": True,
        "worker_prefetch_multiplier": cfg.prefetch_multiplier,
        "task_track_started": True,
        # Events are what the exporter counts; WORKLOAD_TASK_EVENTS=false only for benchmarks.
        "worker_send_task_events": cfg.task_events,
        "task_send_sent_event": cfg.task_events,
        "task_default_queue": queues.DEFAULT_QUEUE,
        "task_routes": ROUTES,
        "result_expires": cfg.result_expires,
        "beat_schedule": beat_schedule(cfg),
        # Beat's state (last run times) lives under WORKLOAD_STATE_DIR, never in the working
        # directory: a read-only checkout or container still runs beat.
        "beat_schedule_filename": str(cfg.state_dir / "celerybeat-schedule"),
        "beat_scheduler": "workload.beat:StateDirScheduler",
        # Fail fast when the broker is gone: the API turns the error into a 503.
        "task_publish_retry_policy": {
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
    }


app = Celery("workload", include=["workload.tasks", "workload.dlq"])
app.conf.update(celery_config(settings))
logs.connect_worker_signals()

"""Stock Celery with the workload's guarantees: ``celery -A bench.stockapp worker``.

The baseline of bench/workload.py's ``stock`` row: a plain ``Celery()`` app and a plain task,
none of the workload's code (no dead-letter base class, no structlog signal handlers, no
logging setup), with the settings that give the workload its guarantees:

JSON only, ``task_acks_late``, prefetch 1, Redis results (``result_expires`` as the workload),
``task_track_started``, task events and sent events, the same visibility timeout and the same
default queue.

The task keeps the workload's name (``workload.tasks.dummy_task``), so the messages, routes
and results are byte for byte the same size as the workload's and the benchmark drives both
the same way.
"""

from __future__ import annotations

import os
import time

from celery import Celery

app = Celery(
    "stock",
    broker=os.environ.get("CELERY_BROKER_URL", "redis://localhost:6379/0"),
    backend=os.environ.get("CELERY_RESULT_BACKEND", "redis://localhost:6379/1"),
)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_accept_content=["json"],
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    task_track_started=True,
    worker_send_task_events=True,
    task_send_sent_event=True,
    result_expires=86400,
    broker_transport_options={"visibility_timeout": 3600},
    task_default_queue="default",  # the queue the benchmark's workers consume
    timezone="UTC",
    enable_utc=True,
)


@app.task(name="workload.tasks.dummy_task")
def dummy_task(i: int, sleep: float = 0.0) -> int:
    """The workload's benchmark task, as a plain Celery task."""
    if sleep:
        time.sleep(min(float(sleep), 60.0))
    return i

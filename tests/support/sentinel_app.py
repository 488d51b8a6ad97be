"""A Celery app whose broker is a Sentinel deployment, configured as Celery documents it:
``sentinel://...;sentinel://...`` plus the ``master_name`` transport option.

``celery -A tests.support.sentinel_app worker`` with SENTINEL_BROKER_URL and
SENTINEL_MASTER in the environment (tests/test_exporter_ha_brokers.py).
"""

from __future__ import annotations

import os

from celery import Celery


def make_app(broker_url: str, master_name: str) -> Celery:
    app = Celery("sentinel-test", broker=broker_url, set_as_current=False)
    app.conf.update(
        broker_transport_options={
            "master_name": master_name,
            "socket_timeout": 2,
            "socket_connect_timeout": 2,
        },
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        accept_content=["json"],
        worker_send_task_events=True,
        task_send_sent_event=True,
        task_default_queue="default",
        task_publish_retry_policy={
            "max_retries": 20,
            "interval_start": 0.2,
            "interval_step": 0.5,
            "interval_max": 1,
        },
    )

    @app.task(name="sentinel.echo")
    def echo(i: int) -> int:
        return i

    return app


app = make_app(
    os.environ.get("SENTINEL_BROKER_URL", "sentinel://127.0.0.1:26379"),
    os.environ.get("SENTINEL_MASTER", "mymaster"),
)

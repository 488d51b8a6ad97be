"""A producer-side Celery app for tests: sends the workload's tasks by name, JSON only.

It mirrors what a web process does (``task_send_sent_event`` on), without importing the
workload's settings into the test process.
"""

from __future__ import annotations

from celery import Celery

from tests.support.procs import RedisServer


def client_app(redis_server: RedisServer) -> Celery:
    app = Celery("test-client", broker=redis_server.url(0), backend=redis_server.url(1),
                 set_as_current=False)  # fmt: skip
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        result_accept_content=["json"],
        task_send_sent_event=True,
        broker_connection_retry_on_startup=True,
    )
    return app

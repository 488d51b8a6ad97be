"""A Celery app configured the way a user of the peer exporter (danihodovic/celery-exporter)
configures theirs when its README's flags matter: a TLS broker, a kombu ``global_keyprefix``
and a ``visibility_timeout`` transport option, JSON only, task events on.

``celery -A tests.support.peer_app worker`` with PEER_BROKER_URL (``rediss://...`` with its
``ssl_*`` query) and PEER_KEYPREFIX in the environment (tests/test_exporter_peer_flags.py).
"""

from __future__ import annotations

import os
import time

from celery import Celery

VISIBILITY_TIMEOUT = 7200


def make_app(broker_url: str, keyprefix: str, send_sent_event: bool = True) -> Celery:
    app = Celery("peer-flags-test", broker=broker_url, set_as_current=False)
    app.conf.update(
        broker_transport_options={
            "global_keyprefix": keyprefix,
            "visibility_timeout": VISIBILITY_TIMEOUT,
        },
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        accept_content=["json"],
        worker_send_task_events=True,
        task_send_sent_event=send_sent_event,
        task_default_queue="work",
    )

    @app.task(name="peer.nap")
    def nap(seconds: float) -> None:
        time.sleep(seconds)

    @app.task(name="peer.fail")
    def fail() -> None:
        raise ValueError("failed on purpose")

    return app


app = make_app(
    os.environ.get("PEER_BROKER_URL", "redis://127.0.0.1:6379/0"),
    os.environ.get("PEER_KEYPREFIX", ""),
)

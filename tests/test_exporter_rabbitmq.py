"""The generic event source (Celery's EventReceiver) and the AMQP poller, on a real RabbitMQ.

RabbitMQ is not started by the tests (it is heavy and needs root): this suite uses one on
127.0.0.1:5672 (guest/guest) when there is one, and skips with the reason when there is not.
"""

from __future__ import annotations

import socket
import uuid

import pytest
from celery import Celery

from tests.support.exporter import ExporterProcess
from tests.support.procs import CeleryWorker, celery_env

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"


def rabbitmq_reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=1):
            return True
    except OSError:
        return False


pytestmark = pytest.mark.skipif(
    not rabbitmq_reachable(),
    reason="no RabbitMQ on 127.0.0.1:5672 (apt-get install rabbitmq-server)",
)


def test_receiver_source_counts_tasks_and_amqp_poller_reports_queues(procs, redis_server) -> None:  # type: ignore[no-untyped-def]
    queue = f"obs-{uuid.uuid4().hex[:8]}"  # private to this run on a shared broker
    idle = f"{queue}-idle"
    node = f"amqp-{queue}@test"
    # A worker 5 h 45 min ahead of UTC (a POSIX TZ needs no tzdata): event timestamps are
    # Unix time, so lag and queue wait must not move by the offset (Celery's receiver
    # "localizes" them unless asked not to).
    env = celery_env(redis_server, TZ="NPT-5:45")
    env["CELERY_BROKER_URL"] = AMQP_URL
    exporter = ExporterProcess(
        procs,
        AMQP_URL,
        args=["--queues", f"{queue},{idle}", "--event-source", "auto"],
        env={"TZ": "UTC"},
    ).start()
    CeleryWorker(procs, env, queues=[queue, idle], nodename=node).start()
    app = Celery("amqp-client", broker=AMQP_URL, set_as_current=False)
    app.conf.update(task_serializer="json", accept_content=["json"], task_send_sent_event=True)
    for i in range(4):
        app.send_task("workload.tasks.dummy_task", (i,), queue=queue)
    labels = {"name": "workload.tasks.dummy_task", "hostname": node, "queue_name": queue}
    scrape = exporter.wait_for(
        lambda s: (
            s.value("celery_task_succeeded_total", **labels) == 4
            and s.value("celery_active_consumer_count", queue_name=idle) == 1
        ),
        timeout=40,
        message="4 successes through EventReceiver, consumer counted by RabbitMQ",
    )
    assert scrape.value("celery_task_received_total", **labels) == 4
    assert scrape.value("celery_worker_up", hostname=node) == 1
    assert scrape.value("celery_queue_length", queue_name=idle) == 0
    assert scrape.value("celery_exporter_broker_up") == 1
    lag = scrape.value("celery_exporter_event_lag_seconds")
    assert lag is not None and 0 <= lag < 60, lag
    wait_sum = scrape.value("celery_task_queue_wait_time_sum", **labels)
    assert wait_sum is not None and 0 <= wait_sum < 4 * 60, wait_sum
    assert "guest:guest" not in exporter.log_text()

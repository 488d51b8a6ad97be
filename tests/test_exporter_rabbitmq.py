"""The generic event source (Celery's EventReceiver) and the AMQP poller, on a real RabbitMQ.

The broker is the ``rabbitmq_url`` fixture (tests/conftest.py): a container on the docker
backend; on the local backend the one on 127.0.0.1:5672 (guest/guest) when there is one, and
the test skips with the reason when there is not (RabbitMQ is heavy and needs root).
"""

from __future__ import annotations

import uuid
from urllib.parse import urlsplit

from celery import Celery

from tests.support.exporter import ExporterProcess
from tests.support.procs import CeleryWorker, celery_env


def test_receiver_source_counts_tasks_and_amqp_poller_reports_queues(  # type: ignore[no-untyped-def]
    procs, redis_server, rabbitmq_url
) -> None:
    queue = f"obs-{uuid.uuid4().hex[:8]}"  # private to this run on a shared broker
    idle = f"{queue}-idle"
    node = f"amqp-{queue}@test"
    # A worker 5 h 45 min ahead of UTC (a POSIX TZ needs no tzdata): event timestamps are
    # Unix time, so lag and queue wait must not move by the offset (Celery's receiver
    # "localizes" them unless asked not to).
    env = celery_env(redis_server, TZ="NPT-5:45")
    env["CELERY_BROKER_URL"] = rabbitmq_url
    exporter = ExporterProcess(
        procs,
        rabbitmq_url,
        args=["--queues", f"{queue},{idle}", "--event-source", "auto"],
        env={"TZ": "UTC"},
    ).start()
    CeleryWorker(procs, env, queues=[queue, idle], nodename=node).start()
    app = Celery("amqp-client", broker=rabbitmq_url, set_as_current=False)
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
    credentials = urlsplit(rabbitmq_url)
    assert f"{credentials.username}:{credentials.password}" not in exporter.log_text()

"""The generic event source (Celery's EventReceiver) against a real Redis and real workers.

``--event-source receiver`` runs the path RabbitMQ users get on any broker, so these tests
run everywhere; tests/test_exporter_rabbitmq.py covers AMQP itself where a RabbitMQ runs.
"""

from __future__ import annotations

import time

from tests.support.celery_client import client_app
from tests.support.exporter import ExporterProcess
from tests.support.procs import CeleryWorker, celery_env, wait_until

DUMMY = "workload.tasks.dummy_task"
# A POSIX TZ string needs no tzdata: UTC+5:45, Nepal's odd offset (Asia/Kathmandu).
KATHMANDU = "NPT-5:45"


def test_worker_in_another_utc_offset_keeps_true_lag_and_queue_wait(procs, redis_server) -> None:  # type: ignore[no-untyped-def]
    exporter = ExporterProcess(
        procs, redis_server.url(0), args=["--event-source", "receiver"], env={"TZ": "UTC"}
    ).start()
    app = client_app(redis_server)
    sent_at = time.time()
    for i in range(3):
        app.send_task(DUMMY, (i,), queue="default")
    sent_done = time.time()
    # The tasks wait in the queue until this worker, 5 h 45 min ahead of UTC, is up.
    env = celery_env(redis_server, TZ=KATHMANDU)
    CeleryWorker(procs, env, queues=["default"], nodename="kathmandu@test").start()
    ready_at = time.time()
    labels = {"name": DUMMY, "hostname": "kathmandu@test", "queue_name": "default"}
    scrape = exporter.wait_for(
        lambda s: s.value("celery_task_succeeded_total", **labels) == 3,
        timeout=60,
        message="3 tasks counted through the EventReceiver",
    )
    # Celery's receiver would shift this worker's timestamps by -5.75 h (20,700 s): lag in
    # hours, and a queue wait clamped to 0. Unix time needs no time zone.
    lag = scrape.value("celery_exporter_event_lag_seconds")
    assert lag is not None and 0 <= lag < 60, lag
    wait_sum = scrape.value("celery_task_queue_wait_time_sum", **labels)
    assert wait_sum is not None
    assert 3 * (ready_at - sent_done - 2) <= wait_sum <= 3 * (time.time() - sent_at), wait_sum
    assert wait_sum > 0
    assert scrape.value("celery_worker_up", hostname="kathmandu@test") == 1


def test_receiver_is_subscribed_only_while_consuming(procs, redis_server) -> None:  # type: ignore[no-untyped-def]
    admin = redis_server.client()
    # Everything but the event channels: the connection works, the subscription cannot.
    admin.execute_command("ACL", "SETUSER", "exporter", "on", ">exporterpw", "+@all", "~*")
    url = redis_server.url(0, username="exporter", password="exporterpw")
    exporter = ExporterProcess(procs, url, args=["--event-source", "receiver"])
    exporter.start(wait_ready=False)
    reconnects = "celery_exporter_event_source_reconnects_total"
    exporter.wait_for(
        lambda s: s.value(reconnects, reason="permission") >= 2,
        message="the subscription refused twice (NOPERM)",
    )
    for _ in range(20):  # connected, polling fine, yet never reported subscribed
        status, body = exporter.get("/readyz")
        assert status == 503 and '"events_subscribed":false' in body, body
        time.sleep(0.05)

    admin.execute_command("ACL", "SETUSER", "exporter", "&*")
    wait_until(lambda: exporter.get("/readyz")[0] == 200, timeout=30, message="subscribed")
    CeleryWorker(procs, celery_env(redis_server), queues=["default"], nodename="rx@test").start()
    client_app(redis_server).send_task(DUMMY, (1,), queue="default")
    labels = {"name": DUMMY, "hostname": "rx@test", "queue_name": "default"}
    exporter.wait_for(
        lambda s: s.value("celery_task_succeeded_total", **labels) == 1,
        timeout=40,
        message="events flow once the channels are granted",
    )
    assert "exporterpw" not in exporter.log_text()

"""The broker poller against a real Redis: backlog across priorities, ages, unacked, discovery."""

from __future__ import annotations

import time

import pytest

from tests.support.celery_client import client_app
from tests.support.exporter import ExporterProcess
from tests.support.procs import CeleryWorker, celery_env, wait_until

DUMMY = "workload.tasks.dummy_task"


@pytest.mark.slow
def test_backlog_of_ten_thousand_over_three_priorities_is_counted_exactly(
    procs, redis_server
) -> None:  # type: ignore[no-untyped-def]
    exporter = ExporterProcess(procs, redis_server.url(0), args=["--queues", "idle"]).start()
    app = client_app(redis_server)
    per_priority = {0: 3500, 5: 3500, 9: 3600}  # kombu maps 5 -> sub-list 3, 9 -> sub-list 9
    first_sent = time.time()
    with app.producer_or_acquire() as producer:
        for priority, count in per_priority.items():
            for i in range(count):
                app.send_task(DUMMY, (i,), queue="backlog", priority=priority, producer=producer)
    total = sum(per_priority.values())

    client = redis_server.client()
    lists = {
        key: client.llen(key) for key in (b"backlog", b"backlog\x06\x163", b"backlog\x06\x169")
    }
    assert lists == {b"backlog": 3500, b"backlog\x06\x163": 3500, b"backlog\x06\x169": 3600}

    # "backlog" is not in --queues: it is found through kombu's binding set or the events.
    scrape = exporter.wait_for(
        lambda s: s.value("celery_queue_length", queue_name="backlog") == total,
        message=f"celery_queue_length == {total}",
    )
    assert scrape.value("celery_queue_length", queue_name="idle") == 0  # known, empty, reported
    assert scrape.value("celery_queue_oldest_message_age_seconds", queue_name="idle") == 0
    age = scrape.value("celery_queue_oldest_message_age_seconds", queue_name="backlog")
    assert 0 < age <= time.time() - first_sent + 1
    later = exporter.wait_for(
        lambda s: (
            s.value("celery_queue_oldest_message_age_seconds", queue_name="backlog") > age + 1
        ),
        message="the oldest message keeps ageing while nobody consumes",
    )
    assert later.value("celery_queue_length", queue_name="backlog") == total


def test_unacked_delivery_is_visible_with_its_age(procs, redis_server) -> None:  # type: ignore[no-untyped-def]
    env = celery_env(redis_server)
    exporter = ExporterProcess(procs, redis_server.url(0), args=["--queues", "default"]).start()
    CeleryWorker(procs, env, queues=["default"], nodename="slow@test", concurrency=1).start()
    app = client_app(redis_server)
    app.send_task(DUMMY, (1,), {"sleep": 30}, queue="default")
    scrape = exporter.wait_for(
        lambda s: (
            s.value("celery_broker_unacked_messages") == 1
            and s.value("celery_worker_tasks_active", hostname="slow@test") == 1
        ),
        message="one delivery held under acks_late",
    )
    first_age = scrape.value("celery_broker_unacked_oldest_age_seconds")
    assert first_age is not None and first_age >= 0
    exporter.wait_for(
        lambda s: s.value("celery_broker_unacked_oldest_age_seconds") > first_age + 1,
        message="unacked age grows",
    )
    assert exporter.scrape().value("celery_queue_length", queue_name="default") == 0


def test_queue_figures_survive_a_paused_broker_with_a_staleness_signal(procs, redis_server) -> None:  # type: ignore[no-untyped-def]
    exporter = ExporterProcess(procs, redis_server.url(0), args=["--queues", "paused"]).start()
    redis_server.client().lpush("paused", b'{"headers": {"id": "x"}, "properties": {}}')
    exporter.wait_for(lambda s: s.value("celery_queue_length", queue_name="paused") == 1)
    redis_server.pause()
    try:
        # Longer than a poll interval (0.5 s) plus the poll's socket timeout (1 s).
        scrape = exporter.wait_for(
            lambda s: (
                s.value("celery_exporter_broker_up") == 0
                and s.value("celery_exporter_broker_poll_age_seconds") > 2
            ),
            timeout=20,
            message="staleness visible while Redis is stopped",
        )
        assert scrape.value("celery_queue_length", queue_name="paused") == 1  # last known
        started = time.monotonic()
        exporter.scrape()
        assert time.monotonic() - started < 1.0  # scrapes never wait on the broker
    finally:
        redis_server.resume()
    exporter.wait_for(
        lambda s: (
            s.value("celery_exporter_broker_up") == 1
            and s.value("celery_exporter_broker_poll_age_seconds") < 2
        ),
        timeout=40,
        message="recovered after SIGCONT",
    )
    wait_until(lambda: exporter.get("/readyz")[0] == 200, timeout=10, message="ready again")

"""The blind spots, each shown by its real fault on real workers and a real Redis: a worker
killed mid-task (lost), a worker whose task holds the GIL (busy, not lost), a graceful
departure (offline, never lost), a hard time limit (one failure, not two), ETA tasks
(scheduled), the oldest running task, the last send of a task name and pool sizes; then
producer churn and the series budget against the live exporter."""

from __future__ import annotations

import time
import uuid

import pytest

from tests.support.celery_client import client_app
from tests.support.exporter import ExporterProcess, Scrape, event_envelope
from tests.support.procs import CeleryWorker, celery_env, wait_until

DUMMY = "workload.tasks.dummy_task"
ON_DEFAULT = {"name": DUMMY, "queue_name": "default"}


def state_of(scrape: Scrape, host: str) -> str | None:
    """The one state whose ``celery_worker_state`` series is 1 (None if absent)."""
    on = [dict(k)["state"] for k, v in scrape.series("celery_worker_state").items()
          if dict(k)["hostname"] == host and v == 1]  # fmt: skip
    assert len(on) <= 1, on
    return on[0] if on else None


@pytest.mark.slow
def test_a_worker_killed_mid_task_is_lost_and_so_is_its_task_once(procs, redis_server) -> None:  # type: ignore[no-untyped-def]
    env = celery_env(redis_server)
    exporter = ExporterProcess(
        procs, redis_server.url(0), args=["--worker-timeout", "3", "--inspect-interval", "1"]
    ).start()
    worker = CeleryWorker(procs, env, nodename="victim@test", concurrency=2).start()
    sent_at = time.time()
    client_app(redis_server).send_task(DUMMY, (1,), {"sleep": 60}, queue="default")
    scrape = exporter.wait_for(
        lambda s: (
            (s.value("celery_task_oldest_running_age_seconds", **ON_DEFAULT) or 0) > 1
            and s.value("celery_worker_pool_size", hostname="victim@test") == 2
        ),
        message="the task running for a while, the pool size known",
    )
    assert sent_at <= scrape.value("celery_task_last_sent_timestamp_seconds", name=DUMMY)
    assert scrape.value("celery_task_lost_total", hostname="victim@test", **ON_DEFAULT) == 0

    worker.kill()
    lost = {"hostname": "victim@test", **ON_DEFAULT}
    scrape = exporter.wait_for(
        lambda s: (
            state_of(s, "victim@test") == "lost" and s.value("celery_task_lost_total", **lost)
        ),
        timeout=15,
        message="worker lost, its task lost with it",
    )
    assert scrape.value("celery_task_lost_total", **lost) == 1
    assert scrape.value("celery_worker_up", hostname="victim@test") == 0
    assert scrape.series("celery_task_oldest_running_age_seconds") == {}
    # Counted once, however long the worker stays lost.
    later = exporter.wait_for(
        lambda s: (
            s.value("celery_worker_last_heartbeat_timestamp_seconds", hostname="victim@test")
            < time.time() - 8
        ),
        timeout=15,
        message="several check intervals later",
    )
    assert later.value("celery_task_lost_total", **lost) == 1


@pytest.mark.slow
def test_a_worker_whose_long_task_starves_its_heartbeats_is_busy_not_lost(
    procs, redis_server
) -> None:  # type: ignore[no-untyped-def]
    env = celery_env(redis_server)
    exporter = ExporterProcess(
        procs, redis_server.url(0), args=["--worker-timeout", "3", "--inspect-interval", "1"]
    ).start()
    CeleryWorker(
        procs, env, nodename="busy@test", pool="threads", concurrency=1,
        extra_args=["-I", "tests.support.gil_task"],
    ).start()  # fmt: skip
    exporter.wait_for(
        lambda s: s.value("celery_worker_pool_size", hostname="busy@test") == 1,
        message="inspect knows the threads pool",
    )
    client_app(redis_server).send_task("tests.hold_gil", (12,), queue="default")
    on_default = {"name": "tests.hold_gil", "queue_name": "default"}
    scrape = exporter.wait_for(
        lambda s: state_of(s, "busy@test") == "busy", timeout=15, message="busy while it works"
    )
    assert scrape.value("celery_worker_up", hostname="busy@test") == 0  # the peer's meaning
    assert scrape.value("celery_task_oldest_running_age_seconds", **on_default) > 1
    scrape = exporter.wait_for(
        lambda s: (
            state_of(s, "busy@test") == "online"
            and s.value("celery_task_succeeded_total", hostname="busy@test", **on_default) == 1
        ),
        timeout=30,
        message="back online once the task is done",
    )
    assert scrape.total("celery_task_lost_total") == 0


def test_a_graceful_departure_is_offline_and_loses_nothing(procs, redis_server) -> None:  # type: ignore[no-untyped-def]
    env = celery_env(redis_server)
    exporter = ExporterProcess(procs, redis_server.url(0), args=["--worker-timeout", "3"]).start()
    worker = CeleryWorker(procs, env, nodename="leaving@test").start()
    client_app(redis_server).send_task(DUMMY, (1,), {"sleep": 1}, queue="default")
    exporter.wait_for(lambda s: s.value("celery_task_started_total", hostname="leaving@test",
                                        **ON_DEFAULT) == 1)  # fmt: skip
    worker.warm_shutdown()  # finishes the task, then worker-offline
    scrape = exporter.wait_for(lambda s: state_of(s, "leaving@test") == "offline", timeout=20)
    assert scrape.value("celery_task_succeeded_total", hostname="leaving@test", **ON_DEFAULT) == 1
    # Still offline (not lost) well past the worker timeout.
    wait_until(lambda: time.time() - scrape.value(
        "celery_worker_last_heartbeat_timestamp_seconds", hostname="leaving@test") > 7,
        timeout=15)  # fmt: skip
    later = exporter.scrape()
    assert state_of(later, "leaving@test") == "offline"
    assert later.total("celery_task_lost_total") == 0


@pytest.mark.slow
def test_a_hard_time_limit_is_one_failure(procs, redis_server) -> None:  # type: ignore[no-untyped-def]
    env = celery_env(redis_server)
    exporter = ExporterProcess(procs, redis_server.url(0)).start()
    CeleryWorker(procs, env, nodename="limited@test", concurrency=1).start()
    client_app(redis_server).send_task(DUMMY, (1,), {"sleep": 30}, queue="default", time_limit=1)
    labels = {"hostname": "limited@test", **ON_DEFAULT}
    # Celery sends task-failed twice for a hard time limit (both ExceptionWithTraceback()).
    exporter.wait_for(
        lambda s: s.value("celery_exporter_events_rejected_total", reason="duplicate_final_state"),
        timeout=30,
        message="the time limit killed the task and Celery reported it twice",
    )
    scrape = exporter.scrape()
    assert scrape.total("celery_task_failed_total", **labels) == 1
    assert scrape.value("celery_task_processed_total", **labels) == 1
    assert scrape.total("celery_task_lost_total") == 0


def test_eta_tasks_are_scheduled_until_they_start(procs, redis_server) -> None:  # type: ignore[no-untyped-def]
    env = celery_env(redis_server)
    exporter = ExporterProcess(procs, redis_server.url(0), args=["--queues", "default"]).start()
    CeleryWorker(procs, env, nodename="patient@test").start()
    app = client_app(redis_server)
    for i in range(3):
        app.send_task(DUMMY, (i,), queue="default", countdown=6)
    scrape = exporter.wait_for(
        lambda s: s.value("celery_queue_scheduled_messages", queue_name="default") == 3,
        message="three ETA tasks held by the worker",
    )
    assert scrape.value("celery_queue_length", queue_name="default") == 0  # not in the queue
    exporter.wait_for(
        lambda s: (
            s.value("celery_queue_scheduled_messages", queue_name="default") == 0
            and s.value("celery_task_succeeded_total", hostname="patient@test", **ON_DEFAULT) == 3
        ),
        timeout=30,
        message="run at their ETA",
    )


def test_producer_churn_never_hides_a_new_worker(procs, redis_server) -> None:  # type: ignore[no-untyped-def]
    exporter = ExporterProcess(
        procs, redis_server.url(0), args=["--max-hostnames", "5", "--max-producers", "5"]
    ).start()
    client = redis_server.client()
    for i in range(40):  # web pods come and go, each sending under its own hostname
        event = {"type": "task-sent", "hostname": f"gen{i}@web-{i}", "timestamp": time.time(),
                 "uuid": str(uuid.uuid4()), "name": DUMMY, "queue": "default"}  # fmt: skip
        client.publish("/0.celeryev/task.sent", event_envelope(event))
    exporter.wait_for(
        lambda s: s.value("celery_exporter_label_overflow_total", label="producer") == 35
    )
    CeleryWorker(procs, celery_env(redis_server), nodename="new@test").start()
    scrape = exporter.wait_for(lambda s: s.value("celery_worker_up", hostname="new@test") == 1)
    assert scrape.value("celery_exporter_label_overflow_total", label="hostname") == 0


def test_the_series_budget_bounds_what_the_label_caps_allow(procs, redis_server) -> None:  # type: ignore[no-untyped-def]
    exporter = ExporterProcess(procs, redis_server.url(0), args=["--max-series", "20000"]).start()
    client = redis_server.client()
    pipe = client.pipeline(transaction=False)
    for name in range(100):
        for host in range(100):  # 10,000 label sets: each is about 50 series
            task_id = str(uuid.uuid4())
            events = [
                {"type": "task-received", "hostname": f"w{host}@h", "timestamp": time.time(),
                 "uuid": task_id, "name": f"task.n{name}", "retries": 0},
                {"type": "task-succeeded", "hostname": f"w{host}@h", "timestamp": time.time(),
                 "uuid": task_id, "runtime": 0.1},
            ]  # fmt: skip
            pipe.publish("/0.celeryev/task.multi", event_envelope(events))
        pipe.execute()
    scrape = exporter.wait_for(
        lambda s: s.total("celery_task_succeeded_total") == 10_000,
        timeout=120,
        message="all events applied",
    )
    assert scrape.value("celery_exporter_label_overflow_total", label="series") > 0
    assert scrape.total("celery_task_succeeded_total", name="other", hostname="other") > 0
    task_series = sum(len(v) for k, v in scrape.samples.items() if k.startswith("celery_task_"))
    assert task_series <= 20_000, task_series

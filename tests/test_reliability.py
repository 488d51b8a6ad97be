"""The fault matrix of issue 8 that the exporter suites do not already cover.

Covered elsewhere: Redis killed and restarted, Redis paused (test_exporter_live.py and
test_exporter_broker.py), graceful worker shutdown, bad input and pickle, TLS, basic auth
and the ACL user (test_exporter_security.py), the API's 503 (test_workload_api.py).
"""

from __future__ import annotations

import base64
import time
import uuid

import orjson
import pytest

from tests.support.celery_client import client_app
from tests.support.exporter import ExporterProcess
from tests.support.procs import CeleryWorker, celery_env

DUMMY = "workload.tasks.dummy_task"


def heartbeat_envelope(i: int, hostname: str = "flood@test") -> bytes:
    event = {
        "type": "worker-heartbeat",
        "hostname": hostname,
        "timestamp": time.time(),
        "freq": 2.0,
        "active": 0,
        "processed": i,
    }
    return orjson.dumps(
        {
            "body": base64.b64encode(orjson.dumps(event)).decode(),
            "content-type": "application/json",
            "content-encoding": "utf-8",
            "headers": {},
            "properties": {"body_encoding": "base64"},
        }
    )


@pytest.mark.slow
def test_worker_killed_mid_task_is_seen_in_unacked_and_redelivered_once(
    procs, redis_server
) -> None:  # type: ignore[no-untyped-def]
    env = celery_env(
        redis_server,
        WORKLOAD_VISIBILITY_TIMEOUT="4",
        WORKLOAD_UNACKED_RESTORE_INTERVAL="1",
        WORKLOAD_UNACKED_RESTORE_THROTTLE="1",
    )
    exporter = ExporterProcess(
        procs, redis_server.url(0), args=["--worker-timeout", "3", "--visibility-timeout", "4"]
    ).start()
    first = CeleryWorker(
        procs, env, queues=["default"], nodename="victim@test", concurrency=1
    ).start()
    # Shorter than the visibility timeout: the rescuer's own delivery must not be restored too.
    client_app(redis_server).send_task(DUMMY, (1,), {"sleep": 2}, queue="default")
    labels = {"name": DUMMY, "queue_name": "default"}
    exporter.wait_for(
        lambda s: s.value("celery_task_started_total", hostname="victim@test", **labels) == 1,
        message="the task started",
    )
    first.kill()
    scrape = exporter.wait_for(
        lambda s: (
            s.value("celery_worker_up", hostname="victim@test") == 0
            and s.value("celery_broker_unacked_messages") == 1
        ),
        timeout=10,
        message="worker down, its delivery unacked",
    )
    age = scrape.value("celery_broker_unacked_oldest_age_seconds")
    exporter.wait_for(
        lambda s: s.value("celery_broker_unacked_oldest_age_seconds") > age,
        message="the unacked delivery ages",
    )
    CeleryWorker(procs, env, queues=["default"], nodename="rescuer@test", concurrency=1).start()
    scrape = exporter.wait_for(
        lambda s: s.value("celery_task_succeeded_total", hostname="rescuer@test", **labels) == 1,
        timeout=40,
        message="the task redelivered after the visibility timeout and run",
    )
    # Counted once more as received (and started), by the worker that got it the second time.
    assert scrape.total("celery_task_received_total", **labels) == 2
    assert scrape.value("celery_task_received_total", hostname="rescuer@test", **labels) == 1
    assert scrape.total("celery_task_succeeded_total", **labels) == 1
    # The blind spots: lost with the victim, delivered again to the rescuer, once each.
    assert scrape.value("celery_task_lost_total", hostname="victim@test", **labels) == 1
    assert scrape.value("celery_task_redelivered_total", hostname="rescuer@test", **labels) == 1
    assert scrape.total("celery_task_redelivered_total") == 1
    exporter.wait_for(
        lambda s: s.value("celery_broker_unacked_messages") == 0, message="nothing left unacked"
    )


def test_restarted_exporter_counts_from_zero_and_names_tasks_in_flight(procs, redis_server) -> None:  # type: ignore[no-untyped-def]
    env = celery_env(redis_server)
    first = ExporterProcess(procs, redis_server.url(0)).start()
    CeleryWorker(procs, env, queues=["default"], nodename="steady@test", concurrency=1).start()
    app = client_app(redis_server)
    for i in range(3):
        app.send_task(DUMMY, (i,), queue="default")
    labels = {"name": DUMMY, "hostname": "steady@test", "queue_name": "default"}
    first.wait_for(lambda s: s.value("celery_task_succeeded_total", **labels) == 3)
    app.send_task(DUMMY, (9,), {"sleep": 3}, queue="default")
    first.wait_for(lambda s: s.value("celery_task_started_total", **labels) == 4)
    assert first.process is not None
    first.process.kill()

    second = ExporterProcess(procs, redis_server.url(0)).start()
    # The in-flight task's succeeded event carries no name or queue: the restarted exporter
    # knows them from the broker's unacked deliveries, read at start.
    scrape = second.wait_for(
        lambda s: s.value("celery_task_succeeded_total", **labels) == 1,
        timeout=20,
        message="the in-flight task counted with its labels",
    )
    assert scrape.total("celery_task_sent_total", name=DUMMY) == 0  # counters start from 0
    assert scrape.total("celery_task_succeeded_total", name="unknown") == 0
    for i in range(2):
        app.send_task(DUMMY, (i,), queue="default")
    scrape = second.wait_for(
        lambda s: s.value("celery_task_succeeded_total", **labels) == 3,
        message="new tasks on top, nothing double counted",
    )
    assert scrape.value("celery_task_received_total", **labels) == 2
    assert scrape.total("celery_task_sent_total", name=DUMMY) == 2


def test_event_flood_beyond_capacity_is_reported_and_counted_never_silent(
    procs, redis_server
) -> None:  # type: ignore[no-untyped-def]
    exporter = ExporterProcess(
        procs, redis_server.url(0), args=["--max-backlog-bytes", str(1024 * 1024)]
    ).start()
    client = redis_server.client()
    # The subscriber by its subscription count: its last command may be a keepalive PING.
    subscriber = next(c for c in client.client_list() if c.get("psub") == "1")
    total = 200_000
    payloads = [heartbeat_envelope(i) for i in range(total)]
    pipe = client.pipeline(transaction=False)
    receivers = 0
    for start in range(0, total, 20_000):
        for payload in payloads[start : start + 20_000]:
            pipe.publish("/0.celeryev/worker.heartbeat", payload)
        receivers += sum(pipe.execute())
    assert receivers == total  # Redis delivered every message: the subscriber was never cut off

    def accounted(s) -> bool:  # type: ignore[no-untyped-def]
        counted = s.value("celery_exporter_events_total", type="worker-heartbeat") or 0
        return counted + s.value("celery_exporter_events_dropped_total") == total

    scrape = exporter.wait_for(accounted, timeout=60, message="every message counted or dropped")
    assert scrape.value("celery_exporter_events_dropped_total") > 0  # the flood passed the cap
    log = exporter.log_text()
    assert "event backlog over its cap" in log and "falling behind" in log
    assert "event subscription lost" not in log
    same = [c for c in client.client_list() if c.get("psub") == "1"]
    assert [c["id"] for c in same] == [subscriber["id"]]


def test_distinct_ids_hosts_and_names_stay_within_the_caps(procs, redis_server) -> None:  # type: ignore[no-untyped-def]
    caps = {"--max-tracked-tasks": 1000, "--max-task-names": 20, "--max-hostnames": 10}
    exporter = ExporterProcess(
        procs, redis_server.url(0), args=[str(x) for kv in caps.items() for x in kv]
    ).start()
    client = redis_server.client()
    total = 100_000
    pipe = client.pipeline(transaction=False)
    for i in range(total):
        task_id = str(uuid.uuid4())
        events = [
            {
                "type": "task-received",
                "hostname": f"w{i}@host-{i}",
                "timestamp": time.time(),
                "uuid": task_id,
                "name": f"task.n{i}",
            },
            {
                "type": "task-succeeded",
                "hostname": f"w{i}@host-{i}",
                "timestamp": time.time(),
                "uuid": task_id,
                "runtime": 0.1,
            },
        ]
        pipe.publish(
            "/0.celeryev/task.multi",
            orjson.dumps(
                {
                    "body": base64.b64encode(orjson.dumps(events)).decode(),
                    "content-type": "application/json",
                    "properties": {"body_encoding": "base64"},
                }
            ),
        )
        if i % 10_000 == 9_999:
            pipe.execute()
    pipe.execute()
    scrape = exporter.wait_for(
        lambda s: s.total("celery_task_succeeded_total") == total,
        timeout=120,
        message="all events applied",
    )
    names = {dict(k)["name"] for k in scrape.series("celery_task_succeeded_total")}
    hosts = {dict(k)["hostname"] for k in scrape.series("celery_task_succeeded_total")}
    assert len(names - {"other"}) == 20 and "other" in names
    assert len(hosts - {"other"}) == 10 and "other" in hosts
    # Folds are counted per event: every event past the cap on that label.
    # Only task-received names the task (task-succeeded finds it in the index): one fold per
    # task past the cap; both events name the host: two.
    assert scrape.value("celery_exporter_label_overflow_total", label="name") == total - 20
    assert scrape.value("celery_exporter_label_overflow_total", label="hostname") == 2 * (
        total - 10
    )
    assert scrape.value("celery_exporter_tracked_tasks") <= 1000
    series = sum(len(v) for v in scrape.samples.values())
    assert series < 5_000, series  # bounded by the caps, not by 100k distinct values

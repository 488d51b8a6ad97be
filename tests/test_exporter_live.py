"""The exporter against a real Redis and real workers: names, liveness, restarts, bad input."""

from __future__ import annotations

import base64
import json
import time
import uuid
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.celery_client import client_app
from tests.support.exporter import ExporterProcess, publish_corpus
from tests.support.procs import CeleryWorker, celery_env, wait_until

CORPUS = [json.loads(line) for line in (Path(__file__).parent / "corpus" /
          "celery-5.7-events.jsonl").read_text().splitlines()]  # fmt: skip

# The peer exporter's (danihodovic/celery-exporter) metrics: name -> (type, labels). Existing
# dashboards (Grafana 17508/17509) and the celery-mixin alerts query exactly these.
PEER_CONTRACT = {
    "celery_task_sent_total": ("counter", {"name", "hostname", "queue_name"}),
    "celery_task_received_total": ("counter", {"name", "hostname", "queue_name"}),
    "celery_task_started_total": ("counter", {"name", "hostname", "queue_name"}),
    "celery_task_succeeded_total": ("counter", {"name", "hostname", "queue_name"}),
    "celery_task_failed_total": ("counter", {"name", "hostname", "queue_name", "exception"}),
    "celery_task_rejected_total": ("counter", {"name", "hostname", "queue_name"}),
    "celery_task_revoked_total": ("counter", {"name", "hostname", "queue_name"}),
    "celery_task_retried_total": ("counter", {"name", "hostname", "queue_name"}),
    "celery_task_runtime_bucket": ("histogram", {"name", "hostname", "queue_name", "le"}),
    "celery_task_runtime_count": ("histogram", {"name", "hostname", "queue_name"}),
    "celery_task_runtime_sum": ("histogram", {"name", "hostname", "queue_name"}),
    "celery_worker_up": ("gauge", {"hostname"}),
    "celery_worker_tasks_active": ("gauge", {"hostname"}),
    "celery_queue_length": ("gauge", {"queue_name"}),
    "celery_active_consumer_count": ("gauge", {"queue_name"}),
    "celery_active_worker_count": ("gauge", {"queue_name"}),
    "celery_active_process_count": ("gauge", {"queue_name"}),
}
FAMILY = {"histogram": "celery_task_runtime"}


def test_every_peer_metric_is_present_with_its_labels_and_type(procs, redis_server) -> None:  # type: ignore[no-untyped-def]
    env = celery_env(redis_server)
    exporter = ExporterProcess(
        procs, redis_server.url(0), args=["--inspect-interval", "1", "--queues", "celery"]
    ).start()
    CeleryWorker(procs, env, queues=["default"], nodename="compat@test").start()
    publish_corpus(redis_server.client(), CORPUS)
    scrape = exporter.wait_for(
        lambda s: (
            s.value("celery_active_worker_count", queue_name="default") == 1
            and s.total("celery_task_failed_total") == 2
        ),
        message="corpus events and an inspect result",
    )
    for name, (kind, labels) in PEER_CONTRACT.items():
        series = scrape.series(name)
        assert series, f"{name} is missing"
        for label_set in series:
            assert {k for k, _ in label_set} == labels, name
        family = FAMILY.get(kind, name.removesuffix("_total"))
        assert scrape.types[family] == kind, name


@pytest.mark.slow
def test_killed_worker_goes_to_zero_stays_visible_and_comes_back(procs, redis_server) -> None:  # type: ignore[no-untyped-def]
    env = celery_env(redis_server)
    exporter = ExporterProcess(procs, redis_server.url(0), args=["--worker-timeout", "3"]).start()
    worker = CeleryWorker(procs, env, queues=["default"], nodename="doomed@test").start()
    exporter.wait_for(lambda s: s.value("celery_worker_up", hostname="doomed@test") == 1)

    worker.kill()
    killed = time.monotonic()
    exporter.wait_for(lambda s: s.value("celery_worker_up", hostname="doomed@test") == 0,
                      timeout=10, message="worker_up 0 after SIGKILL")  # fmt: skip
    # 3 s timeout + up to one 2 s heartbeat interval + scrape polling.
    assert time.monotonic() - killed < 3 + 2 + 1.5
    # Still there (at 0) well after the timeout, so an alert on == 0 can fire.
    wait_until(lambda: time.monotonic() - killed > 8, timeout=10, interval=0.5)
    assert exporter.scrape().value("celery_worker_up", hostname="doomed@test") == 0

    CeleryWorker(procs, env, queues=["default"], nodename="doomed@test").start()
    exporter.wait_for(lambda s: s.value("celery_worker_up", hostname="doomed@test") == 1,
                      message="worker_up 1 after restart")  # fmt: skip


def test_graceful_shutdown_sets_zero_at_once(procs, redis_server) -> None:  # type: ignore[no-untyped-def]
    env = celery_env(redis_server)
    # A long timeout: only worker-offline can bring the gauge down within the wait below.
    exporter = ExporterProcess(procs, redis_server.url(0), args=["--worker-timeout", "600"]).start()
    worker = CeleryWorker(procs, env, queues=["default"], nodename="polite@test").start()
    exporter.wait_for(lambda s: s.value("celery_worker_up", hostname="polite@test") == 1)
    worker.stop()
    exporter.wait_for(lambda s: s.value("celery_worker_up", hostname="polite@test") == 0,
                      timeout=5, message="worker-offline -> 0")  # fmt: skip


@pytest.mark.slow
def test_broker_restart_resubscribes_and_never_resets_counters(procs, redis_server) -> None:  # type: ignore[no-untyped-def]
    env = celery_env(redis_server)
    exporter = ExporterProcess(procs, redis_server.url(0)).start()
    CeleryWorker(procs, env, queues=["default"], nodename="steady@test").start()
    app = client_app(redis_server)
    for i in range(5):
        app.send_task("workload.tasks.dummy_task", (i,), queue="default")

    def succeeded(s):  # type: ignore[no-untyped-def]
        return s.total("celery_task_succeeded_total", name="workload.tasks.dummy_task")

    exporter.wait_for(lambda s: succeeded(s) == 5, message="5 successes")
    redis_server.kill()
    exporter.wait_for(lambda s: s.value("celery_exporter_broker_up") == 0, timeout=10,
                      message="broker_up 0 while Redis is down")  # fmt: skip
    assert exporter.get("/readyz")[0] == 503
    assert succeeded(exporter.scrape()) == 5  # last known counts, still served

    redis_server.restart()
    exporter.wait_for(lambda s: s.value("celery_exporter_broker_up") == 1, timeout=20,
                      message="broker_up 1 after restart")  # fmt: skip
    app = client_app(redis_server)  # fresh connections to the new server
    wait_until(lambda: len(app.control.ping(timeout=0.5)) == 1, timeout=30,
               message="worker reconnected")  # fmt: skip
    for i in range(3):
        app.send_task("workload.tasks.dummy_task", (i,), queue="default")
    exporter.wait_for(lambda s: succeeded(s) == 8, timeout=30,
                      message="events after the restart counted on top")  # fmt: skip
    assert "Traceback" not in exporter.log_text()


def _envelope(body: bytes, content_type: str = "application/json") -> bytes:
    return orjson.dumps({"body": base64.b64encode(body).decode(), "content-type": content_type,
                         "content-encoding": "utf-8", "headers": {},
                         "properties": {"body_encoding": "base64"}})  # fmt: skip


# Each strategy yields a message the exporter must reject exactly once, whole.
junk_messages = st.one_of(
    st.binary(max_size=300).filter(lambda b: not b.strip().startswith(b"{")),
    st.text(max_size=200).map(lambda t: _envelope(t.encode(), "application/x-python-serialize")),
    st.binary(max_size=200).map(lambda b: _envelope(b"\xff" + b)),  # body not JSON
    st.integers().map(
        lambda n: orjson.dumps(
            {
                "body": "%%%",
                "content-type": "application/json",
                "properties": {"body_encoding": "base64"},
            }
        )
    ),
    st.just(b"x" * (9 * 1024 * 1024)),  # oversized
)
# Events with a wrong field in a valid envelope: each event is rejected on its own.
bad_events = st.fixed_dictionaries({
    "type": st.sampled_from(["task-started", "task-succeeded", "worker-heartbeat"]),
    "hostname": st.one_of(st.integers(-(2**63), 2**63 - 1), st.none(), st.just("")),
    "timestamp": st.floats(allow_nan=False, allow_infinity=False),
    "uuid": st.uuids().map(str),
})  # fmt: skip


def test_malformed_envelopes_are_counted_and_valid_neighbours_all_counted(
    procs, redis_server
) -> None:  # type: ignore[no-untyped-def]
    exporter = ExporterProcess(procs, redis_server.url(0)).start()
    client = redis_server.client()
    totals = {"rejected": 0, "valid": 0}

    def valid_heartbeat() -> bytes:
        event = {"type": "worker-heartbeat", "hostname": "fuzz@test", "timestamp": time.time(),
                 "freq": 2.0, "active": 0, "processed": totals["valid"]}  # fmt: skip
        return _envelope(orjson.dumps(event))

    @settings(max_examples=15, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(junk=st.lists(junk_messages, max_size=6), events=st.lists(bad_events, max_size=4))
    def publish_and_check(junk: list[bytes], events: list[dict]) -> None:
        for payload in junk:
            client.publish("/0.celeryev/task.multi", payload)
            client.publish("/0.celeryev/worker.heartbeat", valid_heartbeat())
            totals["valid"] += 1
        if events:
            client.publish("/0.celeryev/task.multi", _envelope(orjson.dumps(events)))
        client.publish("/0.celeryev/worker.heartbeat", valid_heartbeat())
        totals["valid"] += 1
        totals["rejected"] += len(junk) + len(events)
        exporter.wait_for(
            lambda s: (
                s.total("celery_exporter_events_rejected_total") == totals["rejected"]
                and s.value("celery_exporter_events_total", type="worker-heartbeat")
                == totals["valid"]
            ),
            timeout=10,
            message=f"rejected == {totals['rejected']} and valid == {totals['valid']}",
        )

    publish_and_check()
    assert exporter.process is not None and exporter.process.alive()
    assert "Traceback" not in exporter.log_text()


def test_task_index_stays_at_its_cap_with_ten_times_more_tasks(procs, redis_server) -> None:  # type: ignore[no-untyped-def]
    cap = 1000
    exporter = ExporterProcess(
        procs, redis_server.url(0), args=["--max-tracked-tasks", str(cap)]
    ).start()
    pipe = redis_server.client().pipeline(transaction=False)
    for _ in range(10 * cap):
        event = {"type": "task-sent", "hostname": "gen1@web", "timestamp": time.time(),
                 "uuid": str(uuid.uuid4()), "name": "bounded", "queue": "q"}  # fmt: skip
        pipe.publish("/0.celeryev/task.sent", _envelope(orjson.dumps(event)))
    pipe.execute()
    scrape = exporter.wait_for(
        lambda s: s.value("celery_task_sent_total", name="bounded", hostname="web",
                          queue_name="q") == 10 * cap,
        message="all task-sent events counted",
    )  # fmt: skip
    assert scrape.value("celery_exporter_tracked_tasks") == cap
    assert scrape.value("celery_exporter_tracked_tasks_evicted_total") == 9 * cap


def test_worker_without_task_events_is_flagged_and_enable_events_fixes_it(
    procs, redis_server
) -> None:  # type: ignore[no-untyped-def]
    env = celery_env(redis_server, WORKLOAD_TASK_EVENTS="false")  # the workload turns them on
    node = "quiet@test"
    CeleryWorker(procs, env, queues=["default"], nodename=node, events=False).start()
    first = ExporterProcess(procs, redis_server.url(0)).start()
    app = client_app(redis_server)
    first.wait_for(lambda s: s.value("celery_worker_tasks_processed", hostname=node) == 0,
                   message="a first heartbeat")  # fmt: skip
    app.send_task("workload.tasks.dummy_task", (1,), queue="default")
    first.wait_for(lambda s: s.value("celery_worker_sends_task_events", hostname=node) == 0,
                   timeout=15, message="a worker without -E flagged")  # fmt: skip
    status = json.loads(first.get("/api/status")[1])
    assert [w["sends_task_events"] for w in status["workers"]] == [False]
    assert first.process is not None
    first.process.stop()

    second = ExporterProcess(procs, redis_server.url(0), args=["--enable-events"]).start()
    labels = {"name": "workload.tasks.dummy_task", "hostname": node, "queue_name": "default"}

    def counted(s) -> bool:  # type: ignore[no-untyped-def]
        # enable_events is a broadcast: tasks sent before the worker handled it stay silent.
        app.send_task("workload.tasks.dummy_task", (2,), queue="default")
        return (s.value("celery_task_succeeded_total", **labels) or 0) >= 1

    second.wait_for(counted, timeout=30, message="task events after enable_events")
    second.wait_for(
        lambda s: s.value("celery_worker_sends_task_events", hostname=node) == 1,
        message="the worker no longer flagged",
    )

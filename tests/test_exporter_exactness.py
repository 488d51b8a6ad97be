"""Exactness: real workers run a known mix; every counter and gauge equals the known truth.

The mix: successes, failures with two exception classes, a retry, a revoke, a reject and a
batch at three priority levels, on two queues, plus the dead letters the two permanent
failures produce. Truth is derived from the mix, not observed.
"""

from __future__ import annotations

import socket
import uuid
from collections import Counter

import pytest

from tests.support.celery_client import client_app
from tests.support.exporter import ExporterProcess, Scrape
from tests.support.procs import CeleryWorker, celery_env, wait_until

W = "exact@test"
DUMMY = "workload.tasks.dummy_task"
REPORT = "workload.tasks.generate_report"
DEBIT = "workload.tasks.debit_account"
REJECT = "tests.reject_me"
PARK = "workload.dlq.park"
TASK_COUNTERS = (
    "sent",
    "received",
    "started",
    "succeeded",
    "rejected",
    "revoked",
    "retried",
    "processed",
)


def series(scrape: Scrape, name: str) -> dict[tuple[str, ...], float]:
    """``name``'s series keyed by (name, hostname, queue_name[, exception])."""
    order = ("name", "hostname", "queue_name", "exception")
    return {
        tuple(dict(labels)[k] for k in order if k in dict(labels)): value
        for labels, value in scrape.series(name).items()
    }


def expected_truth(producer: str) -> dict[str, dict[tuple[str, ...], float]]:
    """What the mix sent below must produce, label set by label set."""
    dummy, report = (DUMMY, W, "default"), (REPORT, W, "cpu")
    debit, reject = (DEBIT, W, "default"), (REJECT, W, "default")
    worker_sets = (dummy, report, debit, reject)

    def per_set(**values: int) -> dict[tuple[str, ...], float]:
        table = dict.fromkeys(worker_sets, 0)  # every known label set appears, at 0
        names = {"dummy": dummy, "report": report, "debit": debit, "reject": reject}
        table.update({names[k]: v for k, v in values.items()})
        return table

    truth = {
        "celery_task_sent_total": {
            **per_set(),  # worker label sets appear at 0 here too, as the peer serves them
            (DUMMY, producer, "default"): 5 + 9 + 1,  # successes, priority batch, revoked
            (REPORT, producer, "cpu"): 2 + 2 + 1,  # two ok, one retried (sent twice), one bad
            (DEBIT, producer, "default"): 1,
            (REJECT, producer, "default"): 1,
            (PARK, producer, "dead_letter"): 2,  # one dead letter per permanent failure
        },
        "celery_task_received_total": per_set(dummy=14, report=5, debit=1, reject=1),
        "celery_task_started_total": per_set(dummy=14, report=5, debit=1, reject=1),
        "celery_task_succeeded_total": per_set(dummy=14, report=3),
        "celery_task_retried_total": per_set(report=1),
        "celery_task_rejected_total": per_set(reject=1),
        "celery_task_revoked_total": per_set(dummy=1),
        "celery_task_processed_total": per_set(dummy=14, report=4, debit=1, reject=1),
        # Nothing is lost or redelivered (the retry is a new attempt, not a redelivery).
        "celery_task_lost_total": per_set(),
        "celery_task_redelivered_total": per_set(),
        "celery_task_failed_total": {
            **{(*s, ""): 0 for s in worker_sets},
            (*report, "ReportInputError"): 1,
            (*debit, "InvalidDebitRequest"): 1,
            # Celery 5.7 reports Reject(requeue=False) as task-failed, then task-rejected.
            (*reject, "Reject"): 1,
        },
        # Runtime: every finished task with a known start; queue wait: every start.
        "celery_task_runtime_count": {dummy: 14, report: 4, debit: 1, reject: 1},
        "celery_task_queue_wait_time_count": {dummy: 14, report: 5, debit: 1, reject: 1},
    }
    return truth


def send_mix(redis_server) -> None:  # type: ignore[no-untyped-def]
    app = client_app(redis_server)
    revoked_id = str(uuid.uuid4())
    replies = app.control.revoke(revoked_id, reply=True, timeout=5)
    assert replies, "the worker did not acknowledge the revoke"
    for i in range(5):
        app.send_task(DUMMY, (i,), queue="default")
    for priority in (0, 4, 9):  # three of kombu's priority sub-lists: base, \x06\x163, \x06\x169
        for i in range(3):
            app.send_task(DUMMY, (i,), queue="default", priority=priority)
    app.send_task(DUMMY, (99,), queue="default", task_id=revoked_id)
    for _ in range(2):
        app.send_task(REPORT, (1, {"size": 5}), queue="cpu")
    app.send_task(REPORT, (2, {"size": 5, "fail_times": 1}), queue="cpu")
    app.send_task(REPORT, (3, {"size": "many"}), queue="cpu")  # ReportInputError
    app.send_task(DEBIT, (1, -5, "key-1"), queue="default")  # InvalidDebitRequest
    app.send_task(REJECT, (), queue="default")


@pytest.mark.slow
def test_every_counter_and_gauge_equals_the_known_truth(procs, redis_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = celery_env(
        redis_server,
        WORKLOAD_RETRY_BASE="0.05",
        WORKLOAD_RETRY_JITTER="false",
        WORKLOAD_REPORT_WORK_ROUNDS="1",
        WORKLOAD_REPORT_DIR=str(tmp_path / "reports"),
    )
    exporter = ExporterProcess(
        procs, redis_server.url(0), args=["--queues", "cpu,default,dead_letter"]
    ).start()
    CeleryWorker(
        procs,
        env,
        queues=["cpu", "default"],
        nodename=W,
        concurrency=2,
        extra_args=["-I", "tests.support.reject_task"],
    ).start()
    send_mix(redis_server)

    truth = expected_truth(socket.gethostname())
    processed_by_worker = 14 + 5 + 1 + 1  # every start; the revoked task never started

    def matches(scrape: Scrape) -> bool:
        return all(series(scrape, name) == want for name, want in truth.items()) and (
            scrape.value("celery_worker_tasks_processed", hostname=W) == processed_by_worker
        )

    try:
        scrape = exporter.wait_for(matches, timeout=60, message="counters equal to the truth")
    except AssertionError:
        scrape = exporter.scrape()
        for name, want in truth.items():  # show the first difference precisely
            assert series(scrape, name) == want, name
        raise

    assert scrape.value("celery_worker_up", hostname=W) == 1
    assert scrape.value("celery_worker_tasks_active", hostname=W) == 0
    assert scrape.value("celery_queue_length", queue_name="cpu") == 0
    assert scrape.value("celery_queue_length", queue_name="default") == 0
    assert scrape.value("celery_queue_length", queue_name="dead_letter") == 2
    assert scrape.value("celery_broker_unacked_messages") == 0
    assert scrape.value("celery_exporter_broker_up") == 1
    assert scrape.value("celery_exporter_tracked_tasks") == 2  # the two unconsumed dead letters
    assert scrape.series("celery_task_oldest_running_age_seconds") == {}  # nothing runs
    assert scrape.value("celery_queue_scheduled_messages", queue_name="cpu") == 0
    assert scrape.value("celery_worker_state", hostname=W, state="online") == 1
    assert scrape.total("celery_worker_state", hostname=W) == 1  # one-hot
    assert scrape.total("celery_exporter_events_rejected_total") == 0
    events = {dict(k)["type"]: v for k, v in scrape.series("celery_exporter_events_total").items()}
    sent = sum(truth["celery_task_sent_total"].values())
    assert Counter({t: n for t, n in events.items() if t.startswith("task-")}) == Counter(
        {
            "task-sent": sent,
            "task-received": 21,
            "task-started": 21,
            "task-succeeded": 17,
            "task-failed": 3,
            "task-retried": 1,
            "task-rejected": 1,
            "task-revoked": 1,
        }
    )
    # Buckets are cumulative and end at the count.
    for labels, count in scrape.series("celery_task_runtime_count").items():
        inf = scrape.value("celery_task_runtime_bucket", **dict(labels), le="+Inf")
        assert inf == count

    # Nothing is counted twice: after more heartbeats the figures are the same.
    before = {name: series(scrape, name) for name in truth}
    wait_until(
        lambda: (
            exporter.scrape().value("celery_worker_last_heartbeat_timestamp_seconds", hostname=W)
            > scrape.value("celery_worker_last_heartbeat_timestamp_seconds", hostname=W)
        ),
        timeout=10,
        message="a later heartbeat",
    )
    later = exporter.scrape()
    assert {name: series(later, name) for name in truth} == before

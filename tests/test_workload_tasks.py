"""The six tasks on real Redis and real workers: happy paths, retries and permanent failures.

One module-scoped stack (Redis, a worker on every task queue, a dead-letter consumer, a local
HTTP server and an SMTP sink) serves every test here; each test uses its own ids, accounts
and URL paths, so they do not interfere.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import pickle
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from PIL import Image

from tests.support.procs import CeleryWorker, ProcessTracker, RedisServer, wait_until
from tests.support.workload_servers import LocalHttpServer, Reply, SmtpSink, png_bytes
from tests.support.workload_stack import (
    base_env,
    client_app,
    dlq_json,
    json_log_lines,
    outcome,
)

REPORT = "workload.tasks.generate_report"
EMAIL = "workload.tasks.send_welcome_email"
IMAGE = "workload.tasks.process_image"
DEBIT = "workload.tasks.debit_account"
FETCH = "workload.tasks.fetch_data"
DUMMY = "workload.tasks.dummy_task"
MAX_RETRIES = 2  # every task's max retries in this stack (fast tests)


@dataclass
class Stack:
    env: dict[str, str]
    redis: RedisServer
    worker: CeleryWorker
    dlq_worker: CeleryWorker
    client: Celery
    http: LocalHttpServer
    smtp: SmtpSink
    tmp: Path

    def send(self, name: str, *args: Any, **options: Any) -> Any:
        return self.client.send_task(name, args=list(args), **options)

    def data(self) -> redis.Redis:
        return self.redis.client(decode_responses=True)

    def task_log(self, task_id: str) -> list[dict[str, Any]]:
        assert self.worker.process is not None
        return [e for e in json_log_lines(self.worker.process) if e.get("task_id") == task_id]


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("workload-tasks")
    tracker = ProcessTracker(tmp / "logs")
    http = LocalHttpServer().start()
    smtp = SmtpSink().start()
    failures_before = request.session.testsfailed
    try:
        server = RedisServer(tracker, tmp / "redis").start()
        env = base_env(
            server,
            tmp,
            WORKLOAD_SMTP_HOST="127.0.0.1",
            WORKLOAD_SMTP_PORT=str(smtp.port),
            WORKLOAD_EMAIL_RATE_LIMIT="4/s",
            WORKLOAD_REPORT_MAX_RETRIES=str(MAX_RETRIES),
            WORKLOAD_EMAIL_MAX_RETRIES=str(MAX_RETRIES),
            WORKLOAD_IMAGE_MAX_RETRIES=str(MAX_RETRIES),
            WORKLOAD_FETCH_MAX_RETRIES=str(MAX_RETRIES),
            WORKLOAD_DEBIT_HOLD_SECONDS="0.3",
            WORKLOAD_LOCK_RETRY_SECONDS="0.1",
            WORKLOAD_HTTP_MAX_BYTES="300000",
        )
        # As deployed: io on a thread pool, the rest on prefork, a separate dead-letter consumer.
        worker = CeleryWorker(tracker, env, queues=["cpu", "email", "default"], concurrency=3)
        io_worker = CeleryWorker(tracker, env, queues=["io"], concurrency=4, pool="threads")
        dlq_worker = CeleryWorker(tracker, env, queues=["dead_letter"], concurrency=1)
        for each in (worker, io_worker, dlq_worker):
            each.start(wait=False)
        for each in (worker, io_worker, dlq_worker):
            each.wait_ready()
        yield Stack(env, server, worker, dlq_worker, client_app(env), http, smtp, tmp)
    finally:
        if request.session.testsfailed > failures_before:
            print(tracker.logs())
        tracker.stop_all()
        http.stop()
        smtp.stop()


def letter(stack: Stack, task_id: str) -> dict[str, Any]:
    """The parked dead letter of ``task_id`` (waits for the consumer to park it)."""
    raw = wait_until(
        lambda: stack.data().hget("workload:dlq:letters", task_id),
        timeout=20,
        message=f"dead letter {task_id}",
    )
    return json.loads(raw)


def assert_failed(stack: Stack, result: Any, exception: str) -> dict[str, Any]:
    state, value = outcome(result)
    assert state == "FAILURE", value
    assert type(value).__name__ == exception, repr(value)
    parked = letter(stack, result.id)
    assert parked["exception"] == exception
    return parked


# --- generate_report ------------------------------------------------------------------------


def test_report_writes_a_file_whose_size_follows_the_input(stack: Stack) -> None:
    small = stack.send(REPORT, 11, {"size": 50})
    large = stack.send(REPORT, 11, {"size": 2000, "title": "Quarterly"})
    small_state, small_value = outcome(small)
    large_state, large_value = outcome(large)
    assert (small_state, large_state) == ("SUCCESS", "SUCCESS")
    report = Path(large_value["path"])
    lines = report.read_text().splitlines()
    assert lines[0] == "# Quarterly"
    assert sum(1 for line in lines if line[:1].isdigit()) == 2000
    assert large_value["stats"]["count"] == 2000
    assert large_value["bytes"] == report.stat().st_size > 10 * small_value["bytes"]


def test_report_from_given_rows_computes_exact_statistics(stack: Stack) -> None:
    state, value = outcome(stack.send(REPORT, 12, {"rows": [4, 1, 3, 2]}))
    assert state == "SUCCESS", value
    stats = value["stats"]
    assert (stats["count"], stats["sum"], stats["min"], stats["max"]) == (4, 10, 1, 4)
    assert stats["mean"] == 2.5


def test_report_transient_failures_are_retried_then_succeed(stack: Stack) -> None:
    result = stack.send(REPORT, 13, {"size": 10, "fail_times": 2})
    state, value = outcome(result)
    assert state == "SUCCESS", value
    retries = [e for e in stack.task_log(result.id) if e["event"] == "task retry"]
    assert len(retries) == 2
    assert "ReportTransientError" in retries[0]["reason"]


def test_report_exhausting_retries_is_dead_lettered(stack: Stack) -> None:
    result = stack.send(REPORT, 14, {"size": 10, "fail_times": 50})
    parked = assert_failed(stack, result, "ReportTransientError")
    assert parked["retries"] == MAX_RETRIES
    assert parked["queue"] == "cpu"


def test_report_bad_data_fails_permanently_without_retry(stack: Stack) -> None:
    result = stack.send(REPORT, 15, {"rows": [1, "two"]})
    parked = assert_failed(stack, result, "ReportInputError")
    assert parked["retries"] == 0
    assert parked["args"] == [15, {"rows": [1, "two"]}]
    assert parked["name"] == REPORT
    assert "ReportInputError" in parked["traceback"]


# --- send_welcome_email ---------------------------------------------------------------------


def test_email_arrives_at_the_smtp_server(stack: Stack) -> None:
    state, value = outcome(stack.send(EMAIL, "alice@example.com"))
    assert state == "SUCCESS", value
    received = stack.smtp.handler.to("alice@example.com")
    assert len(received) == 1
    assert received[0].subject == "Welcome aboard"
    assert value["to"] == "alice@example.com"


def test_email_refused_with_5xx_fails_permanently(stack: Stack) -> None:
    result = stack.send(EMAIL, "reject-me@example.com")
    parked = assert_failed(stack, result, "SmtpPermanentError")
    assert parked["retries"] == 0
    assert stack.smtp.handler.attempts("reject-me@example.com") == 1


def test_email_invalid_address_fails_before_any_smtp(stack: Stack) -> None:
    assert_failed(stack, stack.send(EMAIL, "not-an-address"), "InvalidEmailAddress")


def test_email_4xx_is_retried_and_then_delivered(stack: Stack) -> None:
    state, value = outcome(stack.send(EMAIL, "flaky@example.com"))
    assert state == "SUCCESS", value
    assert stack.smtp.handler.attempts("flaky@example.com") == 2
    assert len(stack.smtp.handler.to("flaky@example.com")) == 1


def test_email_4xx_forever_exhausts_retries(stack: Stack) -> None:
    parked = assert_failed(stack, stack.send(EMAIL, "busy@example.com"), "SmtpTransientError")
    assert stack.smtp.handler.attempts("busy@example.com") == MAX_RETRIES + 1
    assert parked["queue"] == "email"


def test_email_rate_limit_spaces_the_sends(stack: Stack) -> None:
    # 4/s in this stack: one token every 0.25 s, whatever the worker's concurrency.
    addresses = [f"rate-{n}@example.com" for n in range(4)]
    results = [stack.send(EMAIL, address) for address in addresses]
    assert all(outcome(r)[0] == "SUCCESS" for r in results)
    times = sorted(stack.smtp.handler.to(a)[0].at for a in addresses)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # Arrival times carry some SMTP jitter; unlimited, all four arrive within ~0.1 s.
    assert min(gaps) >= 0.12, gaps
    assert times[-1] - times[0] >= 0.6, gaps


# --- process_image --------------------------------------------------------------------------


def test_image_becomes_a_real_thumbnail(stack: Stack) -> None:
    url = stack.http.route("/photo.png", Reply(200, png_bytes(640, 480), "image/png"))
    state, value = outcome(stack.send(IMAGE, url))
    assert state == "SUCCESS", value
    with Image.open(value["path"]) as thumb:
        assert thumb.size == (128, 96)
        assert thumb.format == "PNG"
    assert value["source_size"] == [640, 480]


def test_image_5xx_then_ok_is_retried(stack: Stack) -> None:
    url = stack.http.route("/flaky.png", Reply(503), Reply(200, png_bytes(64, 64), "image/png"))
    state, value = outcome(stack.send(IMAGE, url))
    assert state == "SUCCESS", value
    assert stack.http.hit_count("/flaky.png") == 2


def test_image_server_down_exhausts_retries(stack: Stack) -> None:
    url = stack.http.route("/always-503.png", Reply(503))
    assert_failed(stack, stack.send(IMAGE, url), "ImageTransientError")
    assert stack.http.hit_count("/always-503.png") == MAX_RETRIES + 1


@pytest.mark.parametrize(
    ("path", "reply", "exception"),
    [
        ("/missing.png", Reply(404, b"nope", "text/plain"), "ImageDownloadError"),
        ("/text.png", Reply(200, b"this is not an image", "image/png"), "InvalidImage"),
        ("/huge.png", Reply(200, b"\0" * 400_000, "image/png"), "ImageTooLarge"),
    ],
)
def test_image_permanent_failures(stack: Stack, path: str, reply: Reply, exception: str) -> None:
    url = stack.http.route(path, reply)
    parked = assert_failed(stack, stack.send(IMAGE, url), exception)
    assert stack.http.hit_count(path) == 1  # never retried
    assert parked["queue"] == "io"


def test_image_url_outside_the_allow_list_is_never_fetched(stack: Stack) -> None:
    assert_failed(stack, stack.send(IMAGE, "http://example.com/a.png"), "UrlNotAllowed")
    assert_failed(stack, stack.send(IMAGE, "file:///etc/passwd"), "UrlNotAllowed")


# --- fetch_data -----------------------------------------------------------------------------


def test_fetch_returns_status_digest_and_json(stack: Stack) -> None:
    body = json.dumps({"items": [1, 2, 3]}).encode()
    url = stack.http.route("/data.json", Reply(200, body, "application/json"))
    state, value = outcome(stack.send(FETCH, url))
    assert state == "SUCCESS", value
    assert value["json"] == {"items": [1, 2, 3]}
    assert value["sha256"] == hashlib.sha256(body).hexdigest()
    assert value["status"] == 200


def test_fetch_4xx_fails_permanently(stack: Stack) -> None:
    url = stack.http.route("/gone", Reply(410))
    assert_failed(stack, stack.send(FETCH, url), "FetchHttpError")
    assert stack.http.hit_count("/gone") == 1


def test_fetch_5xx_is_autoretried_until_exhausted(stack: Stack) -> None:
    url = stack.http.route("/broken", Reply(500))
    parked = assert_failed(stack, stack.send(FETCH, url), "FetchTransientError")
    assert stack.http.hit_count("/broken") == MAX_RETRIES + 1
    assert parked["retries"] == MAX_RETRIES


def test_fetch_redirect_to_a_disallowed_host_is_refused(stack: Stack) -> None:
    url = stack.http.route("/jump", Reply(302, headers={"Location": "http://169.254.169.254/"}))
    assert_failed(stack, stack.send(FETCH, url), "UrlNotAllowed")


def test_fetch_too_large_is_refused(stack: Stack) -> None:
    url = stack.http.route("/big", Reply(200, b"x" * 400_000, "text/plain"))
    assert_failed(stack, stack.send(FETCH, url), "FetchTooLarge")


# --- debit_account --------------------------------------------------------------------------


def balance(stack: Stack, user: str) -> int:
    return int(stack.data().get(f"workload:account:{user}:balance"))


def test_two_concurrent_debits_leave_the_exact_balance(stack: Stack) -> None:
    stack.data().set("workload:account:acct-1:balance", 1000)
    first = stack.send(DEBIT, "acct-1", 300, "order-1")
    second = stack.send(DEBIT, "acct-1", 500, "order-2")
    assert outcome(first)[0] == "SUCCESS"
    assert outcome(second)[0] == "SUCCESS"
    assert balance(stack, "acct-1") == 200
    assert stack.data().llen("workload:account:acct-1:ledger") == 2
    # They really contended: one of them found the lock held and retried.
    retried = stack.task_log(first.id) + stack.task_log(second.id)
    assert any(e["event"] == "task retry" and "AccountLocked" in e["reason"] for e in retried)


def test_a_redelivered_debit_does_not_debit_twice(stack: Stack) -> None:
    stack.data().set("workload:account:acct-2:balance", 1000)
    first = stack.send(DEBIT, "acct-2", 250, "order-9")
    # The same debit again (same idempotency key), as a redelivery after a crash brings it.
    again = stack.send(DEBIT, "acct-2", 250, "order-9", task_id=first.id + "-again")
    state, value = outcome(first)
    assert state == "SUCCESS"
    state_again, value_again = outcome(again)
    assert state_again == "SUCCESS"
    assert sorted([value["duplicate"], value_again["duplicate"]]) == [False, True]
    assert balance(stack, "acct-2") == 750
    assert stack.data().llen("workload:account:acct-2:ledger") == 1


def test_insufficient_funds_fails_permanently_and_debits_nothing(stack: Stack) -> None:
    stack.data().set("workload:account:acct-3:balance", 100)
    assert_failed(stack, stack.send(DEBIT, "acct-3", 101, "big"), "InsufficientFunds")
    assert_failed(stack, stack.send(DEBIT, "acct-3", -5, "neg"), "InvalidDebitRequest")
    assert balance(stack, "acct-3") == 100


def test_a_lock_held_elsewhere_is_retried_and_never_stolen(stack: Stack) -> None:
    data = stack.data()
    data.set("workload:lock:account:acct-4", "someone-else", px=60_000)
    result = stack.send(DEBIT, "acct-4", 10, "k")
    wait_until(
        lambda: any(e["event"] == "task retry" for e in stack.task_log(result.id)),
        timeout=20,
        message="a retry on the held lock",
    )
    assert data.get("workload:lock:account:acct-4") == "someone-else"  # not deleted by us
    data.delete("workload:lock:account:acct-4")
    state, value = outcome(result)
    assert state == "SUCCESS", value
    assert value["balance_after"] == 10_000 - 10  # the opening balance


# --- dead-letter queue and the CLI ------------------------------------------------------------


def test_dead_letter_after_last_retry_then_requeue_runs_it(stack: Stack) -> None:
    body = json.dumps({"ok": True}).encode()
    # Fails for every attempt of the first run, succeeds when re-queued.
    replies = [Reply(500)] * (MAX_RETRIES + 1) + [Reply(200, body, "application/json")]
    url = stack.http.route("/recovering", *replies)
    result = stack.send(FETCH, url)
    parked = assert_failed(stack, result, "FetchTransientError")
    assert parked["queue"] == "default"
    assert parked["args"] == [url]

    listed = dlq_json(stack.env, "list")
    assert result.id in [entry["id"] for entry in listed["letters"]]
    shown = dlq_json(stack.env, "show", result.id)
    assert shown["traceback"] and shown["failed_at"] > 0

    requeued = dlq_json(stack.env, "requeue", result.id)
    assert requeued["requeued"] == [{"id": result.id, "name": FETCH, "queue": "default"}]
    # A fresh handle: the first one cached its final FAILURE.
    rerun = stack.client.AsyncResult(result.id)
    state, value = outcome(rerun)
    assert state == "SUCCESS", value
    assert value["json"] == {"ok": True}
    assert stack.http.hit_count("/recovering") == MAX_RETRIES + 2
    assert stack.data().hget("workload:dlq:letters", result.id) is None


# --- JSON only ------------------------------------------------------------------------------


class CreatesSentinel:
    """Unpickling this creates a file: proof that a pickle was deserialized."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (self.path, "w"))


def test_a_pickle_message_is_refused_and_never_executed(stack: Stack) -> None:
    sentinel = stack.tmp / "pickle-was-executed"
    # Control: this payload does create a file when unpickled.
    control = stack.tmp / "control"
    pickle.loads(pickle.dumps(CreatesSentinel(str(control))))
    assert control.exists()
    bad = stack.client.send_task(DUMMY, args=[CreatesSentinel(str(sentinel))], serializer="pickle")
    assert stack.worker.process is not None
    wait_until(
        lambda: "Refusing to deserialize" in stack.worker.process.log_text(),
        timeout=20,
        message="the worker to refuse the pickle message",
    )
    # The worker goes on with JSON work, and the pickle never ran.
    assert outcome(stack.send(DUMMY, 7))[1] == 7
    assert not sentinel.exists()
    assert bad.state == "PENDING"
    assert stack.redis.client().llen("default") == 0  # dropped, not left to poison the queue


# --- logs ---------------------------------------------------------------------------------------


def test_worker_logs_one_json_line_per_task_with_duration_and_exception(stack: Stack) -> None:
    ok = stack.send(DUMMY, 3)
    bad = stack.send(FETCH, "ftp://example.com/file")
    outcome(ok)
    outcome(bad)

    def finished(task_id: str) -> dict[str, Any]:
        lines = [e for e in stack.task_log(task_id) if e["event"] == "task finished"]
        return lines[0] if lines else {}

    line = wait_until(lambda: finished(ok.id), timeout=10, message="task finished line")
    assert line["task_name"] == DUMMY and line["state"] == "SUCCESS"
    assert isinstance(line["duration"], float) and line["level"] == "info"
    failed = wait_until(
        lambda: [e for e in stack.task_log(bad.id) if e["event"] == "task failed"],
        timeout=10,
        message="task failed line",
    )
    assert failed[0]["exception"] == "UrlNotAllowed"
    assert failed[0]["task_name"] == FETCH


# --- acks_late redelivery (own Redis and workers: this test kills one) ------------------------


def test_a_worker_killed_mid_task_has_the_task_redelivered(
    procs: ProcessTracker, redis_server: RedisServer, tmp_path: Path
) -> None:
    env = base_env(
        redis_server,
        tmp_path,
        WORKLOAD_VISIBILITY_TIMEOUT="2",
        WORKLOAD_UNACKED_RESTORE_INTERVAL="1",
        WORKLOAD_UNACKED_RESTORE_THROTTLE="1",
    )
    http = LocalHttpServer().start()
    try:
        gate = threading.Event()
        url = http.route("/slow", Reply(200, b"{}", "application/json", gate=gate), Reply(200))
        first = CeleryWorker(procs, env, queues=["default"], nodename="first@test").start()
        result = client_app(env).send_task(FETCH, args=[url])
        wait_until(lambda: http.hit_count("/slow") == 1, timeout=20, message="task mid-flight")
        first.kill()
        gate.set()
        broker = redis_server.client()
        assert broker.hlen("unacked") == 1  # held for acks_late, not lost
        assert result.state == "STARTED"
        CeleryWorker(procs, env, queues=["default"], nodename="second@test").start()
        state, value = outcome(result, timeout=30)
        assert state == "SUCCESS", value
        assert http.hit_count("/slow") == 2
        # The result is stored inside the task; the ack follows in the worker's main process.
        wait_until(lambda: broker.hlen("unacked") == 0, timeout=10, message="redelivery acked")
    finally:
        http.stop()


def test_dead_letters_wait_in_the_queue_until_a_consumer_parks_them(
    procs: ProcessTracker, redis_server: RedisServer, tmp_path: Path
) -> None:
    env = base_env(redis_server, tmp_path)
    CeleryWorker(procs, env, queues=["default"]).start()
    result = client_app(env).send_task(FETCH, args=["ftp://example.com/x"], kwargs={})
    assert outcome(result)[0] == "FAILURE"
    broker = redis_server.client()
    wait_until(lambda: broker.llen("dead_letter") == 1, timeout=10, message="letter queued")
    listed = dlq_json(env, "list")
    assert (listed["parked"], listed["waiting"]) == (0, 1)

    CeleryWorker(procs, env, queues=["dead_letter"], concurrency=1).start()

    def parked_once() -> dict[str, Any] | None:
        listed = dlq_json(env, "list")
        return listed if listed["parked"] == 1 else None

    listed = wait_until(parked_once, timeout=20, message="letter parked")
    assert listed["waiting"] == 0
    assert listed["letters"][0]["id"] == result.id
    assert listed["letters"][0]["exception"] == "UrlNotAllowed"

    purged = dlq_json(env, "purge", "--yes")
    assert purged["purged"] == 1
    assert dlq_json(env, "list")["parked"] == 0

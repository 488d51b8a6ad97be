"""Each fault alert of issue 13, caused for real and seen through the shipped rule (issue 12's
proof for CeleryWorkerDown among them).

One stack for the module: redis-server, the exporter, Prometheus (1 s scrapes, the rules
generated from alerts/*.py with the fast profile, a few thresholds lowered), Alertmanager
posting to a webhook here, and a real ``celery beat`` sending the workload's schedule at
second-scale intervals. Each test starts its own workers on queues of its own, so that the
alerts of one test carry labels no other test produces.

0. The rules Prometheus loaded are the committed ones with only numbers changed.
1. CeleryTaskLost: a prefork worker SIGKILLed while its task runs; the task is counted lost
   once and the alert names it.
2. CeleryTaskRunningTooLong: a task past the limit fires; short tasks beside it do not.
3. CeleryPeriodicTaskMissed: silent while beat sends; fires for both tasks once beat stops.
4. CeleryTaskRedelivered: the acks_late task of a SIGKILLed worker comes back after a short
   visibility_timeout to a second worker.
5. CeleryQueueConsumersSaturated and 6. CeleryQueueDrainTimeTooLong: a queue whose only
   slot is held by minute-long tasks while more arrive fires both (its drain time finite:
   consumed, too slowly); a queue with the same arrivals and two slots fires neither.
7. CeleryWorkerDown: of two workers stopped at the same moment, the one SIGTERMed (warm
   shutdown, worker-offline) never appears in the alert's expression, queried as committed,
   and never alerts; the SIGKILLed one does both.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from alerts.configs import EXPORTER_JOB
from alerts.settings import duration_seconds, fast, periodic_max_gaps, with_overrides
from tests.support.catalog import committed_alerts
from tests.support.exporter import ExporterProcess
from tests.support.procs import (
    PYTHON,
    CeleryWorker,
    ManagedProcess,
    ProcessTracker,
    RedisServer,
    module_processes,
    wait_until,
)
from tests.support.prom import Alertmanager, Prometheus, WebhookReceiver, alert_promise
from tests.support.workload_stack import base_env, client_app, settings_for
from workload.app import beat_schedule

pytestmark = [pytest.mark.e2e]

DUMMY = "workload.tasks.dummy_task"
SCRAPE_SECONDS = 1.0
WORKER_TIMEOUT = 4.0  # celery heartbeats every 2 s
# The exporter turns a worker lost at its next check (about a second) after the timeout,
# which counts from the last heartbeat (up to 2 s before the kill).
LOST_DETECTION = WORKER_TIMEOUT + 2.0 + 1.0
# The workload's beat schedule, shortened through the workload's own settings.
BEAT_ENV = {"WORKLOAD_BEAT_REFRESH_STATS_SECONDS": "2", "WORKLOAD_BEAT_PURGE_SECONDS": "3"}
# The redelivery test's workers: a visibility timeout longer than its task, and the unacked
# sweep every second instead of kombu's 100 s.
VISIBILITY_TIMEOUT = 6
REDELIVERY_ENV = {
    "WORKLOAD_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT),
    "WORKLOAD_UNACKED_RESTORE_INTERVAL": "1",
    "WORKLOAD_UNACKED_RESTORE_THROTTLE": "1",
}
REDELIVERED_TASK_SECONDS = 4.0  # < VISIBILITY_TIMEOUT: the second run is not restored again
# dummy_task is not in running_too_long_per_task: the default limit applies to it.
RUNNING_LIMIT = 5.0
LONG_TASK_SECONDS = 60.0  # dummy_task's longest sleep
QUEUES = ("lost", "redeliver", "long", "short", "busy", "steady", "down")
UNDER_TEST = (
    "CeleryTaskLost",
    "CeleryTaskRedelivered",
    "CeleryTaskRunningTooLong",
    "CeleryPeriodicTaskMissed",
    "CeleryQueueConsumersSaturated",
    "CeleryQueueDrainTimeTooLong",
    "CeleryWorkerDown",
)


def periodic_schedule(env: dict[str, str]) -> dict[str, float]:
    """Task name -> seconds between sends, as the workload's beat reads its settings."""
    entries = beat_schedule(settings_for(env)).values()
    return {str(entry["task"]): float(str(entry["schedule"])) for entry in entries}


SCHEDULE = periodic_schedule(BEAT_ENV)
SETTINGS = with_overrides(
    fast(),
    {"periodic_tasks": periodic_max_gaps(SCHEDULE), "running_too_long_seconds": RUNNING_LIMIT},
)


def promise(for_: str, detection: float) -> float:
    return alert_promise(SETTINGS, for_, detection, SCRAPE_SECONDS)


@dataclass
class Faults:
    tracker: ProcessTracker
    redis: RedisServer
    env: dict[str, str]
    client: Celery
    exporter: ExporterProcess
    prometheus: Prometheus
    webhook: WebhookReceiver
    beat: ManagedProcess
    since: float  # unix time the stack was up

    def worker(
        self,
        queues: list[str],
        node: str,
        pool: str = "threads",
        concurrency: int = 1,
        env: dict[str, str] | None = None,
    ) -> CeleryWorker:
        """A worker started (not yet ready: wait_ready) on ``queues``, named ``node@faults``."""
        env = {**self.env, **(env or {})}
        worker = CeleryWorker(self.tracker, env, queues, f"{node}@faults", concurrency, pool)
        return worker.start(wait=False)

    def seen(self, expr: str, message: str, timeout: float = 20.0) -> list[dict]:
        """Wait until Prometheus has scraped what makes ``expr`` return something."""
        return wait_until(
            lambda: self.prometheus.query(expr), timeout=timeout, interval=0.2, message=message
        )

    def value(self, expr: str) -> float | None:
        result = self.prometheus.query(expr)
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None


@pytest.fixture(scope="module")
def faults(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Faults]:
    tmp = tmp_path_factory.mktemp("faults")
    with module_processes(tmp / "logs", request) as tracker, WebhookReceiver() as webhook:
        yield _start(tracker, tmp, webhook)


def _start(tracker: ProcessTracker, tmp: Path, webhook: WebhookReceiver) -> Faults:
    redis = RedisServer(tracker, tmp / "redis").start()
    env = base_env(redis, tmp, WORKLOAD_STATE_DIR=str(tmp / "state"))
    beat = tracker.start(
        [PYTHON, "-m", "celery", "-A", "workload.app", "beat", "-l", "INFO"],
        "beat",
        env={**env, **BEAT_ENV},
    )
    exporter_args = [
        "--queues", ",".join(QUEUES),
        "--worker-timeout", str(WORKER_TIMEOUT),
        "--inspect-interval", "1",
        "--inspect-timeout", "1",
    ]  # fmt: skip
    exporter = ExporterProcess(tracker, redis.url(0), exporter_args).start()
    manager = Alertmanager(tracker, tmp / "alertmanager", webhook.url).start()
    targets = [f"127.0.0.1:{exporter.port}"]
    prometheus = Prometheus(tracker, tmp / "prometheus", targets, SETTINGS, manager.url).start()
    wait_until(prometheus.targets_up, timeout=20, message="exporter scraped")
    assert beat.alive(), beat.log_text()[-3000:]
    client = client_app(env)
    return Faults(tracker, redis, env, client, exporter, prometheus, webhook, beat, time.time())


@pytest.fixture
def start_worker(faults: Faults) -> Iterator[Callable[..., CeleryWorker]]:
    """``Faults.worker`` for one test: what it started is SIGKILLed when it ends, so that no
    task of one test is still running (and held unacked) during the next."""
    started: list[CeleryWorker] = []

    def start(queues: list[str], node: str, **kwargs: Any) -> CeleryWorker:
        started.append(faults.worker(queues, node, **kwargs))
        return started[-1]

    yield start
    for worker in started:
        if worker.process is not None and worker.process.alive():
            worker.kill()


# ------------------------------------------------------------------- the rules evaluated

# A number, or a duration such as 30s or 1m30s (as Prometheus prints them).
NUMBER = re.compile(r"(?<![\w.])(?:(?:\d+(?:ms|[smhdwy]))+|\d+(?:\.\d+)?(?:e[+-]?\d+)?)(?![\w.])")


def layout(expr: str) -> str:
    """Whitespace normalised: Prometheus prints a loaded rule on one line, format_query
    over several."""
    return re.sub(r" ?([()\[\]{},]) ?", r"\1", re.sub(r"\s+", " ", expr).strip())


def shape(expr: str) -> str:
    """The expression with every number and duration replaced by ``#``."""
    return layout(NUMBER.sub("#", expr))


@pytest.mark.timeout(120)
def test_the_rules_evaluated_are_the_committed_ones_with_fast_numbers(faults: Faults) -> None:
    prometheus = faults.prometheus
    loaded = prometheus.alerting_rules()
    committed: dict[str, list[str]] = {}
    for rule in committed_alerts():
        committed.setdefault(rule["alert"], []).append(rule["expr"])
    for name in UNDER_TEST:
        assert len(loaded[name]) == len(committed[name]) == 1, name
        shipped = prometheus.format_query(committed[name][0])
        assert shape(shipped) == shape(loaded[name][0]), name
    # CeleryWorkerDown has no setting in its expression: Prometheus evaluates the committed
    # text itself.
    worker_down = prometheus.format_query(committed["CeleryWorkerDown"][0])
    assert layout(worker_down) == layout(loaded["CeleryWorkerDown"][0])
    unhealthy = [rule for rule in prometheus.rule_health() if rule[1] == "err"]
    assert not unhealthy, unhealthy


# ------------------------------------------------------------------- task faults


@pytest.mark.timeout(120)
def test_a_task_killed_with_its_worker_fires_task_lost_counted_once(
    faults: Faults, start_worker: Callable[..., CeleryWorker]
) -> None:
    worker = start_worker(["lost"], "lost", pool="prefork")
    worker.wait_ready()
    faults.client.send_task(DUMMY, (1,), {"sleep": LONG_TASK_SECONDS}, queue="lost")
    task = f'name="{DUMMY}", queue_name="lost"'
    counted = f'celery_task_lost_total{{{task}, hostname="{worker.nodename}"}}'
    faults.seen(
        f"celery_task_oldest_running_age_seconds{{{task}}} > 0 and on () {counted} == 0",
        "the task running, and not lost, in Prometheus",
    )

    worker.kill()  # SIGKILL mid-task: no worker-offline, the task never finishes
    killed_at = time.monotonic()
    limit = promise(SETTINGS.lost_for, LOST_DETECTION)
    arrived_at, alert = faults.webhook.wait_for(
        "CeleryTaskLost", timeout=limit + 10, after=killed_at, name=DUMMY, queue_name="lost"
    )
    print(f"CeleryTaskLost {arrived_at - killed_at:.1f}s after the kill (promise {limit:.1f}s)")
    assert arrived_at - killed_at <= limit
    assert alert["labels"]["hostname"] == worker.nodename
    assert f"unfinished {DUMMY} tasks" in alert["annotations"]["description"]

    # Counted once: 1 for five more seconds of exporter checks of the lost worker, and never
    # more since the kill.
    faults.seen(f"count_over_time(({counted} == 1)[10s:1s]) >= 5", "five seconds lost")
    since_loss = f"[{round(time.monotonic() - killed_at) + 1}s]"
    assert faults.value(f"max_over_time({counted}{since_loss})") == 1
    assert faults.value('sum(celery_task_lost_total{queue_name="lost"})') == 1


@pytest.mark.timeout(120)
def test_a_task_past_its_running_limit_fires_and_short_ones_beside_it_do_not(
    faults: Faults, start_worker: Callable[..., CeleryWorker]
) -> None:
    worker = start_worker(["long", "short"], "runner", concurrency=2)
    worker.wait_ready()
    since = time.time()
    faults.client.send_task(DUMMY, (3,), {"sleep": LONG_TASK_SECONDS}, queue="long")
    sent_at = time.monotonic()
    shorts = 6
    for i in range(shorts):  # one after the other in the second slot, a second each
        faults.client.send_task(DUMMY, (i,), {"sleep": 1.0}, queue="short")

    limit = promise(SETTINGS.running_too_long_for, RUNNING_LIMIT + 1.0)
    arrived_at, alert = faults.webhook.wait_for(
        "CeleryTaskRunningTooLong", timeout=limit + 10, name=DUMMY, queue_name="long"
    )
    took = arrived_at - sent_at
    print(f"CeleryTaskRunningTooLong {took:.1f}s after the send (promise {limit:.1f}s)")
    assert took <= limit
    assert f"the limit for this task is {RUNNING_LIMIT:g}s" in alert["annotations"]["description"]

    # The short tasks all ran, and were seen running, yet never even made the alert pending.
    faults.seen(
        f'sum(celery_task_succeeded_total{{queue_name="short"}}) == {shorts}',
        "every short task done",
    )
    window = f"[{round(time.time() - since) + 1}s]"
    age = 'celery_task_oldest_running_age_seconds{queue_name="short"}'
    assert (faults.value(f"max(max_over_time({age}{window}))") or 0) > 0
    assert (
        faults.prometheus.alert_samples("CeleryTaskRunningTooLong", since, queue_name="short") == 0
    )


@pytest.mark.timeout(120)
def test_periodic_tasks_alert_only_once_beat_stops(faults: Faults) -> None:
    prometheus = faults.prometheus
    sent = "celery_task_last_sent_timestamp_seconds"
    first_seen = []
    for task in SCHEDULE:
        faults.seen(f'{sent}{{name="{task}"}}', f"beat sending {task}", timeout=30)
        series = prometheus.query_range(f'{sent}{{name="{task}"}}', faults.since, time.time())
        first_seen.append(float(series[0]["values"][0][0]))
    # From one evaluation after both were first scraped, the alert must have stayed silent
    # for at least each task's longest allowed gap: long enough to fire had beat missed a run.
    quiet_since = max(first_seen) + 2 * SCRAPE_SECONDS
    gaps = SETTINGS.periodic_tasks
    for task, gap in gaps.items():
        faults.seen(
            f'{sent}{{name="{task}"}} > {quiet_since + gap}',
            f"beat sending {task} for {gap:g}s",
            timeout=gap + 20,
        )
    assert faults.beat.alive()
    assert prometheus.alert_samples("CeleryPeriodicTaskMissed", quiet_since) == 0

    faults.beat.stop()
    stopped_at = time.monotonic()
    for task, gap in gaps.items():
        limit = promise(SETTINGS.periodic_missed_for, gap)
        arrived_at, alert = faults.webhook.wait_for(
            "CeleryPeriodicTaskMissed", timeout=limit + 10, after=stopped_at, name=task
        )
        took = arrived_at - stopped_at
        print(f"CeleryPeriodicTaskMissed {task} {took:.1f}s after beat stopped ({limit:.1f}s)")
        assert took <= limit
        assert f"must be sent at least every {gap:g}s" in alert["annotations"]["description"]
        assert "was last sent" in alert["annotations"]["description"]


@pytest.mark.timeout(120)
def test_an_acks_late_task_of_a_killed_worker_redelivered_fires_task_redelivered(
    faults: Faults, start_worker: Callable[..., CeleryWorker]
) -> None:
    first = start_worker(["redeliver"], "victim", pool="prefork", env=REDELIVERY_ENV)
    # The rescuer's counters are born with the redelivery (its first task), at 1: the rule
    # counts a new series only where Prometheus scraped the exporter a whole window before
    # (a younger Prometheus cannot tell it from an old count; alerts/rules.py).
    window = SETTINGS.redelivered_window
    faults.seen(
        f'up{{job="{EXPORTER_JOB}"}} offset {window}',
        f"Prometheus scraping for {window}",
        timeout=duration_seconds(window) + 10,
    )
    first.wait_ready()
    faults.client.send_task(DUMMY, (2,), {"sleep": REDELIVERED_TASK_SECONDS}, queue="redeliver")
    on_queue = {"name": DUMMY, "queue_name": "redeliver"}
    # The exporter itself, not Prometheus' next scrape: the task runs only a few seconds.
    faults.exporter.wait_for(
        lambda s: s.value("celery_task_started_total", hostname=first.nodename, **on_queue),
        message="the task started on the first worker",
    )
    first.kill()
    killed_at = time.monotonic()
    second = start_worker(["redeliver"], "rescuer", env=REDELIVERY_ENV)

    # Restored to the queue once older than the visibility timeout (the sweep runs every
    # second), then received by the second worker: counted redelivered there.
    detection = VISIBILITY_TIMEOUT + 2.0
    limit = promise(SETTINGS.redelivered_for, detection)
    arrived_at, alert = faults.webhook.wait_for(
        "CeleryTaskRedelivered", timeout=limit + 10, after=killed_at, **on_queue
    )
    took = arrived_at - killed_at
    print(f"CeleryTaskRedelivered {took:.1f}s after the kill (promise {limit:.1f}s)")
    assert took <= limit
    assert alert["labels"]["hostname"] == second.nodename
    assert "a second time" in alert["annotations"]["description"]
    scrape = faults.exporter.wait_for(
        lambda s: s.value("celery_task_succeeded_total", hostname=second.nodename, **on_queue),
        message="the redelivered task run to the end by the second worker",
    )
    assert scrape.total("celery_task_redelivered_total", **on_queue) == 1
    assert scrape.total("celery_task_received_total", **on_queue) == 2


# ------------------------------------------------------------------- capacity


class Feeder(threading.Thread):
    """Sends the n-th task of each queue of ``plan`` (queue -> dummy_task's sleep of each
    task) every ``interval`` seconds."""

    def __init__(self, client: Celery, plan: dict[str, list[float]], interval: float) -> None:
        super().__init__(name="feeder", daemon=True)
        self.client, self.plan, self.interval = client, plan, interval
        self.stop_event = threading.Event()

    def run(self) -> None:
        for i in range(max(len(sleeps) for sleeps in self.plan.values())):
            for queue, sleeps in self.plan.items():
                if i < len(sleeps):
                    self.client.send_task(DUMMY, (i,), {"sleep": sleeps[i]}, queue=queue)
            if self.stop_event.wait(self.interval):
                return

    def stop(self) -> None:
        self.stop_event.set()
        if self.ident is not None:  # started
            self.join(timeout=10)


@dataclass
class Saturation:
    since: float  # unix time the arrivals began
    started_at: float  # the same, monotonic


# Two tasks a second for 8 s. `busy` has one slot: three tasks of 1.5 s (so that Prometheus
# sees it start tasks: a finite drain time), then minute-long ones, 13 of which are 780 s of
# work, over the drain-time threshold of 600 s. `steady` gets 0.1 s tasks and two slots.
ARRIVAL_INTERVAL = 0.5
BUSY = [1.5] * 3 + [LONG_TASK_SECONDS] * 13
STEADY = [0.1] * len(BUSY)


@pytest.fixture(scope="module")
def saturation(faults: Faults) -> Iterator[Saturation]:
    """The arrivals of BUSY and STEADY, shared by the two capacity tests."""
    workers = {
        "busy": faults.worker(["busy"], "busy", concurrency=1),
        "steady": faults.worker(["steady"], "steady", concurrency=2),
    }
    feeder = Feeder(faults.client, {"busy": BUSY, "steady": STEADY}, ARRIVAL_INTERVAL)
    try:
        for worker in workers.values():
            worker.wait_ready()
            faults.seen(
                f'celery_worker_pool_size{{hostname="{worker.nodename}"}}',
                f"the pool of {worker.nodename} known",
            )
        scenario = Saturation(time.time(), time.monotonic())
        feeder.start()
        yield scenario
    finally:
        feeder.stop()
        for worker in workers.values():
            worker.kill()


def capacity_alert(
    faults: Faults, saturation: Saturation, name: str, for_: str, detection: float
) -> dict:
    """The alert ``name`` fires for `busy` within its promise; it never even turned pending
    for `steady`, which had every one of its arrivals and whose figures the rules computed."""
    limit = promise(for_, detection)
    arrived_at, alert = faults.webhook.wait_for(
        name, timeout=limit + 10, after=saturation.started_at, queue_name="busy"
    )
    took = arrived_at - saturation.started_at
    print(f"{name} {took:.1f}s after the arrivals began (promise {limit:.1f}s)")
    assert took <= limit
    faults.seen(
        f'sum(celery_task_succeeded_total{{queue_name="steady"}}) == {len(STEADY)}',
        "every steady task done",
        timeout=len(STEADY) * ARRIVAL_INTERVAL + 20,
    )
    for record in (
        "queue_name:celery_queue_utilisation:ratio",
        "queue_name:celery_queue_drain_time_seconds:rate5m",
    ):
        assert faults.value(f'{record}{{queue_name="steady"}}') is not None, record
    assert faults.prometheus.alert_samples(name, saturation.since, queue_name="steady") == 0
    return alert


@pytest.mark.timeout(120)
def test_a_queue_whose_slots_are_all_busy_while_its_backlog_grows_fires_saturated(
    faults: Faults, saturation: Saturation
) -> None:
    # Detection: the first arrivals wait, a heartbeat (every 2 s) reports the slot taken,
    # and deriv() needs two polls of a growing queue.
    detection = 2 * ARRIVAL_INTERVAL + 2.0 + 2 * SCRAPE_SECONDS
    alert = capacity_alert(
        faults, saturation, "CeleryQueueConsumersSaturated", SETTINGS.saturation_for, detection
    )
    assert "use 100% of their pool slots" in alert["annotations"]["description"]
    utilisation = faults.value('queue_name:celery_queue_utilisation:ratio{queue_name="steady"}')
    assert utilisation is not None and utilisation < SETTINGS.saturation_ratio


@pytest.mark.timeout(120)
def test_a_backlog_that_does_not_drain_in_time_fires_drain_time_too_long(
    faults: Faults, saturation: Saturation
) -> None:
    # Detection: once every task has arrived, 13 minutes of work wait behind one slot; the
    # rule's 5m rate sees that after a poll and a scrape.
    detection = len(BUSY) * ARRIVAL_INTERVAL + 2 * SCRAPE_SECONDS
    alert = capacity_alert(
        faults, saturation, "CeleryQueueDrainTimeTooLong", SETTINGS.drain_time_for, detection
    )
    threshold = SETTINGS.drain_time_seconds
    assert f"threshold {threshold:g}s" in alert["annotations"]["description"]
    # Not the infinite drain time of a queue nobody consumes (test_alerts_e2e.py): `busy`
    # is consumed, just too slowly. Once Prometheus has seen it start a second task, its
    # drain time is finite, and still over the threshold.
    drain = "queue_name:celery_queue_drain_time_seconds:rate5m"
    busy = faults.seen(
        f'{drain}{{queue_name="busy"}} > {threshold:g} < +Inf', "a finite drain time for busy"
    )
    print(f"busy drains in {float(busy[0]['value'][1]):.0f}s by the rule's rate")
    assert (faults.value(f'{drain}{{queue_name="steady"}}') or 0) < threshold


# ------------------------------------------------------------------- workers


@pytest.mark.timeout(120)
def test_worker_down_leaves_out_a_graceful_shutdown_and_fires_for_a_killed_worker(
    faults: Faults, start_worker: Callable[..., CeleryWorker]
) -> None:
    """Issue 12: the committed CeleryWorkerDown expression, queried through Prometheus' API
    over the whole time since both workers stopped, holds the killed one and never the one
    that said goodbye; only the killed one alerts."""
    leaving = start_worker(["down"], "leaving")
    killed = start_worker(["down"], "killed")
    for worker in (leaving, killed):
        worker.wait_ready()
        faults.seen(
            f'celery_worker_state{{hostname="{worker.nodename}", state="online"}} == 1',
            f"{worker.nodename} online in Prometheus",
        )
    shipped = [r["expr"] for r in committed_alerts() if r["alert"] == "CeleryWorkerDown"]
    assert len(shipped) == 1

    since = time.time()
    stopped_at = time.monotonic()
    leaving.warm_shutdown()  # SIGTERM: finishes, sends worker-offline, exits
    killed.kill()  # SIGKILL: no goodbye

    limit = promise(SETTINGS.worker_down_for, LOST_DETECTION)
    arrived_at, alert = faults.webhook.wait_for(
        "CeleryWorkerDown", timeout=limit + 10, after=stopped_at, hostname=killed.nodename
    )
    print(f"CeleryWorkerDown {arrived_at - stopped_at:.1f}s after the kill (promise {limit:.1f}s)")
    assert arrived_at - stopped_at <= limit
    assert "last heard" in alert["annotations"]["description"]

    # Both silent for longer than the worker timeout and the alert's for: by now.
    offline = f'celery_worker_state{{hostname="{leaving.nodename}", state="offline"}} == 1'
    assert faults.prometheus.query(offline), "the graceful worker is offline in Prometheus"
    in_result = {
        series["metric"]["hostname"]
        for series in faults.prometheus.query_range(shipped[0], since, time.time())
    }
    assert killed.nodename in in_result
    assert leaving.nodename not in in_result
    assert (
        faults.prometheus.alert_samples("CeleryWorkerDown", since, hostname=leaving.nodename) == 0
    )
    assert faults.prometheus.alert_samples("CeleryWorkerDown", since, hostname=killed.nodename) > 0
    heard = f'celery_worker_last_heartbeat_timestamp_seconds{{hostname="{leaving.nodename}"}}'
    assert time.time() - (faults.value(heard) or time.time()) > WORKER_TIMEOUT

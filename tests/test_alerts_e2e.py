"""End to end with real binaries: redis-server, Celery workers running the workload, the
exporter, Prometheus (1 s scrapes, fast rules) and Alertmanager posting to a webhook here.

1. Under a running workload, every expression of every dashboard panel and every recording
   rule returns data through Prometheus' HTTP API, and none is a syntax error.
2. The public celery-mixin alert expressions evaluate against our metrics.
3. A real fault fires a real alert within the time the rule promises: a task that fails one
   run in five (CeleryTaskFailureRatioHigh, and not for a task that only retries); a worker
   SIGKILLed in the middle of a long acks_late task (its delivery stays unacked:
   CeleryUnackedDeliveryStale; it is lost: CeleryWorkerDown, once the exporter serves
   celery_worker_state); a queue whose consumer is cancelled while tasks keep arriving
   (CeleryQueueNoConsumers, CeleryQueueBacklogGrowing, CeleryQueueOldestMessageTooOld); the
   broker killed (CeleryBrokerUnreachable).

Queries over metrics the exporter does not serve yet (tests/support/catalog.py,
PENDING_EXPORTER_METRICS) are checked for valid PromQL only, and listed in the output.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from celery import Celery

from alerts.rules import rule_groups
from alerts.settings import fast
from dashboards.generate import DASHBOARDS
from tests.support.catalog import PENDING_EXPORTER_METRICS, dashboard_panels, needs_pending_metric
from tests.support.procs import (
    CeleryWorker,
    ManagedProcess,
    ProcessTracker,
    RedisServer,
    free_port,
    module_processes,
    wait_until,
)
from tests.support.prom import (
    Alertmanager,
    Prometheus,
    PromQLError,
    WebhookReceiver,
    alert_promise,
)
from tests.support.workload_stack import BIN, base_env, client_app

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(170)]

SETTINGS = fast()
SCRAPE_SECONDS = 1.0
WORKER_TIMEOUT = 4.0  # celery heartbeats every 2 s
INSPECT_INTERVAL = 1.0
INSPECT_TIMEOUT = 1.0
POLL_INTERVAL = 0.5
# Workers and exporter agree on a short visibility_timeout, so that a delivery held by a
# crashed worker crosses the alert's fraction of it within seconds.
VISIBILITY_TIMEOUT = 16.0
LONG_TASK_SECONDS = 60.0
DUMMY = "workload.tasks.dummy_task"
REPORT = "workload.tasks.generate_report"
# Dashboard template variables as Grafana would substitute them.
SUBSTITUTIONS = {
    "$__rate_interval": "1m",
    "$__range": "5m",
    "$queue": "default",
    "$task": DUMMY,
    "$cluster": ".*",
    "$namespace": ".*",
    "$job": "celery-exporter",
    "$instance": ".*",
}

# The public celery-mixin's alerts (danihodovic/celery-exporter, celery-mixin) as rendered
# with its default selectors: name -> (the expression's value, its threshold).
MIXIN_SELECTOR = 'job=~".*celery.*"'
MIXIN_TASKS = f'{MIXIN_SELECTOR}, queue_name!~"None", name!~"None"'
MIXIN_ALERTS = {
    "CeleryTaskHighFailRate": (
        f"""
        sum(increase(celery_task_failed_total{{{MIXIN_TASKS}}}[10m]))
          by (job, namespace, queue_name, name)
        /
        (
          sum(increase(celery_task_failed_total{{{MIXIN_TASKS}}}[10m]))
            by (job, namespace, queue_name, name)
          +
          sum(increase(celery_task_succeeded_total{{{MIXIN_TASKS}}}[10m]))
            by (job, namespace, queue_name, name)
        )
        * 100""",
        "> 5",
    ),
    "CeleryHighQueueLength": (
        f"""
        sum(celery_queue_length{{{MIXIN_SELECTOR}, queue_name!~"None"}})
          by (job, namespace, queue_name)""",
        "> 100",
    ),
    "CeleryWorkerDown": (f"celery_worker_up{{{MIXIN_SELECTOR}}}", "== 0"),
}


def promise(for_: str, detection: float) -> float:
    return alert_promise(SETTINGS, for_, detection, SCRAPE_SECONDS)


class Traffic(threading.Thread):
    """Sends tasks until stopped: successes, failures (ValueError) and retries on ``default``,
    plus ``email_rate`` tasks a second to the ``email`` queue."""

    def __init__(self, client: Celery, rate: float = 10.0) -> None:
        super().__init__(name="traffic", daemon=True)
        self.client = client
        self.rate = rate
        self.email_rate = 0.0
        self.sent = 0
        self.stop_event = threading.Event()

    def run(self) -> None:
        for i in itertools.count():
            if self.stop_event.wait(1.0 / self.rate):
                return
            if i % 5 == 4:  # float("bad") raises ValueError: a real failure
                self.client.send_task(DUMMY, args=[i], kwargs={"sleep": "bad"}, queue="default")
            elif i % 10 == 3:  # fails once, then succeeds: a retry
                data = {"rows": [1, 2, 3], "fail_times": 1}
                self.client.send_task(REPORT, args=[1, data], queue="default")
            else:
                self.client.send_task(DUMMY, args=[i], queue="default")
            if self.email_rate and i % max(1, round(self.rate / self.email_rate)) == 0:
                self.client.send_task(DUMMY, args=[i], queue="email")
            self.sent += 1

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=10)


@dataclass
class Observatory:
    redis: RedisServer
    client: Celery
    exporter_url: str
    prometheus: Prometheus
    webhook: WebhookReceiver
    traffic: Traffic
    workers: dict[str, CeleryWorker] = field(default_factory=dict)
    long_task_sent_at: float = 0.0
    io_killed_at: float = 0.0


def start_exporter(tracker: ProcessTracker, redis: RedisServer) -> tuple[ManagedProcess, str]:
    port = free_port()
    argv = [
        str(BIN / "celery-observatory-exporter"),
        "--broker-url", redis.url(0),
        "--web.listen-address", f"127.0.0.1:{port}",
        "--broker-poll-interval", str(POLL_INTERVAL),
        "--worker-timeout", str(WORKER_TIMEOUT),
        "--inspect-interval", str(INSPECT_INTERVAL),
        "--inspect-timeout", str(INSPECT_TIMEOUT),
        "--queues", "default,email,io",
        "--visibility-timeout", str(VISIBILITY_TIMEOUT),
        "--log-format", "console",
    ]  # fmt: skip
    process = tracker.start(argv, f"exporter-{port}")
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if not process.alive():
            raise RuntimeError(f"exporter exited:\n{process.log_text()[-3000:]}")
        return requests.get(f"{url}/readyz", timeout=2).status_code == 200

    wait_until(ready, timeout=30, interval=0.2, message="exporter ready")
    return process, f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
def observatory(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Observatory]:
    tmp = tmp_path_factory.mktemp("observatory")
    with module_processes(tmp / "logs", request) as tracker, WebhookReceiver() as webhook:
        observatory = _start_observatory(tracker, tmp, webhook)
        yield observatory
        observatory.traffic.stop()


def _start_observatory(tracker: ProcessTracker, tmp: Path, webhook: WebhookReceiver) -> Observatory:
    redis = RedisServer(tracker, tmp / "redis").start()
    env = base_env(redis, tmp, WORKLOAD_VISIBILITY_TIMEOUT=str(int(VISIBILITY_TIMEOUT)))
    workers = {
        "default": CeleryWorker(tracker, env, ["default"], pool="threads", concurrency=4),
        "email": CeleryWorker(tracker, env, ["email"], pool="threads", concurrency=2),
        "io": CeleryWorker(tracker, env, ["io"], pool="threads", concurrency=2),
    }
    for worker in workers.values():
        worker.start(wait=False)
    _, exporter = start_exporter(tracker, redis)
    manager = Alertmanager(tracker, tmp / "alertmanager", webhook.url).start()
    prometheus = Prometheus(tracker, tmp / "prometheus", [exporter], SETTINGS, manager.url)
    prometheus.start()
    for worker in workers.values():
        worker.wait_ready()
    client = client_app(env)
    # A long acks_late task on io: its delivery stays in `unacked` while it runs.
    client.send_task(DUMMY, args=[0], kwargs={"sleep": LONG_TASK_SECONDS}, queue="io")
    long_task_sent_at = time.monotonic()
    traffic = Traffic(client)
    traffic.start()
    # One message the exporter must refuse, so the rejected-events panel has a series.
    redis.client().publish("/0.celeryev/worker.heartbeat", b"not a kombu envelope")
    wait_until(prometheus.targets_up, timeout=20, message="exporter scraped")
    return Observatory(
        redis, client, exporter, prometheus, webhook, traffic, workers, long_task_sent_at
    )


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, expression) for every target of every panel, variables substituted."""
    queries = []
    for name in DASHBOARDS:
        for panel in dashboard_panels(name):
            for target in panel["targets"]:
                expr = target["expr"]
                for variable, value in SUBSTITUTIONS.items():
                    expr = expr.replace(variable, value)
                assert "$" not in expr, f"unsubstituted variable in {expr}"
                queries.append((f"{name}: {panel['title']} [{target['refId']}]", expr))
    return queries


def wait_for_data(prometheus: Prometheus, queries: list[tuple[str, str]], timeout: float) -> None:
    """Poll until every query returns at least one series; a query error fails at once."""
    deadline = time.monotonic() + timeout
    pending = dict(queries)
    while pending:
        for where, expr in list(pending.items()):
            try:
                if prometheus.query(expr):
                    del pending[where]
            except PromQLError as exc:
                pytest.fail(f"{where}: {expr}\n{exc}")
        if pending and time.monotonic() > deadline:
            lines = "\n".join(f"  {where}: {expr}" for where, expr in pending.items())
            pytest.fail(f"no data after {timeout}s for:\n{lines}")
        time.sleep(0.5)


def recording_rule_queries() -> list[tuple[str, str]]:
    records = {
        rule["record"]
        for group in rule_groups(SETTINGS)["groups"]
        for rule in group["rules"]
        if "record" in rule
    }
    return [(f"recording rule {record}", record) for record in sorted(records)]


def test_every_dashboard_query_and_recording_rule_returns_data(observatory: Observatory) -> None:
    """Every query must return data, except those over metrics the exporter does not serve
    yet (PENDING_EXPORTER_METRICS): those are only checked to be valid PromQL, and listed."""
    prometheus = observatory.prometheus
    queries = dashboard_queries() + recording_rule_queries()
    awaiting = [(where, expr) for where, expr in queries if needs_pending_metric(expr)]
    required = [item for item in queries if item not in awaiting]
    started = time.monotonic()
    wait_for_data(prometheus, required, timeout=60)
    print(f"{len(required)} queries returned data after {time.monotonic() - started:.1f}s")
    for where, expr in awaiting:
        try:
            prometheus.query(expr)
        except PromQLError as exc:
            pytest.fail(f"{where}: {expr}\n{exc}")
    print(f"{len(awaiting)} queries await the exporter's {sorted(PENDING_EXPORTER_METRICS)}:")
    print("\n".join(f"  {where}" for where, _ in awaiting))
    # Real traffic, not just zero-valued series: tasks succeeded, failed and were retried.
    for expr in (
        "sum(celery_task_succeeded_total) > 0",
        'sum(celery_task_failed_total{exception="ValueError"}) > 0',
        "sum(celery_task_retried_total) > 0",
        "sum(celery_exporter_events_rejected_total) > 0",
    ):
        assert prometheus.query(expr), expr
    unhealthy = [rule for rule in prometheus.rule_health() if rule[1] == "err"]
    assert not unhealthy, unhealthy


def test_celery_mixin_alert_expressions_evaluate_against_our_metrics(
    observatory: Observatory,
) -> None:
    prometheus = observatory.prometheus
    for name, (value, threshold) in MIXIN_ALERTS.items():
        prometheus.query(f"{value} {threshold}")  # raises on a syntax or evaluation error
        # Without the threshold the expression must find our series (same names and labels).
        assert prometheus.query(value), f"{name}: no series for {value}"


def test_failing_task_fires_failure_ratio_but_a_retrying_task_does_not(
    observatory: Observatory,
) -> None:
    """dummy_task fails one run in five (a ratio of about 22%); generate_report fails once
    and then succeeds on retry, so its failure ratio is 0 although it keeps retrying."""
    _, alert = observatory.webhook.wait_for("CeleryTaskFailureRatioHigh", timeout=30, name=DUMMY)
    assert alert["labels"]["queue_name"] == "default"
    assert alert["labels"]["severity"] == "warning"
    assert f"of the runs of {DUMMY} on queue default failed" in alert["annotations"]["description"]
    assert observatory.prometheus.query(f'sum(celery_task_retried_total{{name="{REPORT}"}}) > 0')
    firing = observatory.prometheus.alert_states("CeleryTaskFailureRatioHigh")
    assert REPORT not in {a["labels"]["name"] for a in firing}


def test_failing_runs_burn_the_success_error_budget_of_their_queue(
    observatory: Observatory,
) -> None:
    """About 20% of the runs on `default` fail against a 99% success objective: a 20x burn,
    over both windows of the fast pair, pages; the queue-wait SLO of the same queue does not."""
    _, alert = observatory.webhook.wait_for(
        "CeleryErrorBudgetBurnFast", timeout=30, queue_name="default", slo="success"
    )
    assert alert["labels"]["severity"] == "critical"
    assert "99% of finished runs succeed over 30d" in alert["annotations"]["description"]
    budget = observatory.prometheus.query(
        'queue_name_slo:celery_slo_error_budget:remaining{queue_name="default", slo="success"}'
    )
    assert budget and float(budget[0]["value"][1]) < 0  # overspent at this rate
    burning = observatory.prometheus.alert_states("CeleryErrorBudgetBurnFast")
    assert ("default", "queue_wait") not in {
        (a["labels"]["queue_name"], a["labels"]["slo"]) for a in burning
    }


def test_killed_worker_leaves_a_stale_unacked_delivery(observatory: Observatory) -> None:
    worker = observatory.workers["io"]
    wait_until(
        lambda: observatory.prometheus.query(
            f'celery_worker_up{{hostname="{worker.nodename}"}} == 1'
        ),
        timeout=20,
        message="io worker up in Prometheus",
    )
    wait_until(
        lambda: observatory.prometheus.query(
            f'celery_worker_tasks_active{{hostname="{worker.nodename}"}} > 0'
        ),
        timeout=20,
        message="the long task running on the io worker",
    )
    worker.kill()  # SIGKILL mid-task: no worker-offline, no ack
    observatory.io_killed_at = time.monotonic()
    # The peer-compatible gauge drops to 0 and stays (the mixin's CeleryWorkerDown fires).
    value, threshold = MIXIN_ALERTS["CeleryWorkerDown"]
    wait_until(
        lambda: (
            worker.nodename
            in {
                s["metric"]["hostname"]
                for s in observatory.prometheus.query(f"{value} {threshold}")
            }
        ),
        timeout=WORKER_TIMEOUT + 10,
        message="celery_worker_up 0 for the killed worker",
    )

    # The crashed worker's delivery stays unacked; the alert promises to notice once it is
    # older than the fraction of visibility_timeout (before the redelivery at the timeout).
    crossing = SETTINGS.unacked_visibility_fraction * VISIBILITY_TIMEOUT + POLL_INTERVAL
    limit = promise(SETTINGS.unacked_for, detection=crossing)
    arrived_at, alert = observatory.webhook.wait_for("CeleryUnackedDeliveryStale", timeout=40)
    late = arrived_at - observatory.long_task_sent_at
    print(f"CeleryUnackedDeliveryStale {late:.1f}s after the delivery (promise {limit:.1f}s)")
    assert late <= limit, f"took {late:.1f}s > {limit:.1f}s"
    assert arrived_at - observatory.long_task_sent_at < VISIBILITY_TIMEOUT + 1
    assert "visibility_timeout" in alert["annotations"]["description"]


@pytest.mark.skipif(
    "celery_worker_state" in PENDING_EXPORTER_METRICS,
    reason="CeleryWorkerDown reads celery_worker_state, which the exporter does not serve yet",
)
def test_killed_worker_fires_worker_down_within_the_promise(observatory: Observatory) -> None:
    """The worker SIGKILLed above is `lost`: CeleryWorkerDown arrives within its promise."""
    worker = observatory.workers["io"]
    assert observatory.io_killed_at, "runs after test_killed_worker_leaves_a_stale_unacked_delivery"
    limit = promise(SETTINGS.worker_down_for, detection=WORKER_TIMEOUT)
    arrived_at, alert = observatory.webhook.wait_for(
        "CeleryWorkerDown", timeout=limit + 10, hostname=worker.nodename
    )
    took = arrived_at - observatory.io_killed_at
    print(f"CeleryWorkerDown after {took:.1f}s (promise {limit:.1f}s)")
    assert took <= limit, f"took {took:.1f}s > {limit:.1f}s"
    assert alert["annotations"]["runbook_url"].endswith("CeleryWorkerDown.md")
    assert "last heard" in alert["annotations"]["description"]


def test_cancelled_consumer_with_arriving_tasks_fires_no_consumers_and_backlog(
    observatory: Observatory,
) -> None:
    worker = observatory.workers["email"]
    prometheus = observatory.prometheus
    wait_until(
        lambda: prometheus.query('celery_active_consumer_count{queue_name="email"} > 0'),
        timeout=20,
        message="email consumer seen by inspect",
    )
    replies = observatory.client.control.cancel_consumer(
        "email", destination=[worker.nodename], reply=True, timeout=5
    )
    assert replies, "the email worker did not acknowledge cancel_consumer"
    stopped_at = time.monotonic()
    observatory.traffic.email_rate = 5.0

    # An inspect round in flight at the cancel may still see the consumer: two rounds.
    inspect_rounds = 2 * (INSPECT_INTERVAL + INSPECT_TIMEOUT) + POLL_INTERVAL
    no_consumers = promise(SETTINGS.no_consumers_for, detection=inspect_rounds)
    arrived_at, alert = observatory.webhook.wait_for(
        "CeleryQueueNoConsumers", timeout=no_consumers + 10, queue_name="email"
    )
    print(
        f"CeleryQueueNoConsumers after {arrived_at - stopped_at:.1f}s (promise {no_consumers:.1f}s)"
    )
    assert arrived_at - stopped_at <= no_consumers, f"took {arrived_at - stopped_at:.1f}s"
    assert alert["labels"]["severity"] == "critical"

    # Over the minimum length after min/rate seconds, then one poll to see it.
    fill = (SETTINGS.backlog_min_length + 1) / observatory.traffic.email_rate + POLL_INTERVAL
    backlog = promise(SETTINGS.backlog_for, detection=fill)
    arrived_at, _ = observatory.webhook.wait_for(
        "CeleryQueueBacklogGrowing", timeout=backlog + 10, queue_name="email"
    )
    print(
        f"CeleryQueueBacklogGrowing after {arrived_at - stopped_at:.1f}s (promise {backlog:.1f}s)"
    )
    assert arrived_at - stopped_at <= backlog, f"took {arrived_at - stopped_at:.1f}s"

    # Nothing consumes the queue, so its oldest message ages past the (fast) SLO.
    aging = SETTINGS.oldest_message_age_seconds + POLL_INTERVAL
    too_old = promise(SETTINGS.oldest_message_for, detection=aging)
    arrived_at, alert = observatory.webhook.wait_for(
        "CeleryQueueOldestMessageTooOld", timeout=too_old + 10, queue_name="email"
    )
    print(f"CeleryQueueOldestMessageTooOld after {arrived_at - stopped_at:.1f}s")
    assert arrived_at - stopped_at <= too_old, f"took {arrived_at - stopped_at:.1f}s"

    # A backlog that nothing consumes never drains: an infinite drain time alerts too, as
    # soon as the first message waits (nothing was ever started from this queue).
    first_message = 1.0 / observatory.traffic.email_rate + POLL_INTERVAL
    drain = promise(SETTINGS.drain_time_for, detection=first_message)
    arrived_at, alert = observatory.webhook.wait_for(
        "CeleryQueueDrainTimeTooLong", timeout=drain + 10, queue_name="email"
    )
    print(
        f"CeleryQueueDrainTimeTooLong after {arrived_at - stopped_at:.1f}s (promise {drain:.1f}s)"
    )
    assert arrived_at - stopped_at <= drain, f"took {arrived_at - stopped_at:.1f}s"
    assert "never drains" in alert["annotations"]["description"]
    assert observatory.prometheus.query(
        'queue_name:celery_queue_drain_time_seconds:rate5m{queue_name="email"} == +Inf'
    )


def test_killed_broker_fires_broker_unreachable(observatory: Observatory) -> None:
    """Last: the stack does not survive it."""
    observatory.traffic.stop()
    observatory.redis.kill()
    killed_at = time.monotonic()
    limit = promise(SETTINGS.broker_down_for, detection=POLL_INTERVAL + 1.0)
    arrived_at, alert = observatory.webhook.wait_for("CeleryBrokerUnreachable", timeout=limit + 10)
    print(f"CeleryBrokerUnreachable after {arrived_at - killed_at:.1f}s (promise {limit:.1f}s)")
    assert arrived_at - killed_at <= limit, f"took {arrived_at - killed_at:.1f}s"
    assert alert["labels"]["severity"] == "critical"

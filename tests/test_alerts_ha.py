"""Two exporters for high availability, live: one redis-server, real workers, two real
exporters watching the same broker, and one real Prometheus scraping both with the rules.

1. Every recording rule equals the same rule evaluated on one exporter alone (the rule's
   own expression with ``selector='instance="<one>"'``), while a naive sum over both
   exporters doubles: the rules deduplicate replicas before they aggregate.
2. Every dashboard query over both exporters shows each series of the one-exporter query
   with the same value: nothing a dashboard draws doubles either.
3. SIGKILL one exporter: every alert that was pending or firing stays, with the same
   activeAt (no reset, no flap), no new alert appears except the warning about the killed
   replica, and CeleryExporterDown (the page) stays silent: one replica of two down is not
   blindness.
"""

from __future__ import annotations

import itertools
import math
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from celery import Celery

from alerts.rules import rule_groups
from alerts.settings import fast, with_overrides
from dashboards.generate import DASHBOARDS
from tests.support.catalog import dashboard_panels, needs_pending_metric
from tests.support.exporter import ExporterProcess
from tests.support.procs import CeleryWorker, ProcessTracker, RedisServer, wait_until
from tests.support.prom import Prometheus
from tests.support.workload_stack import base_env, client_app

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

DUMMY = "workload.tasks.dummy_task"
# No beat runs here: the periodic-task alert would only add noise to the comparison.
SETTINGS = with_overrides(fast(), {"periodic_tasks": {}})
EXPORTER_ARGS = (
    "--queues", "default,orphan",
    "--inspect-interval", "1",
    "--inspect-timeout", "1",
    "--worker-timeout", "4",
)  # fmt: skip
# Two exporters count the same events but are scraped a fraction of a second apart, so their
# rates differ by the events in between (a few percent, more for a bucket seeing a handful of
# tasks: one event in a 5m window is 0.0033/s). A doubled rate is 50% off the larger value.
TOLERANCE = 0.25
ABSOLUTE = 0.01
# Alerts the traffic below must raise before the kill (fast settings: seconds).
EXPECTED = {
    ("CeleryTaskFailureRatioHigh", DUMMY),
    ("CeleryQueueNoConsumers", "orphan"),
    ("CeleryQueueOldestMessageTooOld", "orphan"),
    ("CeleryQueueDrainTimeTooLong", "orphan"),
    ("CeleryErrorBudgetBurnFast", "default"),
}


class Traffic(threading.Thread):
    """10 tasks/s on ``default`` (one in five fails), 2/s on ``orphan`` (no consumer)."""

    def __init__(self, client: Celery) -> None:
        super().__init__(name="ha-traffic", daemon=True)
        self.client = client
        self.stop_event = threading.Event()

    def run(self) -> None:
        for i in itertools.count():
            if self.stop_event.wait(0.1):
                return
            kwargs = {"sleep": "bad"} if i % 5 == 4 else {}  # float("bad"): ValueError
            self.client.send_task(DUMMY, args=[i], kwargs=kwargs, queue="default")
            if i % 5 == 0:
                self.client.send_task(DUMMY, args=[i], queue="orphan")

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=10)


@dataclass
class Pair:
    prometheus: Prometheus
    survivor: ExporterProcess
    victim: ExporterProcess

    def instance(self, exporter: ExporterProcess) -> str:
        return f"127.0.0.1:{exporter.port}"


@pytest.fixture
def pair(procs: ProcessTracker, tmp_path: Path) -> Iterator[Pair]:
    redis = RedisServer(procs, tmp_path / "redis").start()
    env = base_env(redis, tmp_path)
    worker = CeleryWorker(procs, env, ["default"], pool="threads", concurrency=4).start(wait=False)
    exporters = [
        ExporterProcess(procs, redis.url(0), EXPORTER_ARGS).start(),
        ExporterProcess(procs, redis.url(0), EXPORTER_ARGS).start(),
    ]
    targets = [f"127.0.0.1:{e.port}" for e in exporters]
    prometheus = Prometheus(procs, tmp_path / "prom", targets, SETTINGS).start()
    worker.wait_ready()
    traffic = Traffic(client_app(env))
    traffic.start()
    wait_until(prometheus.targets_up, timeout=20, message="both exporters scraped")
    try:
        yield Pair(prometheus, *exporters)
    finally:
        traffic.stop()


def _key(labels: dict[str, str]) -> frozenset[tuple[str, str]]:
    return frozenset(labels.items())


def _values(prometheus: Prometheus, expr: str, at: float) -> dict[frozenset, float]:
    return {
        _key(series["metric"]): float(series["value"][1])
        for series in prometheus.query(expr, at=at)
    }


# The two exporters are scraped at different offsets, so at one instant their latest samples
# of a moving timestamp (a task name sent every second) differ by up to a scrape interval:
# an age computed from them ("time() - ...") may differ by that much, doubled or not.
AGE_SLACK_SECONDS = 2 * 1.0  # two of the test Prometheus' 1 s scrape intervals


def _close(a: float, b: float, absolute: float = ABSOLUTE) -> bool:
    if a == b or (math.isnan(a) and math.isnan(b)):  # +Inf == +Inf; 0/0 on both sides
        return True
    return abs(a - b) <= TOLERANCE * max(abs(a), abs(b)) + absolute


def _strip(values: dict[frozenset, float]) -> dict[frozenset, float]:
    return {frozenset(k for k in key if k[0] != "__name__"): v for key, v in values.items()}


def _last_recorded(prometheus: Prometheus, selector: str) -> tuple[float, dict[frozenset, float]]:
    """The last evaluation of a recording rule: (its timestamp, labels -> value)."""
    series = prometheus.query(f"{selector}[10s]")
    assert series, f"{selector}: no data; {[r for r in prometheus.rule_health() if r[1] == 'err']}"
    at = max(float(s["values"][-1][0]) for s in series)
    values = {}
    for item in series:
        stamp, value = item["values"][-1]
        if float(stamp) == at:
            values[_key(item["metric"])] = float(value)
    return at, _strip(values)


def check_recording_rules_count_once(pair: Pair) -> int:
    """Each recording rule as recorded vs its own expression evaluated on one exporter only,
    at the very timestamp of the rule's last evaluation."""
    prometheus = pair.prometheus
    alone = with_overrides(SETTINGS, {"selector": f'instance="{pair.instance(pair.survivor)}"'})
    compared = 0
    for group in rule_groups(alone)["groups"]:
        for rule in group["rules"]:
            record = rule.get("record")
            if not record or needs_pending_metric(record):
                continue  # pending: not served by this exporter yet (tests/support/catalog.py)
            extra = rule.get("labels", {})
            matchers = ", ".join(f'{k}="{v}"' for k, v in extra.items())
            at, recorded = _last_recorded(prometheus, f"{record}{{{matchers}}}")
            single = _strip(_values(prometheus, rule["expr"], at))
            for labels, value in single.items():
                labels = labels | _key(extra)
                assert labels in recorded, f"{record}: {dict(labels)} not recorded"
                got = recorded[labels]
                assert _close(got, value), f"{record} {dict(labels)}: {got} vs alone {value}"
                compared += 1
    return compared


def dashboard_queries(instance: str) -> list[tuple[str, str, str]]:
    """(where, query over every exporter, query over ``instance`` only)."""
    fixed = {"$__rate_interval": "1m", "$__range": "5m", "$queue": "default", "$task": DUMMY,
             "$cluster": ".*", "$namespace": ".*", "$job": "celery-exporter"}  # fmt: skip
    queries = []
    for name in DASHBOARDS:
        for panel in dashboard_panels(name):
            for target in panel["targets"]:
                expr = target["expr"]
                for variable, value in fixed.items():
                    expr = expr.replace(variable, value)
                where = f"{name}: {panel['title']} [{target['refId']}]"
                one = expr.replace("$instance", re.escape(instance).replace("\\", "\\\\"))
                queries.append((where, expr.replace("$instance", ".*"), one))
    return queries


def check_dashboards_count_once(pair: Pair) -> int:
    prometheus = pair.prometheus
    at = time.time() - 2
    compared = 0
    for where, every, one in dashboard_queries(pair.instance(pair.survivor)):
        if needs_pending_metric(every):
            continue
        both, single = _values(prometheus, every, at), _values(prometheus, one, at)
        for labels, value in single.items():
            assert labels in both, f"{where}: {dict(labels)} missing over both exporters"
            slack = AGE_SLACK_SECONDS if "time() -" in every else ABSOLUTE
            assert _close(both[labels], value, slack), (
                f"{where} {dict(labels)}: {both[labels]} vs {value}"
            )
            compared += 1
    return compared


def alert_snapshot(prometheus: Prometheus) -> dict[frozenset, str]:
    """Pending and firing alerts: labels -> activeAt (state may move pending -> firing)."""
    return {_key(alert["labels"]): alert["activeAt"] for alert in prometheus.alerts()}


def _has(snapshot: dict[frozenset, str], alertname: str, value: str) -> bool:
    return any(("alertname", alertname) in k and value in dict(k).values() for k in snapshot)


def test_two_exporters_count_once_and_losing_one_changes_no_alert(pair: Pair) -> None:
    prometheus = pair.prometheus
    # Enough traffic for every rate window to hold many scrapes of both exporters.
    wait_until(
        lambda: prometheus.query(
            f'count_over_time(celery_task_succeeded_total{{name="{DUMMY}"}}[1m]) >= 20'
        ),
        timeout=90,
        message="20 scrapes of traffic",
    )

    # 1. Recording rules: as one exporter alone, and a naive sum doubles.
    compared = check_recording_rules_count_once(pair)
    print(f"{compared} recorded series equal to one exporter's")
    assert compared > 10
    naive = prometheus.query('sum(rate(celery_task_started_total{queue_name="default"}[5m]))')
    deduped = prometheus.query('queue_name:celery_task_started:rate5m{queue_name="default"}')
    ratio = float(naive[0]["value"][1]) / float(deduped[0]["value"][1])
    assert 1.8 < ratio < 2.2, f"two exporters should double a naive sum, got x{ratio:.2f}"

    # 2. Dashboards.
    compared = check_dashboards_count_once(pair)
    print(f"{compared} dashboard series equal to one exporter's")
    assert compared > 20

    # 3. Alerts: wait for the expected ones, and for the set to settle.
    def settled() -> dict[frozenset, str] | None:
        before = alert_snapshot(prometheus)
        if not all(_has(before, name, value) for name, value in EXPECTED):
            return None
        time.sleep(3)  # three evaluations: nothing may be on its way in or out
        return before if alert_snapshot(prometheus) == before else None

    before = wait_until(settled, timeout=90, interval=0.5, message=f"alerts {EXPECTED} settled")
    victim = pair.instance(pair.victim)
    assert not any(("instance", victim) in labels for labels in before), before

    pair.victim.process.kill()  # type: ignore[union-attr]
    wait_until(
        lambda: prometheus.query(f'up{{instance="{victim}"}} == 0'),
        timeout=20,
        message="the killed exporter's scrape failing",
    )
    # Ten evaluations after the target went down: every alert stays, none is reset.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        after = alert_snapshot(prometheus)
        for labels, active_at in before.items():
            assert after.get(labels) == active_at, f"{dict(labels)} changed after the kill"
        new = {labels for labels in after if labels not in before}
        for labels in new:
            assert ("instance", victim) in labels, f"new alert {dict(labels)} after the kill"
        time.sleep(1)
    assert not prometheus.alert_states("CeleryExporterDown")
    wait_until(
        lambda: [a for a in prometheus.alert_states("CeleryExporterReplicaDown")
                 if a["labels"]["instance"] == victim and a["state"] == "firing"],
        timeout=20,
        message="CeleryExporterReplicaDown for the killed replica",
    )  # fmt: skip
    # And the figures are now the survivor's alone, still equal.
    assert check_recording_rules_count_once(pair) > 10

"""Faults on purpose: ``scripts/stack fault <name>``, the tour of what the system shows.

Each fault does one real thing to the running stack (a SIGKILL, a stopped Redis, a burst of
jobs, a stopped beat, a slow task), says what to watch -- the status page, the metric, the
alert with its Prometheus, Alertmanager and runbook links, the dashboard panel -- and heals.

A component stopped by a fault is *held* down by the supervisor rather than restarted at once:
the point is to see the alert, so it stays down until the fault's alert has reached
Alertmanager's receiver (at least a minimum, at most that alert's ``for:`` plus some slack),
or for exactly ``--seconds`` when given.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from stack.alerting import SLOW_TASK, setting
from stack.components import ADMISSION_LIMIT, BIN, WORKERS, email_rate_limit, worker_hostname
from stack.runtime import Runtime
from stack.supervisor import Hold

Say = Callable[[str], None]
DASHBOARDS = Path(__file__).resolve().parents[1] / "dashboards"
# The exporter declares a worker down after 3 missed heartbeats (Celery beats every 2 s).
WORKER_DOWN_SECONDS = 6.0
# Redis stays down at least this long (issue 14: "stop Redis for 30 s").
REDIS_DOWN_SECONDS = 30.0
FLOOD_CONCURRENCY = 16
FLOOD_COUNT = ADMISSION_LIMIT + ADMISSION_LIMIT // 2  # past the limit: some 429s
# The API endpoint that feeds each queue, and a cheap job for it.
FLOOD_JOBS: dict[str, tuple[str, Callable[[int, Runtime], dict[str, Any]]]] = {
    "email": ("/email", lambda i, rt: {"address": f"flood{i}@example.com"}),
    "cpu": ("/report", lambda i, rt: {"user_id": i % 1000 + 1, "data": {"size": 200}}),
    "io": ("/thumb", lambda i, rt: {"url": rt.url("images", f"/images/flood-{i}.png")}),
}


class FaultError(Exception):
    """The fault cannot be caused now (one line for the user)."""


# Dashboard panels each fault shows on, by title keyword (a test checks each one exists).
PANELS: dict[str, tuple[str, ...]] = {
    "kill-worker": ("Worker states", "Workers lost"),
    "stop-redis": ("broker reachable",),
    "flood": ("Queue length", "Drain time", "Oldest message age"),
    "stop-beat": ("Periodic",),
    "slow-task": ("running",),
}


@dataclass(frozen=True)
class Watch:
    """What shows the fault: a line for the status page, a PromQL query, alerts, panels."""

    status_page: str
    metric: str
    alerts: tuple[str, ...]
    panels: tuple[str, ...]  # panel title keywords, looked up in dashboards/*.json


def say_watch(rt: Runtime, watch: Watch, say: Say) -> None:
    say("Watch:")
    say(f"  status page   {rt.url('exporter', '/')}  {watch.status_page}")
    say(f"  metric        {watch.metric}")
    say(f"                {rt.graph_url(watch.metric)}")
    for alert in watch.alerts:
        if alert not in rt.alerts.alert_for:
            say(f"  alert         {alert}: not in this stack's rules")
            continue
        say(f"  alert         {alert} (fires after for: {_seconds(rt.alerts.alert_for[alert])})")
        say(f"                Prometheus   {rt.prometheus_alerts_url()}")
        say(f"                Alertmanager {rt.alertmanager_url(alert)}")
        say(f"                runbook      {rt.runbook_url(alert)}")
    for dashboard, panel in find_panels(watch.panels):
        say(f"  dashboard     {dashboard} > {panel} (Grafana: docker-compose, see README)")


@cache
def _panel_titles() -> list[tuple[str, str]]:
    found = []

    def walk(dashboard: str, panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            if panel.get("type") != "row" and panel.get("title"):
                found.append((dashboard, panel["title"]))
            walk(dashboard, panel.get("panels", []))

    for path in sorted(DASHBOARDS.glob("*.json")):
        dashboard = json.loads(path.read_text())
        walk(dashboard.get("title", path.stem), dashboard.get("panels", []))
    return found


def find_panels(keywords: tuple[str, ...]) -> list[tuple[str, str]]:
    """The first panel whose title contains each keyword (case-insensitive), if any."""
    panels = []
    for keyword in keywords:
        match = next((p for p in _panel_titles() if keyword.lower() in p[1].lower()), None)
        if match and match not in panels:
            panels.append(match)
    return panels


def _seconds(value: float) -> str:
    return f"{value / 60:g} min" if value >= 120 else f"{value:g} s"


def hold_for(
    rt: Runtime,
    fault: str,
    alert: str,
    minimum: float,
    seconds: float | None,
    detection: float = 0.0,
    **labels: str,
) -> tuple[Hold, str]:
    """How long a stopped component stays down, and that in words.

    ``detection``: seconds until the alert's condition holds (e.g. a periodic task's longest
    allowed gap); the alert's ``for:`` and some slack for notification and a loaded machine
    come on top, and bound the wait for the alert.
    """
    since = time.monotonic()
    if seconds is not None:
        return Hold(fault, since, seconds, seconds), f"for {_seconds(seconds)}"
    if alert not in rt.alerts.alert_for:
        return Hold(fault, since, minimum, minimum), f"for {_seconds(minimum)}"
    slack = 45.0 if rt.fast else 120.0
    maximum = max(minimum, detection) + rt.alerts.alert_for[alert] + slack
    hold = Hold(
        fault, since, minimum, maximum, lambda: rt.alert_log.delivered(alert, since, **labels)
    )
    words = (
        f"until {alert} has reached Alertmanager's receiver"
        f" (at least {_seconds(minimum)}, at most {_seconds(maximum)})"
    )
    return hold, words


# --- the faults -----------------------------------------------------------------------------------


def kill_worker(rt: Runtime, say: Say, worker: str = "email", seconds: float | None = None) -> None:
    names = [name for name, *_ in WORKERS]
    if worker not in names:
        raise FaultError(f"no worker {worker!r}; choose one of {', '.join(names)}")
    hostname = worker_hostname(worker)
    hold, how_long = hold_for(
        rt,
        "kill-worker",
        "CeleryWorkerDown",
        WORKER_DOWN_SECONDS + 2 * rt.timing.scrape_seconds,
        seconds,
        detection=WORKER_DOWN_SECONDS,
        hostname=hostname,
    )
    pid = rt.supervisor.hold(f"worker-{worker}", hold, signal.SIGKILL)
    say(
        f"kill-worker: SIGKILLed worker-{worker} ({hostname}, pid {pid}, with its pool):"
        " no goodbye, as in an OOM kill or a lost node."
    )
    say(f"It stays down {how_long}; then the stack restarts it and the alert resolves.")
    say(
        "A task it was running is lost (CeleryTaskLost) and, being acks_late, redelivered"
        " once the visibility timeout passes (CeleryTaskRedelivered)."
    )
    say_watch(
        rt,
        Watch(
            status_page=f'worker {hostname} turns "down (lost)" within ~{WORKER_DOWN_SECONDS:g} s',
            metric=f'celery_worker_state{{hostname="{hostname}",state="lost"}}',
            alerts=("CeleryWorkerDown", "CeleryTaskLost"),
            panels=PANELS["kill-worker"],
        ),
        say,
    )


def stop_redis(rt: Runtime, say: Say, seconds: float | None = None) -> None:
    hold, how_long = hold_for(
        rt,
        "stop-redis",
        "CeleryBrokerUnreachable",
        REDIS_DOWN_SECONDS,
        seconds,
        detection=rt.timing.scrape_seconds,
    )
    pid = rt.supervisor.hold("redis", hold, signal.SIGTERM)
    say(f"stop-redis: stopped redis (pid {pid}; SIGTERM: it writes its AOF and exits).")
    say(
        f"It stays down {how_long}. Meanwhile the API answers 503, workers and beat retry"
        " their connection, and the exporter reports the broker down."
    )
    say(
        "Then Redis restarts from its AOF: queued tasks survive, everything reconnects."
        " Alertmanager inhibits the consequences (worker down, no consumers ...) while the"
        " cause fires."
    )
    say_watch(
        rt,
        Watch(
            status_page='broker "down", figures frozen at the last poll',
            metric="celery_exporter_broker_up",
            alerts=("CeleryBrokerUnreachable",),
            panels=PANELS["stop-redis"],
        ),
        say,
    )


def flood(rt: Runtime, say: Say, queue: str = "email", count: int = FLOOD_COUNT) -> None:
    if queue not in FLOOD_JOBS:
        raise FaultError(f"the API feeds queues {', '.join(FLOOD_JOBS)}; not {queue!r}")
    path, job = FLOOD_JOBS[queue]
    started = time.monotonic()
    with ThreadPoolExecutor(FLOOD_CONCURRENCY, thread_name_prefix="flood") as pool:
        codes = list(pool.map(lambda i: _post(rt.url("api", path), job(i, rt)), range(count)))
    elapsed = time.monotonic() - started
    accepted, refused = codes.count(202), codes.count(429)
    other = count - accepted - refused
    say(
        f"flood: sent {count} jobs to POST {path} (queue {queue}) in {elapsed:.1f} s:"
        f" {accepted} accepted (202), {refused} refused by admission control (429: the"
        f" stack's API admits at most {ADMISSION_LIMIT} waiting per queue), {other} other."
    )
    if queue == "email":
        say(
            f"The e-mail worker drains at most {email_rate_limit(rt.opts.rate)} (its rate"
            " limit), a little less while the traffic sends e-mails too."
        )
    say("It heals by itself: the backlog drains.")
    say_watch(
        rt,
        Watch(
            status_page=f"queue {queue}: length and oldest message age climb, then fall",
            metric=f'celery_queue_length{{queue_name="{queue}"}}',
            alerts=(
                "CeleryQueueDrainTimeTooLong",
                "CeleryQueueBacklogGrowing",
                "CeleryQueueOldestMessageTooOld",
            ),
            panels=PANELS["flood"],
        ),
        say,
    )


def _post(url: str, body: dict[str, Any]) -> int | None:
    request = urllib.request.Request(  # noqa: S310 - http:// URLs of our own API
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - our API
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def stop_beat(rt: Runtime, say: Say, seconds: float | None = None) -> None:
    # The alert fires once the shortest periodic task's longest allowed gap has passed.
    gaps = setting(rt.settings, "periodic_tasks", {}) or {"": 90.0}
    hold, how_long = hold_for(
        rt,
        "stop-beat",
        "CeleryPeriodicTaskMissed",
        15.0 if rt.fast else 60.0,
        seconds,
        detection=min(gaps.values()),
    )
    pid = rt.supervisor.hold("beat", hold, signal.SIGTERM)
    say(f"stop-beat: stopped celery beat (pid {pid}): periodic tasks are no longer sent.")
    say(f"It stays down {how_long}; then beat restarts and catches up.")
    say_watch(
        rt,
        Watch(
            status_page="the sent rate drops by the periodic tasks' share",
            metric="time() - celery_task_last_sent_timestamp_seconds",
            alerts=("CeleryPeriodicTaskMissed",),
            panels=PANELS["stop-beat"],
        ),
        say,
    )


def slow_task(rt: Runtime, say: Say, sleep: float = 60.0) -> None:
    sent = subprocess.run(
        [
            str(BIN / "celery"),
            *("-A", "workload.app", "call", SLOW_TASK),
            *("--args", "[0]", "--kwargs", json.dumps({"sleep": sleep}), "--queue", "default"),
        ],
        env=rt.supervisor.env,
        cwd=rt.supervisor.cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if sent.returncode != 0:
        raise FaultError(f"could not send the task: {(sent.stderr or sent.stdout).strip()[-300:]}")
    say(
        f"slow-task: sent {SLOW_TASK}(0, sleep={sleep:g}) to queue default"
        f" (task {sent.stdout.strip()}); it holds one of the default worker's 2 slots."
    )
    say("It heals by itself: the task ends (dummy_task sleeps at most 60 s).")
    alert = "CeleryTaskRunningTooLong"
    limits = setting(rt.settings, "running_too_long_per_task", {})
    limit = limits.get(SLOW_TASK, setting(rt.settings, "running_too_long_seconds"))
    if limit is not None and alert in rt.alerts.alert_for:
        fires_after = limit + rt.alerts.alert_for[alert]
        if fires_after < sleep:
            say(f"{alert} fires after about {_seconds(fires_after)} (its limit + for:).")
        else:
            say(
                f"{alert} needs {_seconds(fires_after)} (its limit + for:), longer than the"
                " task: start the stack with --fast to see it fire."
            )
    say_watch(
        rt,
        Watch(
            status_page=f"worker {worker_hostname('default')}: 1 active task",
            metric=f'celery_task_oldest_running_age_seconds{{name="{SLOW_TASK}"}}',
            alerts=("CeleryTaskRunningTooLong",),
            panels=PANELS["slow-task"],
        ),
        say,
    )


@dataclass(frozen=True)
class Fault:
    summary: str
    run: Callable[..., None]


FAULTS = {
    "kill-worker": Fault(
        "SIGKILL one worker: it shows as down, CeleryWorkerDown fires.", kill_worker
    ),
    "stop-redis": Fault("Stop Redis for 30 s or more: CeleryBrokerUnreachable fires.", stop_redis),
    "flood": Fault("A burst of jobs on one queue: backlog, drain time, 429s.", flood),
    "stop-beat": Fault("Stop celery beat: CeleryPeriodicTaskMissed fires.", stop_beat),
    "slow-task": Fault("A long task: CeleryTaskRunningTooLong fires.", slow_task),
}


def cause(rt: Runtime, name: str, options: dict[str, Any], say: Say) -> None:
    """Run fault ``name`` with ``options`` (its keyword arguments) against the stack."""
    if name not in FAULTS:
        raise FaultError(f"no fault {name!r}; choose one of {', '.join(FAULTS)}")
    try:
        FAULTS[name].run(rt, say, **{k: v for k, v in options.items() if v is not None})
    except ValueError as exc:  # e.g. the component is already down for another fault
        raise FaultError(str(exc)) from None

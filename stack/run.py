"""``scripts/stack``: start everything, supervise it until Ctrl-C, stop everything.

Order: Redis, the SMTP sink, one worker per queue, beat, the API, the exporter, Prometheus
and Alertmanager; once the HTTP ones answer, the traffic generator. The stack's own servers
(Alertmanager's webhook and the runbooks, the sample images, the control socket) run in this
process. Every child runs in its own process group, signalled whole, so nothing is left.
"""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from alerts.configs import EXPORTER_JOB
from stack import components as c
from stack.alerting import DEFAULT_TIMING, FAST_TIMING, settings_for, write_configs
from stack.console import Console, status_line
from stack.control import ControlServer, answering, socket_path
from stack.faults import cause
from stack.ports import busy_port
from stack.runtime import Runtime
from stack.servers import AlertLog, image_server, stack_server
from stack.supervisor import CrashLoop, Supervisor

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_STATE = ROOT / "var" / "stack"
STATUS_EVERY = 2.0
TICK = 0.25


class StackError(Exception):
    """The stack cannot start or had to stop: one line (plus a log tail) for the user."""


def preflight(opts: c.Options) -> None:
    """Everything that can be refused before a single process starts."""
    for binary in c.NEEDED:
        try:
            c.find_binary(binary)
        except c.MissingBinary as exc:
            raise StackError(str(exc)) from None
    if answering(socket_path(opts.state)):
        raise StackError(
            f"a stack is already running with state directory {opts.state}"
            " (scripts/stack status shows it; Ctrl-C it, or use another --state-dir)"
        )
    problem = busy_port(opts.ports)
    if problem:
        raise StackError(problem)


def run(
    opts: c.Options,
    fast: bool,
    alert_overrides: Mapping[str, Any],
    duration: float,
    stop: threading.Event,
) -> None:
    settings = settings_for(fast, alert_overrides, opts.ports)  # a typo fails before anything
    preflight(opts)
    opts.state.mkdir(parents=True, exist_ok=True, mode=0o700)
    timing = FAST_TIMING if fast else DEFAULT_TIMING
    configs = write_configs(opts.state, opts.ports, settings, timing)
    console = Console()
    alert_log = AlertLog(
        lambda note: console.event(f"alert {note.alertname} {note.status}: {note.summary}")
    )
    supervisor = Supervisor(c.environment(opts), ROOT, opts.state / "logs", console.event)
    rt = Runtime(opts, supervisor, alert_log, configs, settings, timing, fast)
    try:
        webhook = stack_server(opts.ports.webhook, alert_log)
        images = image_server(opts.ports.images)
    except OSError as exc:  # a port taken since preflight
        raise StackError(f"cannot serve the stack's own HTTP: {exc}") from None
    control = ControlServer(socket_path(opts.state), lambda req, say: handle(rt, req, say))
    control.start()
    try:
        start_components(rt, stop)
        if not stop.is_set():
            console.say(urls(rt))
            supervise(rt, console, stop, duration)
    except CrashLoop as exc:
        raise StackError(f"the stack stopped: {exc}") from None
    finally:
        console.say("stopping...")
        control.stop()
        supervisor.stop_all()
        webhook.shutdown()
        images.stop()
        console.say("stopped; nothing left running.")


def handle(rt: Runtime, request: dict[str, Any], say: Callable[[str], None]) -> Any:
    """A request on the control socket: ``status`` or ``fault``."""
    if request.get("command") == "status":
        return rt.status()
    if request.get("command") == "fault":
        cause(rt, str(request.get("name")), dict(request.get("options") or {}), say)
        return rt.status()
    raise ValueError(f"unknown command {request.get('command')!r}")


def start_components(rt: Runtime, stop: threading.Event) -> None:
    opts, sup = rt.opts, rt.supervisor
    sup.start("redis", c.redis(opts))
    sup.start("smtp", c.smtp(opts))
    for name, queue, pool, concurrency in c.WORKERS:
        sup.start(f"worker-{name}", c.worker(queue, pool, concurrency, name))
    sup.start("beat", c.beat(opts))
    sup.start("api", c.api(opts))
    from workload.app import QUEUES  # the workload's own list (reads only the environment)

    sup.start("exporter", c.exporter(opts, QUEUES))
    sup.start("prometheus", c.prometheus(opts, rt.alerts.prometheus))
    sup.start("alertmanager", c.alertmanager(opts, rt.alerts.alertmanager))
    for what, url in (
        ("the exporter", rt.url("exporter", "/readyz")),
        ("the API", rt.url("api", "/healthz")),
        ("Prometheus", rt.url("prometheus", "/-/ready")),
        ("Alertmanager", rt.url("alertmanager", "/-/ready")),
    ):
        wait_http(rt, url, what, stop)
    enable_rules(rt, stop)
    if stop.is_set():  # Ctrl-C while starting
        return
    rt.detect_uis()
    if opts.traffic:
        sup.start("traffic", c.traffic(opts))


def enable_rules(rt: Runtime, stop: threading.Event, timeout: float = 60) -> None:
    """Load the rules into Prometheus once it has scraped the exporter (see AlertConfig)."""
    query = urllib.parse.urlencode({"query": f'up{{job="{EXPORTER_JOB}"}} == 1'})
    until(
        rt,
        stop,
        timeout,
        "Prometheus' first scrape of the exporter",
        lambda: _data(rt.url("prometheus", f"/api/v1/query?{query}"))["result"],
    )
    rt.alerts.enable_rules()
    rt.supervisor.signal("prometheus", signal.SIGHUP)
    until(
        rt,
        stop,
        timeout,
        "Prometheus to load the rules",
        lambda: _data(rt.url("prometheus", "/api/v1/rules"))["groups"],
    )


def until(
    rt: Runtime, stop: threading.Event, timeout: float, what: str, check: Callable[[], Any]
) -> None:
    """Poll ``check`` (exceptions count as "not yet"), supervising meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stop.is_set():
        rt.supervisor.tick()
        try:
            if check():
                return
        except (OSError, ValueError, KeyError):
            pass
        stop.wait(0.2)
    if not stop.is_set():
        raise StackError(f"timed out after {timeout:.0f} s waiting for {what}")


def _data(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - our own http:// URLs
        return json.loads(response.read())["data"]


def wait_http(rt: Runtime, url: str, what: str, stop: threading.Event, timeout: float = 90) -> None:
    """Wait for ``url`` to answer, supervising meanwhile (a crash at start is restarted too)."""

    def answers() -> bool:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - our own http:// URLs
            return response.status < 500

    until(rt, stop, timeout, f"{what} to come up ({url})", answers)


def supervise(rt: Runtime, console: Console, stop: threading.Event, duration: float) -> None:
    started = time.monotonic()
    next_status = 0.0
    previous: dict[str, Any] = {}
    while not stop.wait(TICK):
        rt.supervisor.tick()
        now = time.monotonic()
        if now >= next_status:
            next_status = now + STATUS_EVERY
            exporter = rt.url("exporter")
            console.status(
                status_line(exporter, rt.supervisor, rt.alert_log.firing_names(), previous)
            )
        if duration and now - started >= duration:
            break


def urls(rt: Runtime) -> str:
    p = rt.opts.ports
    state_flag = "" if rt.opts.state == DEFAULT_STATE else f"; add --state-dir {rt.opts.state}"
    mode = (
        "fast alerts: second-scale windows (alerts.settings.fast)"
        if rt.fast
        else "the project's alert thresholds (alerts/settings.py)"
    )
    return f"""
celery-observatory is running (state and logs in {rt.opts.state}; {mode})

  API            {rt.url("api")}   (POST /report /email /thumb, GET /status/<id>)
  status page    {rt.url("exporter", "/")}
  metrics        {rt.url("exporter", "/metrics")}
  Prometheus     {rt.prometheus_alerts_url()}
  Alertmanager   {rt.alertmanager_url()}
  runbooks       {rt.url("webhook", "/runbooks/")}
  sample images  {rt.url("images", "/images/640x480.png")}   (allowed for /thumb)
  Redis          redis://127.0.0.1:{p.redis}/0

Cause a fault and watch it heal: scripts/stack fault --help  (kill-worker, stop-redis, flood,
stop-beat, slow-task{state_flag}). Components that crash are restarted. Ctrl-C stops everything.
"""

"""The whole observable system on one machine, without Docker: ``scripts/stack``.

Starts, in order: redis-server (own port and data dir, AOF on), an SMTP sink, one Celery
worker per queue (cpu prefork, io threads, email, default, the dead-letter consumer), the API
under gunicorn, the exporter, Prometheus with the project's rules, Alertmanager (whose
webhook is a receiver in this process) and the traffic generator. Prints the URLs, keeps one
status line fresh, and stops everything on Ctrl-C or SIGTERM: every child runs in its own
process group, which is signalled whole, so nothing is left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import click
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from alerts.configs import alertmanager_config, prometheus_config  # noqa: E402

BIN = Path(sys.executable).parent
QUEUES = ("cpu", "io", "email", "default", "dead_letter")
# (name, queues, pool, concurrency) -- the contract's worker commands.
WORKERS = (
    ("cpu", "cpu", "prefork", 2),
    ("io", "io", "threads", 8),
    ("email", "email", "prefork", 1),
    ("default", "default", "prefork", 2),
    ("dlq", "dead_letter", "prefork", 1),
)
NEEDED = {  # binary -> how to get it
    "redis-server": "sudo apt-get install redis-server",
    "prometheus": "sudo apt-get install prometheus",
    "alertmanager": "sudo apt-get install prometheus-alertmanager",
}


class StackError(click.ClickException):
    """One clear line, exit code 1."""


def find_binary(name: str) -> str:
    candidates = [name] + (["prometheus-alertmanager"] if name == "alertmanager" else [])
    for candidate in candidates:
        path = shutil.which(candidate)
        if path:
            return path
    raise StackError(f"{name} is not installed: {NEEDED[name]}")


@dataclass
class Ports:
    redis: int
    api: int
    exporter: int
    prometheus: int
    alertmanager: int
    smtp: int
    images: int
    webhook: int


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path


@dataclass
class Stack:
    state: Path
    ports: Ports
    stack_id: str = field(
        default_factory=lambda: os.environ.get("CELERY_OBSERVATORY_STACK") or uuid.uuid4().hex[:12]
    )
    children: list[Child] = field(default_factory=list)
    alerts: dict[str, str] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        """What every child shares: the broker, the workload's settings, the stack's id."""
        broker = f"redis://127.0.0.1:{self.ports.redis}"
        return {
            **os.environ,
            "CELERY_BROKER_URL": f"{broker}/0",
            "CELERY_RESULT_BACKEND": f"{broker}/1",
            "WORKLOAD_SMTP_HOST": "127.0.0.1",
            "WORKLOAD_SMTP_PORT": str(self.ports.smtp),
            # The traffic generator serves thumbnail sources on this machine.
            "WORKLOAD_ALLOWED_HOSTS": "127.0.0.1",
            "WORKLOAD_ALLOW_PRIVATE_NETWORKS": "true",
            "WORKLOAD_REPORT_DIR": str(self.state / "reports"),
            "WORKLOAD_THUMBNAIL_DIR": str(self.state / "thumbnails"),
            "WORKLOAD_EMAIL_RATE_LIMIT": "60/m",
            "PYTHONUNBUFFERED": "1",
            "CELERY_OBSERVATORY_STACK": self.stack_id,  # how tests find every process we own
        }

    def start(self, name: str, argv: list[str]) -> Child:
        log = self.state / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env(),
                cwd=ROOT,
                start_new_session=True,
            )
        child = Child(name, proc, log)
        self.children.append(child)
        return child

    def stop(self) -> None:
        """SIGTERM every group (newest first), then SIGKILL whatever is left after 15 s."""
        for child in reversed(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for child in reversed(self.children):
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        for child in self.children:  # pool processes and anything still there
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.proc.wait(timeout=5)

    def dead(self) -> Child | None:
        return next((c for c in self.children if c.proc.poll() is not None), None)


def check_ports_free(ports: Ports) -> None:
    """Fail before starting anything if a port is taken, naming the flag that moves it."""
    for name, port in vars(ports).items():
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                flag = f"--{name.replace('_', '-')}-port"
                msg = f"port {port} ({name}) is in use: choose another with {flag}"
                raise StackError(msg) from None


def wait_http(url: str, timeout: float, what: str, stack: Stack) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (dead := stack.dead()) is not None:
            raise StackError(f"{dead.name} exited while starting; see {dead.log}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - our own http:// URLs
            if response.status < 500:
                return
        time.sleep(0.2)
    raise StackError(f"{what} did not come up within {timeout:.0f} s ({url})")


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def webhook_receiver(stack: Stack) -> ThreadingHTTPServer:
    """Alertmanager's webhook: remembers which alerts fire, for the status line."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with contextlib.suppress(ValueError):
                for alert in json.loads(body).get("alerts", []):
                    name = alert.get("labels", {}).get("alertname", "?")
                    key = f"{name}{alert.get('labels', {}).get('queue_name', '')}"
                    if alert.get("status") == "firing":
                        stack.alerts[key] = name
                    else:
                        stack.alerts.pop(key, None)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", stack.ports.webhook), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def start_all(stack: Stack, rate: float, traffic: bool) -> None:
    state, ports = stack.state, stack.ports
    redis_dir = state / "redis"
    redis_dir.mkdir(parents=True, exist_ok=True)
    stack.start(
        "redis",
        [
            find_binary("redis-server"),
            "--port",
            str(ports.redis),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(redis_dir),
            "--appendonly",
            "yes",
            "--save",
            "",
        ],
    )
    stack.start(
        "smtp",
        [
            str(BIN / "python"),
            "-m",
            "aiosmtpd",
            "-n",
            "-c",
            "aiosmtpd.handlers.Sink",
            "-l",
            f"127.0.0.1:{ports.smtp}",
        ],
    )
    for name, queue, pool, concurrency in WORKERS:
        stack.start(
            f"worker-{name}",
            [
                str(BIN / "celery"),
                "-A",
                "workload.app",
                "worker",
                "-Q",
                queue,
                "-P",
                pool,
                "-c",
                str(concurrency),
                "-E",
                "-n",
                f"{name}@%h",
                "--without-gossip",
                "--without-mingle",
            ],
        )
    stack.start("api", [str(BIN / "workload-api"), "--bind", f"127.0.0.1:{ports.api}"])
    stack.start(
        "exporter",
        [
            str(BIN / "celery-observatory-exporter"),
            "--broker-url",
            f"redis://127.0.0.1:{ports.redis}/0",
            "--web.listen-address",
            f"127.0.0.1:{ports.exporter}",
            "--queues",
            ",".join(QUEUES),
            "--inspect-interval",
            "10",
        ],
    )
    rules = ROOT / "alerts" / "celery-observatory.rules.yml"
    prom_config = write_yaml(
        state / "prometheus.yml",
        prometheus_config(
            [f"127.0.0.1:{ports.exporter}"],
            [str(rules)],
            [f"127.0.0.1:{ports.alertmanager}"],
            scrape_interval="5s",
        ),
    )
    stack.start(
        "prometheus",
        [
            find_binary("prometheus"),
            f"--config.file={prom_config}",
            f"--storage.tsdb.path={state / 'prometheus'}",
            f"--web.listen-address=127.0.0.1:{ports.prometheus}",
        ],
    )
    am_config = write_yaml(
        state / "alertmanager.yml",
        alertmanager_config(f"http://127.0.0.1:{ports.webhook}/alerts", group_wait="10s"),
    )
    stack.start(
        "alertmanager",
        [
            find_binary("alertmanager"),
            f"--config.file={am_config}",
            f"--storage.path={state / 'alertmanager'}",
            f"--web.listen-address=127.0.0.1:{ports.alertmanager}",
            "--cluster.listen-address=",
        ],
    )
    wait_http(f"http://127.0.0.1:{ports.exporter}/readyz", 60, "the exporter", stack)
    wait_http(f"http://127.0.0.1:{ports.api}/healthz", 60, "the API", stack)
    wait_http(f"http://127.0.0.1:{ports.prometheus}/-/ready", 60, "Prometheus", stack)
    wait_http(f"http://127.0.0.1:{ports.alertmanager}/-/ready", 60, "Alertmanager", stack)
    if traffic:
        stack.start(
            "traffic",
            [
                str(BIN / "workload-traffic"),
                "--api-url",
                f"http://127.0.0.1:{ports.api}",
                "--rate",
                str(rate),
                "--serve-images",
                f"127.0.0.1:{ports.images}",
            ],
        )


def status_line(stack: Stack, previous: dict[str, Any]) -> str:
    """Queues, workers, rates and firing alerts, from the exporter's /api/status."""
    try:
        url = f"http://127.0.0.1:{stack.ports.exporter}/api/status"
        with urllib.request.urlopen(url, timeout=2) as response:
            status = json.loads(response.read())
    except OSError as exc:
        return f"exporter unreachable ({exc})"
    totals = status["totals"]
    rates = ""
    if previous:
        elapsed = max(0.001, status["now"] - previous["now"])
        ok = (totals["succeeded"] - previous["totals"]["succeeded"]) / elapsed
        failed = (totals["failed"] - previous["totals"]["failed"]) / elapsed
        rates = f" | {ok:.1f} ok/s {failed:.1f} failed/s"
    previous.clear()
    previous.update(status)
    waiting = sum(q["length"] for q in status["queues"])
    up = sum(1 for w in status["workers"] if w["up"])
    alerts = ", ".join(sorted(set(stack.alerts.values()))) or "none"
    return (
        f"workers {up}/{len(status['workers'])} up | {waiting} waiting"
        f" | {totals['succeeded']} succeeded {totals['failed']} failed{rates}"
        f" | alerts: {alerts}"
    )


def print_urls(stack: Stack) -> None:
    p = stack.ports
    click.echo(
        f"""
celery-observatory is running (state and logs in {stack.state})

  API            http://127.0.0.1:{p.api}   (POST /report /email /thumb, GET /status/<id>)
  status page    http://127.0.0.1:{p.exporter}/
  metrics        http://127.0.0.1:{p.exporter}/metrics
  Prometheus     http://127.0.0.1:{p.prometheus}/alerts
  Alertmanager   http://127.0.0.1:{p.alertmanager}/
  Redis          redis://127.0.0.1:{p.redis}/0

Ctrl-C stops everything.
"""
    )


@click.command(context_settings={"max_content_width": 100})
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=ROOT / "var" / "stack",
    show_default="var/stack",
    envvar="STACK_STATE_DIR",
    help="Data and logs of every component.",
)
@click.option(
    "--rate",
    type=float,
    default=2.0,
    show_default=True,
    envvar="STACK_RATE",
    help="Traffic generator requests/s.",
)
@click.option("--no-traffic", is_flag=True, help="Start no traffic generator.")
@click.option(
    "--duration",
    type=float,
    default=0.0,
    envvar="STACK_DURATION",
    help="Stop after this many seconds (0: run until Ctrl-C).",
)
@click.option("--redis-port", type=int, default=6380, show_default=True, envvar="STACK_REDIS_PORT")
@click.option("--api-port", type=int, default=8000, show_default=True, envvar="STACK_API_PORT")
@click.option(
    "--exporter-port", type=int, default=9808, show_default=True, envvar="STACK_EXPORTER_PORT"
)
@click.option(
    "--prometheus-port", type=int, default=9090, show_default=True, envvar="STACK_PROMETHEUS_PORT"
)
@click.option(
    "--alertmanager-port",
    type=int,
    default=9093,
    show_default=True,
    envvar="STACK_ALERTMANAGER_PORT",
)
@click.option("--smtp-port", type=int, default=8025, show_default=True, envvar="STACK_SMTP_PORT")
@click.option(
    "--images-port", type=int, default=8081, show_default=True, envvar="STACK_IMAGES_PORT"
)
@click.option(
    "--webhook-port", type=int, default=5001, show_default=True, envvar="STACK_WEBHOOK_PORT"
)
def main(state_dir: Path, rate: float, no_traffic: bool, duration: float, **ports: int) -> None:
    """Run Redis, workers, the API, traffic, the exporter, Prometheus and Alertmanager."""
    for binary in NEEDED:
        find_binary(binary)
    stack = Stack(
        state_dir.resolve(), Ports(**{k.removesuffix("_port"): v for k, v in ports.items()})
    )
    check_ports_free(stack.ports)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    webhook = webhook_receiver(stack)
    try:
        start_all(stack, rate, traffic=not no_traffic)
        print_urls(stack)
        run(stack, stop, duration)
    finally:
        click.echo("\nstopping...", err=True)
        stack.stop()
        webhook.shutdown()
        click.echo("stopped; nothing left running.", err=True)


def run(stack: Stack, stop: threading.Event, duration: float) -> None:
    started = time.monotonic()
    previous: dict[str, Any] = {}
    tty = sys.stdout.isatty()
    while not stop.wait(2.0):
        if (dead := stack.dead()) is not None:
            raise StackError(f"{dead.name} exited (code {dead.proc.returncode}); see {dead.log}")
        line = status_line(stack, previous)
        click.echo(f"\r\x1b[K{line}" if tty else line, nl=not tty)
        if duration and time.monotonic() - started >= duration:
            break


if __name__ == "__main__":
    main()

"""What the stack runs: every component's command line and the environment they share."""

from __future__ import annotations

import math
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from stack.ports import HOST, Ports

BIN = Path(sys.executable).parent
# (component, queue, pool, concurrency): the worker commands compose, k8s and the docs use.
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
# The demo's traffic makes this share of reports and thumbnails fail on purpose; half of the
# failing reports and a quarter of the failing thumbnails are retried and then succeed, the
# rest end in the dead-letter queue. Final failures are then about 0.15% of reports and 0.23%
# of thumbnails: 20 times below CeleryTaskFailureRatioHigh's 5%, and a quarter of the error
# budget of a 99% success objective. (The traffic generator's own default, 10%, fails
# thumbnails at 7.5% and fires that alert.)
DEMO_FAILURE_RATIO = 0.003
# Longer than any task of the workload (dummy_task sleeps at most 60 s), much shorter than the
# workload's default hour: a task lost with a killed worker is redelivered within minutes, so
# the fault tour ends in CeleryTaskRedelivered rather than an hour-long stale delivery.
VISIBILITY_TIMEOUT = 300
# Admission control: the API answers 429 past this many waiting messages in a queue. The
# demo's queues stay nearly empty; a flood (stack.faults) runs into it.
ADMISSION_LIMIT = 100


class MissingBinary(Exception):
    """A system binary the stack needs is not installed; the message says how to get it."""


def find_binary(name: str) -> str:
    candidates = [name] + (["prometheus-alertmanager"] if name == "alertmanager" else [])
    for candidate in candidates:
        path = shutil.which(candidate)
        if path:
            return path
    raise MissingBinary(f"{name} is not installed: {NEEDED[name]}")


def worker_hostname(component: str) -> str:
    """The Celery node name of a worker component (``email`` -> ``email@<this host>``)."""
    import socket

    return f"{component}@{socket.gethostname()}"


def email_rate_limit(rate: float) -> str:
    """The e-mail task's rate limit: 30/m per request/s of traffic, at least 60/m.

    About 2 in 11 of the traffic's requests are e-mails, so this leaves the single e-mail
    worker almost three times the headroom it needs at any --rate: the e-mail queue stays
    empty unless flooded, and drains at a known pace when it is.
    """
    return f"{max(60, math.ceil(30 * rate))}/m"


@dataclass(frozen=True)
class Options:
    """How this stack runs (from the command line)."""

    state: Path
    ports: Ports
    stack_id: str
    rate: float = 2.0
    failure_ratio: float = DEMO_FAILURE_RATIO
    traffic: bool = True
    inspect_interval: float = 10.0


def environment(opts: Options) -> dict[str, str]:
    """What every child shares: the broker, the workload's settings, the stack's id."""
    broker = f"redis://{HOST}:{opts.ports.redis}"
    return {
        **os.environ,
        "CELERY_BROKER_URL": f"{broker}/0",
        "CELERY_RESULT_BACKEND": f"{broker}/1",
        "WORKLOAD_SMTP_HOST": HOST,
        "WORKLOAD_SMTP_PORT": str(opts.ports.smtp),
        # Thumbnail sources (the traffic's and the docs' example) are served by the stack on
        # 127.0.0.1 (--images-port): allow that host, and nothing else.
        "WORKLOAD_ALLOWED_HOSTS": HOST,
        "WORKLOAD_ALLOW_PRIVATE_NETWORKS": "true",
        "WORKLOAD_REPORT_DIR": str(opts.state / "reports"),
        "WORKLOAD_THUMBNAIL_DIR": str(opts.state / "thumbnails"),
        "WORKLOAD_EMAIL_RATE_LIMIT": email_rate_limit(opts.rate),
        "WORKLOAD_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT),
        "WORKLOAD_API_MAX_BACKLOG": str(ADMISSION_LIMIT),
        "WORKLOAD_STATE_DIR": str(opts.state / "workload"),
        "PYTHONUNBUFFERED": "1",
        "CELERY_OBSERVATORY_STACK": opts.stack_id,  # how tests find every process we own
    }


def redis(opts: Options) -> list[str]:
    data = opts.state / "redis"
    data.mkdir(parents=True, exist_ok=True)
    return [
        find_binary("redis-server"),
        *("--port", str(opts.ports.redis), "--bind", HOST, "--dir", str(data)),
        *("--appendonly", "yes", "--save", ""),
    ]


def smtp(opts: Options) -> list[str]:
    return [
        str(BIN / "python"),
        *("-m", "aiosmtpd", "-n", "-c", "aiosmtpd.handlers.Sink"),
        *("-l", f"{HOST}:{opts.ports.smtp}"),
    ]


def worker(queue: str, pool: str, concurrency: int, node: str) -> list[str]:
    return [
        str(BIN / "celery"),
        *("-A", "workload.app", "worker", "-Q", queue, "-P", pool, "-c", str(concurrency)),
        *("-E", "-n", f"{node}@%h", "--without-gossip", "--without-mingle"),
    ]


def beat(opts: Options) -> list[str]:
    """celery beat, with its schedule (a shelve file: beat's own bookkeeping) in the state dir."""
    schedule = opts.state / "beat" / "celerybeat-schedule"
    schedule.parent.mkdir(parents=True, exist_ok=True)
    return [str(BIN / "celery"), "-A", "workload.app", "beat", "-s", str(schedule), "-l", "INFO"]


def api(opts: Options) -> list[str]:
    return [str(BIN / "workload-api"), "--bind", f"{HOST}:{opts.ports.api}"]


def exporter(opts: Options, queues: tuple[str, ...]) -> list[str]:
    return [
        str(BIN / "celery-observatory-exporter"),
        *("--broker-url", f"redis://{HOST}:{opts.ports.redis}/0"),
        *("--web.listen-address", f"{HOST}:{opts.ports.exporter}"),
        *("--queues", ",".join(queues)),
        *("--inspect-interval", f"{opts.inspect_interval:g}"),
        *("--visibility-timeout", str(VISIBILITY_TIMEOUT)),
    ]


def prometheus(opts: Options, config: Path) -> list[str]:
    return [
        find_binary("prometheus"),
        f"--config.file={config}",
        f"--storage.tsdb.path={opts.state / 'prometheus'}",
        f"--web.listen-address={HOST}:{opts.ports.prometheus}",
    ]


def alertmanager(opts: Options, config: Path) -> list[str]:
    return [
        find_binary("alertmanager"),
        f"--config.file={config}",
        f"--storage.path={opts.state / 'alertmanager'}",
        f"--web.listen-address={HOST}:{opts.ports.alertmanager}",
        "--cluster.listen-address=",
    ]


def traffic(opts: Options) -> list[str]:
    """The traffic generator; thumbnails come from the stack's image server, not its own."""
    return [
        str(BIN / "workload-traffic"),
        *("--api-url", f"http://{HOST}:{opts.ports.api}"),
        *("--rate", f"{opts.rate:g}", "--failure-ratio", f"{opts.failure_ratio:g}"),
        *("--serve-images", "off", "--image-base-url", f"http://{HOST}:{opts.ports.images}"),
    ]

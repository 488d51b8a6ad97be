"""The article's benchmark: a ``group`` of N ``dummy_task``, timed until every result is back.

    python bench/article.py -n 10000                       # against running workers
    python bench/article.py --redis-server --worker "-P prefork -c 2"   # all in one

Without ``--worker`` it uses workers that already consume the ``default`` queue of
CELERY_BROKER_URL. With ``--redis-server`` it starts a private redis-server on a free port
first; with ``--worker ARGS`` (repeatable) it starts
``celery -A workload.app worker -Q default -E ARGS`` for the run and stops it afterwards.
Prints tasks/s with a progress bar and writes the figures as JSON (``--out``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bench" / "out" / "article.json"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def private_redis() -> Iterator[str]:
    """A throw-away redis-server on a free port (never the one on 6379)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise click.ClickException("redis-server not found: apt-get install redis-server")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as data:
        argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", data]  # fmt: skip
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                    break
                time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}"
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def worker_argv(args: str, index: int) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "workload.app", "worker", "-Q", "default",
            "-E", "-l", "WARNING", "--without-gossip", "--without-mingle",
            "-n", f"bench{index}@%h", *shlex.split(args)]  # fmt: skip


@contextlib.contextmanager
def workers(specs: tuple[str, ...], env: dict[str, str], app: Any) -> Iterator[list[str]]:
    """Start the requested workers and wait until each answers a ping."""
    procs = []
    commands = [worker_argv(spec, i) for i, spec in enumerate(specs)]
    try:
        for argv in commands:
            procs.append(subprocess.Popen(argv, env=env, cwd=ROOT, start_new_session=True))
        deadline = time.monotonic() + 60
        while specs and len(app.control.ping(timeout=0.5) or []) < len(specs):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise click.ClickException("the benchmark workers did not start")
        yield [shlex.join(argv[1:]) for argv in commands]
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 15)
        for proc in procs:
            proc.wait(timeout=60)


def run(n: int, timeout: float, app: Any) -> dict[str, Any]:
    from celery import group

    from workload.tasks import dummy_task

    started = time.perf_counter()
    result = group(dummy_task.s(i) for i in range(n)).apply_async()
    published = time.perf_counter()
    total = 0
    with click.progressbar(length=n, label="results", file=sys.stderr) as bar:

        def arrived(_task_id: str, value: int) -> None:
            nonlocal total
            total += value
            bar.update(1)

        result.join_native(timeout=timeout, callback=arrived)
    finished = time.perf_counter()
    if total != n * (n - 1) // 2:
        raise click.ClickException(f"wrong results: sum {total}, expected {n * (n - 1) // 2}")
    elapsed = finished - started
    return {
        "tasks": n,
        "seconds": round(elapsed, 3),
        "tasks_per_second": round(n / elapsed, 1),
        "publish_seconds": round(published - started, 3),
        "publish_per_second": round(n / (published - started), 1),
    }


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-n", "--tasks", "n", type=click.IntRange(min=1), default=10_000, show_default=True)
@click.option(
    "--timeout",
    type=float,
    default=600.0,
    show_default=True,
    help="Seconds to wait for all results.",
)
@click.option(
    "--redis-server",
    "own_redis",
    is_flag=True,
    help="Start a private redis-server on a free port for the run.",
)
@click.option(
    "--worker",
    "worker_specs",
    multiple=True,
    help='Start a worker with these extra arguments, e.g. "-P threads -c 8".',
)
@click.option("--label", default="", help="A name for this configuration in the JSON.")
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), default=DEFAULT_OUT, show_default=True
)
def main(n: int, timeout: float, own_redis: bool, worker_specs: tuple[str, ...], label: str,
         out: Path) -> None:  # fmt: skip
    """Time a group of N dummy_task round trips, as in the article."""
    with contextlib.ExitStack() as stack:
        if own_redis:
            url = stack.enter_context(private_redis())
            os.environ["CELERY_BROKER_URL"] = f"{url}/0"
            os.environ["CELERY_RESULT_BACKEND"] = f"{url}/1"
        from workload.app import app, settings

        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        commands = stack.enter_context(workers(worker_specs, env, app))
        figures = run(n, timeout, app)
    record = {
        "label": label,
        **figures,
        "worker_commands": commands,
        "prefetch_multiplier": settings.prefetch_multiplier,
        "acks_late": True,
        "task_events": True,
        "result_backend": "redis",
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "celery": __import__("celery").__version__,
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    click.echo(
        f"{n} tasks in {figures['seconds']} s: {figures['tasks_per_second']} tasks/s "
        f"(publishing: {figures['publish_per_second']}/s); written to {out}"
    )


if __name__ == "__main__":
    main()

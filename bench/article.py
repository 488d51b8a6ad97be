"""The article's benchmark: a ``group`` of N ``dummy_task``, timed until every result is back.

    python bench/article.py -n 10000                       # against running workers
    python bench/article.py --redis-server --worker "-P prefork -c 2"   # all in one

Without ``--worker`` it uses workers that already consume the ``default`` queue of
CELERY_BROKER_URL. With ``--redis-server`` it starts a private redis-server on a free port
first; with ``--worker ARGS`` (repeatable) it starts
``celery -A workload.app worker -Q default -E ARGS`` for the run and stops it afterwards.
Prints tasks/s with a progress line and writes the figures as JSON (``--out``).

bench/workload.py runs the same group over a table of settings with these functions.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import OUT, PYTHON, ROOT, Progress, private_redis, process

DEFAULT_OUT = OUT / "article.json"
TASK = "workload.tasks.dummy_task"


def worker_argv(
    args: str, index: int, app_module: str = "workload.app", events: bool = True
) -> list[str]:
    """``celery -A <app> worker -Q default [-E] ...`` for one benchmark worker."""
    return [PYTHON, "-m", "celery", "-A", app_module, "worker", "-Q", "default",
            *(["-E"] if events else []), "-l", "WARNING", "--without-gossip",
            "--without-mingle", "-n", f"bench{index}@%h", *shlex.split(args)]  # fmt: skip


@contextlib.contextmanager
def workers(
    specs: tuple[str, ...],
    env: dict[str, str],
    app: Any,
    logs: Path,
    app_module: str = "workload.app",
    events: bool = True,
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Start the requested workers, wait until each answers a ping, stop them afterwards.

    Each worker leads its own process group (its pool processes included).
    """
    commands = [worker_argv(spec, i, app_module, events) for i, spec in enumerate(specs)]
    with contextlib.ExitStack() as stack:
        procs = [
            stack.enter_context(process(argv, logs / f"worker{i}.log", env))
            for i, argv in enumerate(commands)
        ]
        deadline = time.monotonic() + 60
        while specs and len(app.control.ping(timeout=0.5) or []) < len(specs):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise click.ClickException(f"the benchmark workers did not start; see {logs}")
        yield procs


def command_lines(procs: list[subprocess.Popen[bytes]]) -> list[str]:
    """The workers' command lines as run (without the interpreter path)."""
    return [shlex.join(list(proc.args)[1:]) for proc in procs]  # type: ignore[arg-type]


def publish_group(n: int) -> tuple[Any, float]:
    """Send the article's group of N dummy_task; returns its result and the seconds taken."""
    from celery import group

    from workload.tasks import dummy_task

    started = time.perf_counter()
    result = group(dummy_task.s(i) for i in range(n)).apply_async()
    return result, time.perf_counter() - started


def join_results(result: Any, n: int, timeout: float) -> None:
    """Wait for every result (the article's completion signal) and check their sum."""
    total = arrived_count = 0
    progress = Progress("results")

    def arrived(_task_id: str, value: int) -> None:
        nonlocal total, arrived_count
        total += value
        arrived_count += 1
        progress.update(f"{arrived_count:,}/{n:,}")

    result.join_native(timeout=timeout, callback=arrived)
    progress.done(f"{arrived_count:,}/{n:,}")
    if total != n * (n - 1) // 2:
        raise click.ClickException(f"wrong results: sum {total}, expected {n * (n - 1) // 2}")


def figures(n: int, started: float, publish_seconds: float, finished: float) -> dict[str, Any]:
    elapsed = finished - started
    return {
        "tasks": n,
        "seconds": round(elapsed, 3),
        "tasks_per_second": round(n / elapsed, 1),
        "publish_seconds": round(publish_seconds, 3),
        "publish_per_second": round(n / publish_seconds, 1),
    }


def run(n: int, timeout: float) -> dict[str, Any]:
    """The article's measurement: publish the group, then join every result."""
    started = time.perf_counter()
    result, publish_seconds = publish_group(n)
    join_results(result, n, timeout)
    return figures(n, started, publish_seconds, time.perf_counter())


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
            port = stack.enter_context(private_redis())
            os.environ["CELERY_BROKER_URL"] = f"redis://127.0.0.1:{port}/0"
            os.environ["CELERY_RESULT_BACKEND"] = f"redis://127.0.0.1:{port}/1"
        from workload.app import app, settings

        logs = OUT / "logs" / "article"
        env = {"PYTHONPATH": str(ROOT)}
        commands = command_lines(stack.enter_context(workers(worker_specs, env, app, logs)))
        result = run(n, timeout)
    record = {
        "label": label,
        **result,
        "worker_commands": commands,
        "prefetch_multiplier": settings.prefetch_multiplier,
        "acks_late": True,
        "task_events": settings.task_events,
        "result_backend": "redis",
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "celery": __import__("celery").__version__,
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    click.echo(
        f"{n} tasks in {result['seconds']} s: {result['tasks_per_second']} tasks/s "
        f"(publishing: {result['publish_per_second']}/s); written to {out}"
    )


if __name__ == "__main__":
    main()

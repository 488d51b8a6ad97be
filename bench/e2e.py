"""End-to-end benchmark: real workers as fast as they go, and an exporter that misses nothing.

    python bench/e2e.py                                  # N=20,000, settings default,fast+events
    python bench/e2e.py -n 5000 --settings default

For each setting (rows of bench/workload.py's table; events are always on here), in a fresh
process with its own redis-server (default limits: ``client-output-buffer-limit pubsub
32mb 8mb 60``) and an exporter started as bench/ingest.py does:

1. publish N ``workload.tasks.dummy_task`` in bulk (one producer, task-sent events on) while
   no worker runs, so the queue is full when the workers start;
2. start the workers (``celery -A workload.app worker -Q default -E ...``, or bench/benchapp.py
   for settings the workload does not expose) and let them drain the queue;
3. watch the exporter's /api/status until it has counted N successes;
4. account: the exporter's /metrics must hold sent == received == started == succeeded == N
   == what the workers say they ran (``inspect stats``), no failure, nothing dropped or
   rejected; and its pub/sub connection must be the same Redis client (CLIENT ID with a
   pattern subscription) before and after, with no output-buffer kill in the Redis log.

Reports tasks/s reached, the event rate the exporter took in, its lag and backlog peaks and
CPU, prints a table and writes bench/out/e2e.json.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import click

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.article import command_lines, workers
from bench.common import (
    PYTHON,
    ROOT,
    Progress,
    http_json,
    http_text,
    private_redis,
    process_cpu_seconds,
    table,
    wait_until_quiet,
    write_json,
)
from bench.ingest import run_exporter
from bench.workload import SETTINGS, Setting, publish_loop, tasks_run

POLL_SECONDS = 0.1  # the rate's resolution: 0.1 s in a run of 10 s or more
COUNTERS = ("sent", "received", "started", "succeeded", "failed")
BUFFER_KILL = (
    "output buffer limits"  # Redis logs "... closed ASAP for overcoming of output buffer limits"
)


# ----------------------------------------------------------------------------- accounting


def metric_sums(text: str) -> dict[str, float]:
    """Sample name -> sum over its label sets, from a /metrics text page."""
    from prometheus_client.parser import text_string_to_metric_families

    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
    return sums


def subscribers(client_list: list[dict[str, Any]]) -> list[int]:
    """Ids of the Redis clients holding a pattern subscription (the exporter's PSUBSCRIBE)."""
    return [int(c["id"]) for c in client_list if int(c.get("psub", 0)) > 0]


@dataclass
class Check:
    what: str
    expected: Any
    seen: Any

    @property
    def ok(self) -> bool:
        return self.expected == self.seen


def account(
    n: int,
    sums: dict[str, float],
    tasks_ran: int,
    subscriber_before: list[int],
    subscriber_after: list[int],
    redis_log: str,
) -> list[Check]:
    """Every figure the run must get exactly right; each Check says what it saw."""
    total = lambda kind: int(sums.get(f"celery_task_{kind}_total", 0))  # noqa: E731
    checks = [
        Check("tasks the workers ran (inspect stats)", n, tasks_ran),
        Check("celery_task_sent_total", n, total("sent")),
    ]
    # What the exporter saw the workers do must match what the workers say they did.
    checks += [Check(f"celery_task_{kind}_total", tasks_ran, total(kind)) for kind in COUNTERS[1:4]]
    checks += [
        Check("celery_task_failed_total", 0, total("failed")),
        Check(
            "celery_exporter_events_dropped_total",
            0,
            int(sums.get("celery_exporter_events_dropped_total", 0)),
        ),
        Check(
            "celery_exporter_events_rejected_total",
            0,
            int(sums.get("celery_exporter_events_rejected_total", 0)),
        ),
        Check("pattern subscribers before the run", 1, len(subscriber_before)),
        Check(
            "exporter's subscriber CLIENT ID after == before",
            subscriber_before,
            [i for i in subscriber_after if i in subscriber_before],
        ),
        Check("output-buffer kills in the Redis log", 0, redis_log.count(BUFFER_KILL)),
    ]
    return checks


# ----------------------------------------------------------------------------- one run


class Watch:
    """Polls the exporter's /api/status; remembers peaks and when counting started/ended."""

    def __init__(self, status_url: str, n: int) -> None:
        self.url, self.n = status_url, n
        self.first: tuple[float, int, int] | None = None  # (time, succeeded, events)
        self.last: tuple[float, int, int] | None = None
        self.max_lag = 0.0
        self.max_backlog = 0

    def poll(self, with_backlog: bool) -> int:
        status = http_json(self.url)
        now = time.perf_counter()
        done = status["totals"].get("succeeded", 0)
        point = (now, done, status["events_total"])
        if done and self.first is None:
            self.first = point
        if self.first is not None and (self.last is None or done > self.last[1]):
            self.last = point
        self.max_lag = max(self.max_lag, status["event_lag_seconds"] or 0.0)
        if with_backlog:  # a full /metrics page: not at every poll
            self.max_backlog = max(self.max_backlog, self.backlog())
        return done

    def backlog(self) -> int:
        sums = metric_sums(http_text(self.url.replace("/api/status", "/metrics")))
        return int(sums.get("celery_exporter_event_backlog_bytes", 0))

    def rates(self) -> tuple[float, float]:
        """Tasks/s and events/s from the first success counted to the last."""
        if self.first is None or self.last is None or self.last[0] <= self.first[0]:
            return 0.0, 0.0
        seconds = self.last[0] - self.first[0]
        return (
            (self.last[1] - self.first[1]) / seconds,
            (self.last[2] - self.first[2]) / seconds,
        )


def watch_until_counted(watch: Watch, n: int, timeout: float) -> None:
    progress = Progress("exporter counted")
    deadline = time.monotonic() + timeout
    polls = 0
    while (done := watch.poll(with_backlog=polls % 10 == 0)) < n:
        if time.monotonic() > deadline:
            raise click.ClickException(f"the exporter counted {done} of {n} successes in time")
        progress.update(f"{done:,}/{n:,} succeeded")
        polls += 1
        time.sleep(POLL_SECONDS)
    progress.done(f"{done:,}/{n:,} succeeded")


def run_once(setting: Setting, n: int, timeout: float) -> dict[str, Any]:
    import redis

    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="e2e-")))
        redis_log = workdir / "redis.log"
        port = stack.enter_context(private_redis("--logfile", str(redis_log)))
        os.environ.update(
            CELERY_BROKER_URL=f"redis://127.0.0.1:{port}/0",
            CELERY_RESULT_BACKEND=f"redis://127.0.0.1:{port}/1",
            PYTHONPATH=str(ROOT),
            **setting.env(),
        )
        from bench.benchapp import app

        # This process only publishes: no result subscription per task (the workers still
        # store results when the setting says so, with their own backend).
        app.conf.result_backend = None
        client = redis.Redis(port=port)
        exporter = stack.enter_context(run_exporter(port, workdir))
        status_url = exporter.url.replace("/metrics", "/api/status")
        subscriber_before = subscribers(client.client_list())
        publish_seconds = publish_loop(n)
        cpu_before = process_cpu_seconds(exporter.pid)
        watch = Watch(status_url, n)
        procs = stack.enter_context(
            workers(setting.workers, {}, app, workdir, app_module=setting.app_module,
                    events=True)
        )  # fmt: skip
        watch_until_counted(watch, n, timeout)
        exporter_cpu = process_cpu_seconds(exporter.pid) - cpu_before
        time.sleep(1.0)  # anything counted twice or late would show now
        sums = metric_sums(http_text(exporter.url))
        ran = tasks_run(app, len(setting.workers))
        subscriber_after = subscribers(client.client_list())
        tasks_per_second, events_per_second = watch.rates()
        checks = account(n, sums, ran, subscriber_before, subscriber_after, redis_log.read_text())
        return {
            "tasks": n,
            "publish_per_second": round(n / publish_seconds, 1),
            "tasks_per_second": round(tasks_per_second, 1),
            "exporter_events_per_second": round(events_per_second),
            "exporter_cpu_seconds": round(exporter_cpu, 2),
            "max_event_lag_seconds": round(watch.max_lag, 3),
            "max_backlog_bytes": watch.max_backlog,
            "subscriber_before": subscriber_before,
            "subscriber_after": subscriber_after,
            "worker_commands": command_lines(procs),
            "checks": [{**vars(c), "ok": c.ok} for c in checks],
            "ok": all(c.ok for c in checks),
        }


# ----------------------------------------------------------------------------- the table


def run_in_subprocess(setting: Setting, n: int, timeout: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="e2e-run-") as tmp:
        out = Path(tmp) / "run.json"
        argv = [PYTHON, __file__, "run", "--setting", setting.label, "-n", str(n),
                "--timeout", str(timeout), "--out", str(out)]  # fmt: skip
        print(f"== {setting.label}", file=sys.stderr)
        subprocess.run(argv, check=False)
        return json.loads(out.read_text()) if out.exists() else {"error": "run crashed"}


@click.group(invoke_without_command=True, context_settings={"max_content_width": 100})
@click.option("-n", "--tasks", "n", type=click.IntRange(min=1), default=20_000, show_default=True)
@click.option(
    "--settings",
    "labels",
    default="default,fast+events",
    show_default=True,
    help=f"Worker settings (bench/workload.py's rows; events forced on): {', '.join(SETTINGS)}.",
)
@click.option("--timeout", type=float, default=600.0, show_default=True)
@click.pass_context
def main(ctx: click.Context, n: int, labels: str, timeout: float) -> None:
    """Real workers at full speed with events on; the exporter must count every task."""
    if ctx.invoked_subcommand:
        return
    chosen = [label.strip() for label in labels.split(",") if label.strip()]
    if unknown := [label for label in chosen if label not in SETTINGS]:
        raise click.BadParameter(f"unknown setting(s) {unknown}; known: {', '.join(SETTINGS)}")
    load = wait_until_quiet()
    runs = {label: run_in_subprocess(SETTINGS[label], n, timeout) for label in chosen}
    rows = []
    for label, r in runs.items():
        if "error" in r:
            rows.append([label, r["error"], *[""] * 8])
            continue
        counts = {c["what"]: c["seen"] for c in r["checks"]}
        rows.append([
            label, " + ".join(SETTINGS[label].workers),
            f"{r['tasks_per_second']:,.0f}", f"{r['exporter_events_per_second']:,}",
            f"{counts['celery_task_succeeded_total']:,} / {n:,}",
            counts["celery_exporter_events_dropped_total"],
            f"{r['subscriber_before']} -> {r['subscriber_after']}",
            r["max_event_lag_seconds"], r["exporter_cpu_seconds"],
            "yes" if r["ok"] else "NO",
        ])  # fmt: skip
    print(
        table(
            ["setting", "workers", "tasks/s", "events/s (exporter)", "succeeded counted",
             "dropped", "subscriber CLIENT ID", "max lag s", "exporter CPU s", "exact"],
            rows,
        )
    )  # fmt: skip
    for label, r in runs.items():
        failed = [c for c in r.get("checks", []) if not c["ok"]]
        for c in failed:
            print(f"{label}: {c['what']}: expected {c['expected']}, saw {c['seen']}")
    path = write_json("e2e.json", {"tasks": n, "load_before": load, "runs": runs})
    print(f"\nwrote {path}")
    if not all(r.get("ok") for r in runs.values()):
        sys.exit(1)


@main.command("run", hidden=True)
@click.option("--setting", "label", required=True)
@click.option("-n", "n", type=int, required=True)
@click.option("--timeout", type=float, required=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
def run_command(label: str, n: int, timeout: float, out: Path) -> None:
    """Internal: one setting in a fresh process; writes its figures to --out."""
    setting = replace(SETTINGS[label], events=True)
    try:
        record = run_once(setting, n, timeout)
    except Exception as exc:  # recorded in the table rather than ending the other runs
        record = {"error": f"{type(exc).__name__}: {exc}"[:200]}
    out.write_text(json.dumps(record))


if __name__ == "__main__":
    main()

"""Workload benchmark: the article's 10k-task group over a table of worker settings.

    python bench/workload.py                          # every setting, N=10,000, 3 overhead pairs
    python bench/workload.py -n 2000 --settings default,events-off --pairs 0
    python bench/workload.py -n 5000 --settings none --pairs 0 --stock-pairs 4   # vs stock

Each trial runs in its own process with its own private redis-server and fresh workers
(bench/article.py's functions), so settings never leak from one trial into the next:

* results on  -- the article's measurement: publish ``group(dummy_task.s(i) for i in
                 range(N))`` and join every result (``join_native``), sum checked;
* results off -- the same group (or, for ``publish="loop"`` rows, the N tasks sent one by one
                 on one producer) with ``task_ignore_result``; nothing comes back, so the run
                 ends when the broker is drained (queue and ``unacked`` empty on two polls
                 20 ms apart) and a broadcast shows no task active or reserved, and the
                 workers' own counters (``inspect stats``) must add up to N.

Settings the workload does not expose as environment variables (late acks, ignored results,
the STARTED state, kombu's ack emulation) come from bench/benchapp.py, never from the
workload's defaults. Every trial also records the CPU each part spent per task (this
process publishing and joining, the workers with their pools, redis-server, the exporter):
the machine is CPU-bound, so cores / (ms per task) is the ceiling for that setting, and the
busy cores not spent by the trial ("others") say how disturbed it was; a trial disturbed by
more than --max-others cores is repeated (3 runs at most; the least disturbed is kept).
The exporter's cost is measured as alternating pairs (the same setting without and with the
exporter subscribed): median tasks/s of each, and the extra CPU per task. The workload's own
cost is measured the same way against stock Celery (bench/stockapp.py: a plain app and task
with the same guarantees): ``--stock-pairs`` alternating pairs of the default setting and
``stock``. Before every trial the script waits until less than --max-busy of the CPUs is in use.

Prints the tables and writes bench/out/workload.json (--out-name).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import click

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.article import TASK, command_lines, figures, join_results, workers
from bench.common import (
    PYTHON,
    ROOT,
    busy_between,
    cpu_busy,
    cpu_sample,
    group_cpu_seconds,
    http_json,
    load_average,
    private_redis,
    process_cpu_seconds,
    table,
    wait_for,
    wait_until_quiet,
    write_json,
)
from bench.ingest import run_exporter

DRAIN_POLL_SECONDS = 0.02
MAX_ATTEMPTS = 3


@dataclass(frozen=True)
class Setting:
    """One row of the table: how the workers run and what each task costs them."""

    label: str
    workers: tuple[str, ...] = ("-P prefork -c 2",)
    prefetch: int = 1
    events: bool = True
    results: bool = True
    acks_late: bool = True
    track_started: bool = True
    ack_emulation: bool = True
    exporter: bool = False
    publish: str = "group"  # "loop": the N tasks sent one by one (results off only)
    app: str = "workload"  # "stock": bench/stockapp.py, plain Celery with the same guarantees
    note: str = ""

    @property
    def app_module(self) -> str:
        """The workload's own app when only its env vars change, else bench/benchapp.py."""
        if self.app == "stock":
            return "bench.stockapp"
        production = self.acks_late and self.results and self.track_started
        return "workload.app" if production and self.ack_emulation else "bench.benchapp"

    def env(self) -> dict[str, str]:
        """The workers' (and the publisher's) environment for this setting."""
        flag = lambda value: "true" if value else "false"  # noqa: E731
        return {
            "WORKLOAD_PREFETCH_MULTIPLIER": str(self.prefetch),
            "WORKLOAD_TASK_EVENTS": flag(self.events),
            "BENCH_ACKS_LATE": flag(self.acks_late),
            "BENCH_IGNORE_RESULT": flag(not self.results),
            "BENCH_TRACK_STARTED": flag(self.track_started),
            "BENCH_ACK_EMULATION": flag(self.ack_emulation),
        }


DEFAULT = Setting("default", note="the workload's production settings")
STOCK = replace(DEFAULT, label="stock", app="stock", note="stock Celery, same guarantees")
SOLO_X2 = ("-P solo", "-P solo")
# Every delivery guarantee and every extra round trip off: the upper bound of the machine.
FAST = replace(
    DEFAULT,
    label="fast",
    workers=SOLO_X2,
    prefetch=64,
    events=False,
    results=False,
    acks_late=False,
    track_started=False,
    ack_emulation=False,
    note="everything off: no events, no results, early acks, no unacked bookkeeping",
)
SETTINGS = {
    s.label: s
    for s in (
        # One change at a time from the production settings.
        DEFAULT,
        STOCK,
        replace(DEFAULT, label="prefetch-4", prefetch=4),
        replace(DEFAULT, label="prefork-c1", workers=("-P prefork -c 1",)),
        replace(DEFAULT, label="prefork-c4", workers=("-P prefork -c 4",)),
        replace(DEFAULT, label="threads-c8", workers=("-P threads -c 8",)),
        replace(DEFAULT, label="solo-x2", workers=SOLO_X2),
        replace(DEFAULT, label="events-off", events=False),
        replace(DEFAULT, label="results-off", results=False),
        replace(DEFAULT, label="started-off", track_started=False),
        replace(DEFAULT, label="acks-early", acks_late=False),
        replace(DEFAULT, label="no-ack-emulation", acks_late=False, ack_emulation=False),
        # Toward the article's figure: everything off, then one thing back on.
        FAST,
        replace(FAST, label="fast-solo-x1", workers=("-P solo",)),
        replace(FAST, label="fast-prefork-c2", workers=("-P prefork -c 2",)),
        replace(FAST, label="fast+results", results=True),
        replace(FAST, label="fast+events", events=True),
        replace(FAST, label="fast+events-loop", events=True, publish="loop"),
        replace(FAST, label="fast+ack-emulation", ack_emulation=True),
        replace(FAST, label="fast-loop", publish="loop"),
        replace(FAST, label="fast-loop-solo-x1", publish="loop", workers=("-P solo",)),
    )
}


# ----------------------------------------------------------------------------- one trial


def drained(client: Any) -> bool:
    """Nothing waiting in the queue and nothing delivered but unacknowledged."""
    pipe = client.pipeline(transaction=False)
    pipe.llen("default").hlen("unacked")
    return pipe.execute() == [0, 0]


def wait_done_without_results(app: Any, n: int, workers_count: int, timeout: float) -> None:
    """Completion without a result backend: broker drained, then no task left in a worker.

    The first half is exact under late acks (a message leaves ``unacked`` only after its
    task ran) and a lower bound with early acks, which the broadcast then settles.
    """
    import redis

    client = redis.Redis.from_url(os.environ["CELERY_BROKER_URL"])
    deadline = time.monotonic() + timeout
    quiet_polls = 0
    while quiet_polls < 2:
        if time.monotonic() > deadline:
            raise click.ClickException("the workers did not drain the queue in time")
        quiet_polls = quiet_polls + 1 if drained(client) else 0
        time.sleep(DRAIN_POLL_SECONDS)
    inspect = app.control.inspect(timeout=2.0, limit=workers_count)
    while any((inspect.active() or {}).values()) or any((inspect.reserved() or {}).values()):
        if time.monotonic() > deadline:
            raise click.ClickException("tasks still active after the queue drained")


def tasks_run(app: Any, workers_count: int) -> int:
    """How many dummy_task the workers themselves say they accepted."""
    stats = app.control.inspect(timeout=2.0, limit=workers_count).stats() or {}
    return sum(s.get("total", {}).get(TASK, 0) for s in stats.values())


def dummy_task_of(setting: Setting) -> Any:
    """The benchmark task of the setting's app (the stock app publishes its own)."""
    if setting.app == "stock":
        from bench.stockapp import dummy_task
    else:
        from workload.tasks import dummy_task
    return dummy_task


def publish_group(setting: Setting, n: int) -> tuple[Any, float]:
    """bench/article.py's group of N dummy_task, sent by the setting's own app."""
    from celery import group

    dummy_task = dummy_task_of(setting)
    started = time.perf_counter()
    result = group(dummy_task.s(i) for i in range(n)).apply_async()
    return result, time.perf_counter() - started


def publish_loop(setting: Setting, n: int) -> float:
    """The same N tasks sent one by one on one producer, no group: nothing to join."""
    dummy_task = dummy_task_of(setting)
    started = time.perf_counter()
    with dummy_task.app.producer_or_acquire() as producer:
        for i in range(n):
            dummy_task.apply_async((i,), producer=producer)
    return time.perf_counter() - started


def measure(setting: Setting, n: int, timeout: float, app: Any) -> dict[str, Any]:
    started = time.perf_counter()
    if setting.results:
        result, publish_seconds = publish_group(setting, n)
        join_results(result, n, timeout)
        return figures(n, started, publish_seconds, time.perf_counter())
    if setting.publish == "loop":
        publish_seconds = publish_loop(setting, n)
    else:
        _, publish_seconds = publish_group(setting, n)
    wait_done_without_results(app, n, len(setting.workers), timeout)
    finished = time.perf_counter()
    counted = tasks_run(app, len(setting.workers))
    if counted != n:
        raise click.ClickException(f"workers ran {counted} tasks, expected {n}")
    return figures(n, started, publish_seconds, finished)


class CpuMeter:
    """CPU seconds spent by each part of a trial: who pays for a task, and how much."""

    def __init__(self, redis_client: Any, worker_pids: list[int], exporter_pid: int | None):
        self.redis, self.worker_pids, self.exporter_pid = redis_client, worker_pids, exporter_pid
        self.start = self.read()
        self.machine = cpu_sample()

    def read(self) -> dict[str, float]:
        info = self.redis.info("cpu")
        return {
            "client": time.process_time(),  # this process: publishing (and joining results)
            "workers": sum(group_cpu_seconds(pid) for pid in self.worker_pids),
            "redis": info["used_cpu_user"] + info["used_cpu_sys"],
            "exporter": process_cpu_seconds(self.exporter_pid) if self.exporter_pid else 0.0,
        }

    def per_task_ms(self, n: int) -> dict[str, float]:
        end = self.read()
        spent = {part: end[part] - self.start[part] for part in end}
        return {part: round(1000 * seconds / n, 3) for part, seconds in spent.items()}

    def busy(self) -> float:
        return round(busy_between(self.machine, cpu_sample()), 3)


def counted(status_url: str) -> int:
    return http_json(status_url)["totals"].get("succeeded", 0)


def run_trial(setting: Setting, n: int, timeout: float) -> dict[str, Any]:
    """One measurement in this (fresh) process: own Redis, own workers, maybe an exporter."""
    import redis

    with contextlib.ExitStack() as stack:
        port = stack.enter_context(private_redis())
        os.environ.update(
            CELERY_BROKER_URL=f"redis://127.0.0.1:{port}/0",
            CELERY_RESULT_BACKEND=f"redis://127.0.0.1:{port}/1",
            PYTHONPATH=str(ROOT),
            **setting.env(),
        )
        # The stock trial imports nothing of the workload: its own app pings and publishes.
        app = importlib.import_module(
            "bench.stockapp" if setting.app == "stock" else "bench.benchapp"
        ).app

        logs = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="workload-bench-")))
        exporter = stack.enter_context(run_exporter(port, logs)) if setting.exporter else None
        procs = stack.enter_context(
            workers(setting.workers, {}, app, logs, app_module=setting.app_module,
                    events=setting.events)
        )  # fmt: skip
        meter = CpuMeter(
            redis.Redis(port=port), [p.pid for p in procs], exporter.pid if exporter else None
        )
        result = measure(setting, n, timeout, app)
        result["cpu_ms_per_task"] = meter.per_task_ms(n)
        result["cpu_busy"] = meter.busy()
        ours = sum(result["cpu_ms_per_task"].values()) * result["tasks_per_second"] / 1000
        result["others_cores"] = round(result["cpu_busy"] * (os.cpu_count() or 1) - ours, 3)
        result["worker_commands"] = command_lines(procs)
        result["results_stored"] = redis.Redis(port=port, db=1).dbsize()
        if exporter:  # the last events may still be on their way: give them a moment
            status = exporter.url.replace("/metrics", "/api/status")
            with contextlib.suppress(RuntimeError):
                wait_for(lambda: counted(status) >= n, 5, "the exporter's last events")
            result["exporter_succeeded"] = counted(status)
    return result


# ----------------------------------------------------------------------------- the table


@dataclass
class Trial:
    setting: Setting
    figures: dict[str, Any] = field(default_factory=dict)
    busy_before: float = 0.0
    load_before: float = 0.0
    error: str = ""
    attempts: int = 1


def quiet_enough(max_busy: float, timeout: float = 300.0) -> float:
    """Wait until others use less than ``max_busy`` of the CPUs; returns what was seen."""
    deadline = time.monotonic() + timeout
    while (busy := cpu_busy(2.0)) > max_busy and time.monotonic() < deadline:
        print(f"  machine busy ({busy:.0%}); waiting", file=sys.stderr)
        time.sleep(8.0)
    return busy


def trial_in_subprocess(
    setting: Setting, n: int, timeout: float, max_busy: float, max_others: float
) -> Trial:
    """Run a trial; repeat it (twice at most) when others took CPU during it, keep the best."""
    best: Trial | None = None
    for attempt in range(1, MAX_ATTEMPTS + 1):
        trial = one_trial(setting, n, timeout, max_busy)
        trial.attempts = attempt
        if best is None or others_cores(trial) < others_cores(best):
            best = trial
        if others_cores(trial) <= max_others or trial.error:
            break
        print(f"   others used {others_cores(trial):.2f} cores meanwhile; again", file=sys.stderr)
    assert best is not None
    best.attempts = attempt
    return best


def one_trial(setting: Setting, n: int, timeout: float, max_busy: float) -> Trial:
    busy = quiet_enough(max_busy)
    trial = Trial(setting, busy_before=round(busy, 3), load_before=load_average())
    with tempfile.TemporaryDirectory(prefix="workload-trial-") as tmp:
        out = Path(tmp) / "trial.json"
        argv = [PYTHON, __file__, "trial", "--setting", json.dumps(asdict(setting)),
                "-n", str(n), "--timeout", str(timeout), "--out", str(out)]  # fmt: skip
        print(f"== {setting.label}", file=sys.stderr)
        subprocess.run(argv, check=False)
        record = json.loads(out.read_text()) if out.exists() else {"error": "trial crashed"}
    trial.error = record.pop("error", "")
    trial.figures = record
    print(f"   {record.get('tasks_per_second', trial.error)} tasks/s", file=sys.stderr)
    return trial


def others_cores(trial: Trial) -> float:
    """Cores busy during the trial but not spent by it: other jobs, plus the kernel's
    network softirq (about 0.1 core here) -- a measure of how disturbed the trial was."""
    return trial.figures.get("others_cores", 0.0)


def describe(setting: Setting) -> list[Any]:
    yes = lambda value: "on" if value else "off"  # noqa: E731
    return [
        setting.label,
        " + ".join(setting.workers),
        setting.prefetch,
        yes(setting.events),
        yes(setting.results),
        "late" if setting.acks_late else "early",
        yes(setting.ack_emulation),
        yes(setting.track_started),
        yes(setting.exporter),
    ]


HEADERS = ["setting", "workers", "prefetch", "events", "results", "acks", "unacked", "STARTED",
           "exporter", "tasks/s", "publish/s", "CPU busy", "others (cores)", "runs"]  # fmt: skip


def row(trial: Trial) -> list[Any]:
    f = trial.figures
    return [
        *describe(trial.setting),
        f.get("tasks_per_second", trial.error or "failed"),
        f.get("publish_per_second", ""),
        f"{f['cpu_busy']:.0%}" if "cpu_busy" in f else "",
        f.get("others_cores", ""),
        trial.attempts,
    ]


CPU_PARTS = ("client", "workers", "redis", "exporter")


def cpu_row(trial: Trial, cores: int) -> list[Any]:
    """CPU milliseconds per task by part; 1000 x cores / total is the machine's ceiling."""
    per_task = trial.figures.get("cpu_ms_per_task")
    if not per_task:
        return [trial.setting.label, *([""] * (len(CPU_PARTS) + 2))]
    total = sum(per_task.values())
    return [
        trial.setting.label,
        *(f"{per_task[part]:.2f}" for part in CPU_PARTS),
        f"{total:.2f}",
        round(1000 * cores / total),
    ]


CPU_HEADERS = ["setting", *(f"{part} ms/task" for part in CPU_PARTS), "total ms/task",
               "ceiling tasks/s (all cores busy)"]  # fmt: skip


def overhead(pairs: list[tuple[Trial, Trial]]) -> dict[str, Any]:
    """The exporter's cost, two ways.

    Throughput: median tasks/s without and with it (noisy on a shared machine). CPU: the
    system is CPU-bound, so tasks/s ~ cores / (CPU ms per task); the extra ms per task with
    the exporter (its own plus what it adds to Redis and the workers) is the cost, and far
    less sensitive to other jobs than wall-clock throughput.
    """
    complete = [(a.figures, b.figures) for a, b in pairs if a.figures and b.figures]
    if not complete:
        return {}
    total = lambda f: sum(f["cpu_ms_per_task"].values())  # noqa: E731
    base = statistics.median(a["tasks_per_second"] for a, _ in complete)
    beside = statistics.median(b["tasks_per_second"] for _, b in complete)
    return {
        "without": [a["tasks_per_second"] for a, _ in complete],
        "with": [b["tasks_per_second"] for _, b in complete],
        "median_without": round(base, 1),
        "median_with": round(beside, 1),
        "cost_percent": round(100 * (1 - beside / base), 1),
        "cpu_cost_percent": round(
            100 * statistics.median(1 - total(a) / total(b) for a, b in complete), 1
        ),
        "exporter_cpu_share_percent": round(
            100
            * statistics.median(b["cpu_ms_per_task"]["exporter"] / total(b) for _, b in complete),
            1,
        ),
        "exporter_cores": round(
            statistics.median(
                b["cpu_ms_per_task"]["exporter"] * b["tasks_per_second"] / 1000 for _, b in complete
            ),
            3,
        ),
    }


def alternate(first: Setting, second: Setting, pairs: int, run: Any) -> list[tuple[Trial, Trial]]:
    """``pairs`` pairs of trials, each in the opposite order to the last, so that a drifting
    machine load cancels out; every pair is returned as (first, second)."""
    done = []
    for i in range(pairs):
        order = (first, second) if i % 2 == 0 else (second, first)
        a, b = run(order[0]), run(order[1])
        done.append((a, b) if i % 2 == 0 else (b, a))
    return done


def against_stock(pairs: list[tuple[Trial, Trial]]) -> dict[str, Any]:
    """The workload against stock Celery: median tasks/s, per-pair ratios (their spread is the
    noise of this run), CPU ms per task of each and the others' cores during the trials."""
    complete = [(a.figures, b.figures) for a, b in pairs if a.figures and b.figures]
    if not complete:
        return {}
    total = lambda f: sum(f["cpu_ms_per_task"].values())  # noqa: E731
    ratios = [a["tasks_per_second"] / b["tasks_per_second"] for a, b in complete]
    workload = statistics.median(a["tasks_per_second"] for a, _ in complete)
    stock = statistics.median(b["tasks_per_second"] for _, b in complete)
    return {
        "workload": [a["tasks_per_second"] for a, _ in complete],
        "stock": [b["tasks_per_second"] for _, b in complete],
        "median_workload": round(workload, 1),
        "median_stock": round(stock, 1),
        "ratio_of_medians_percent": round(100 * workload / stock, 1),
        "pair_ratios_percent": [round(100 * r, 1) for r in ratios],
        "median_pair_ratio_percent": round(100 * statistics.median(ratios), 1),
        "cpu_ms_workload": round(statistics.median(total(a) for a, _ in complete), 3),
        "cpu_ms_stock": round(statistics.median(total(b) for _, b in complete), 3),
        "worker_cpu_ms_workload": round(
            statistics.median(a["cpu_ms_per_task"]["workers"] for a, _ in complete), 3
        ),
        "worker_cpu_ms_stock": round(
            statistics.median(b["cpu_ms_per_task"]["workers"] for _, b in complete), 3
        ),
        "max_others_cores": max(
            max(a.get("others_cores", 0.0), b.get("others_cores", 0.0)) for a, b in complete
        ),
    }


STOCK_HEADERS = ["pairs", "workload tasks/s (median)", "stock tasks/s (median)",
                 "workload / stock", "pair ratios", "CPU ms/task workload vs stock",
                 "worker ms/task workload vs stock", "others (max cores)"]  # fmt: skip


def stock_rows(v: dict[str, Any], pairs: int) -> list[list[Any]]:
    return [[
        pairs, v["median_workload"], v["median_stock"], f"{v['ratio_of_medians_percent']}%",
        ", ".join(f"{r}%" for r in v["pair_ratios_percent"]),
        f"{v['cpu_ms_workload']} vs {v['cpu_ms_stock']}",
        f"{v['worker_cpu_ms_workload']} vs {v['worker_cpu_ms_stock']}", v["max_others_cores"],
    ]]  # fmt: skip


@click.group(invoke_without_command=True, context_settings={"max_content_width": 100})
@click.option("-n", "--tasks", "n", type=click.IntRange(min=1), default=10_000, show_default=True)
@click.option(
    "--settings",
    "labels",
    default=",".join(SETTINGS),
    show_default=True,
    help="Which rows to run (comma list).",
)
@click.option(
    "--pairs",
    type=click.IntRange(min=0),
    default=3,
    show_default=True,
    help="Alternating without/with-exporter pairs of the default setting (0: skip).",
)
@click.option("--overhead-setting", default="default", show_default=True)
@click.option(
    "--stock-pairs",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Alternating pairs of the default setting and stock Celery (bench/stockapp.py).",
)
@click.option("--timeout", type=float, default=600.0, show_default=True)
@click.option(
    "--max-busy",
    type=float,
    default=0.25,
    show_default=True,
    help="Start a trial only when less than this fraction of the CPUs is busy.",
)
@click.option(
    "--max-others",
    type=float,
    default=0.3,
    show_default=True,
    help="Repeat a trial (up to 3 runs) when other processes took more cores than this.",
)
@click.option(
    "--max-load",
    type=float,
    default=0.8,
    show_default=True,
    help="Wait (10 min at most) for the 1-minute load average to drop below this first.",
)
@click.option("--out-name", default="workload.json", show_default=True, help="In bench/out/.")
@click.pass_context
def main(
    ctx: click.Context,
    n: int,
    labels: str,
    pairs: int,
    overhead_setting: str,
    stock_pairs: int,
    timeout: float,
    max_busy: float,
    max_others: float,
    max_load: float,
    out_name: str,
) -> None:
    """The article's 10k group over a table of worker settings, and the exporter's cost."""
    if ctx.invoked_subcommand:
        return
    chosen = [label.strip() for label in labels.split(",") if label.strip() not in ("", "none")]
    unknown = [label for label in [*chosen, overhead_setting] if label not in SETTINGS]
    if unknown:
        raise click.BadParameter(f"unknown setting(s) {unknown}; known: {', '.join(SETTINGS)}")
    load = wait_until_quiet(max_load)
    trials = [
        trial_in_subprocess(SETTINGS[label], n, timeout, max_busy, max_others) for label in chosen
    ]
    run = lambda s: trial_in_subprocess(s, n, timeout, max_busy, max_others)  # noqa: E731
    base = SETTINGS[overhead_setting]
    without = replace(base, label=f"{base.label} (pair)")
    beside = replace(base, label=f"{base.label} + exporter", exporter=True)
    pair_trials = alternate(without, beside, pairs, run)
    stock_trials = alternate(
        replace(DEFAULT, label="workload (pair)"), replace(STOCK, label="stock (pair)"),
        stock_pairs, run,
    )  # fmt: skip
    cores = os.cpu_count() or 1
    print(table(HEADERS, [row(t) for t in trials]))
    print()
    print(table(CPU_HEADERS, [cpu_row(t, cores) for t in trials]))
    cost = overhead(pair_trials)
    if cost:
        print()
        print(
            table(
                ["setting", "pairs", "tasks/s without (median)", "tasks/s with exporter (median)",
                 "throughput cost", "CPU cost (ms/task)", "exporter's own share",
                 "exporter CPU (cores)"],
                [[overhead_setting, pairs, cost["median_without"], cost["median_with"],
                  f"{cost['cost_percent']}%", f"{cost['cpu_cost_percent']}%",
                  f"{cost['exporter_cpu_share_percent']}%", cost["exporter_cores"]]],
            )
        )  # fmt: skip
    versus = against_stock(stock_trials)
    if versus:
        print()
        print(table(STOCK_HEADERS, stock_rows(versus, stock_pairs)))
    path = write_json(
        out_name,
        {
            "tasks": n,
            "load_before": load,
            "load_after": load_average(),
            "trials": [_record(t) for t in trials],
            "overhead": {**cost, "pairs": [[_record(a), _record(b)] for a, b in pair_trials]},
            "versus_stock": {
                **versus,
                "pairs": [[_record(a), _record(b)] for a, b in stock_trials],
            },
        },
    )
    print(f"\nwrote {path}")


def _record(trial: Trial) -> dict[str, Any]:
    return {
        "setting": asdict(trial.setting),
        **trial.figures,
        "busy_before": trial.busy_before,
        "load_before": trial.load_before,
        "attempts": trial.attempts,
        "error": trial.error,
    }


@main.command("trial", hidden=True)
@click.option("--setting", "setting_json", required=True)
@click.option("-n", "n", type=int, required=True)
@click.option("--timeout", type=float, required=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
def trial_command(setting_json: str, n: int, timeout: float, out: Path) -> None:
    """Internal: one trial in a fresh process; writes its figures to --out."""
    raw = json.loads(setting_json)
    setting = Setting(**{**raw, "workers": tuple(raw["workers"])})
    try:
        record = run_trial(setting, n, timeout)
    except Exception as exc:  # recorded in the table rather than ending the whole sweep
        record = {"error": f"{type(exc).__name__}: {exc}"[:200]}
    out.write_text(json.dumps(record))


@main.command("admission")
@click.option("-n", "n", type=click.IntRange(min=100), default=2000, show_default=True)
@click.option("--blocks", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--out-name", default="admission.json", show_default=True, help="In bench/out/.")
def admission_command(n: int, blocks: int, out_name: str) -> None:
    """The API's admission check: its own cost, next to what a submission costs anyway.

    In one process with a private redis-server: the check alone (one pipelined LLEN over a
    queue's four priority lists), the job-id SET every submission makes, and whole POST /email
    requests through the Flask app with the check on and off, in alternating blocks.
    """
    with private_redis() as port:
        os.environ.update(
            CELERY_BROKER_URL=f"redis://127.0.0.1:{port}/0",
            CELERY_RESULT_BACKEND=f"redis://127.0.0.1:{port}/1",
            WORKLOAD_API_MAX_BACKLOG=str(10 * n * blocks),
            WORKLOAD_LOG_LEVEL="WARNING",
        )
        from workload import admission, datastore
        from workload.api import JOB_KEY, create_app, settings

        broker, data = datastore.broker(settings), datastore.client(settings)
        per_call = lambda f: 1e6 * timed(f, n) / n  # noqa: E731
        check_us = per_call(lambda: admission.backlog(broker, "email"))
        set_us = per_call(lambda: data.set(JOB_KEY + "bench", "x", ex=60))
        client = create_app().test_client()
        from workload import api

        limits, cache = settings.api_backlog_limits, api.backlogs
        saved, saved_age = dict(limits), cache.max_age

        def post() -> None:
            response = client.post("/email", json={"address": "bench@example.com"})
            assert response.status_code == 202, response.get_data()

        modes = {"off": (0, 0.0), "every request": (1, 0.0), "cached": (1, saved_age)}
        spent: dict[str, list[float]] = {mode: [] for mode in modes}
        for _ in range(blocks):  # rotate the modes so that drift cancels out
            for mode, (on, age) in modes.items():
                limits.update(saved if on else dict.fromkeys(saved, 0))
                cache.max_age = age
                spent[mode].append(1e6 * timed(post, n) / n)
        limits.update(saved)
        cache.max_age = saved_age
    median = {mode: round(statistics.median(values), 1) for mode, values in spent.items()}
    record = {
        "check_us": round(check_us, 1),
        "job_id_set_us": round(set_us, 1),
        "cache_ms": round(saved_age * 1000),
        "request_us": {mode: [round(x, 1) for x in values] for mode, values in spent.items()},
        "median_us": median,
        "requests_per_block": n,
        "load": load_average(),
    }
    cost = {
        m: f"{100 * (median[m] / median['off'] - 1):+.1f}%" for m in ("every request", "cached")
    }
    record["cost"] = cost
    print(table(
        ["check alone (µs)", "job-id SET (µs)", "POST /email, no check (µs, median)",
         "check on every request", "check cached (ms)", "check cached", "load"],
        [[record["check_us"], record["job_id_set_us"], median["off"],
          f"{median['every request']} ({cost['every request']})", record["cache_ms"],
          f"{median['cached']} ({cost['cached']})", record["load"]]],
    ))  # fmt: skip
    print(f"\nwrote {write_json(out_name, record)}")


def timed(action: Any, n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        action()
    return time.perf_counter() - started


if __name__ == "__main__":
    main()

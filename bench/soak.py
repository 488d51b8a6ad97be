"""Soak: the whole local stack under steady traffic; is the exporter still flat after a while?

    python bench/soak.py                    # 10 minutes: traffic 2 req/s + 100 dummy_task/s
    python bench/soak.py --minutes 1 --plot bench/out/soak-quick.png   # a quick check

Starts scripts/stack.py (Redis, a worker per queue, the API, the traffic generator, the
exporter, Prometheus scraping it every 5 s, Alertmanager) on free ports with its state in a
temporary directory. Besides the traffic generator's realistic mix (--rate requests/s), a
feeder sends --feed-rate dummy_task/s to the default queue so the exporter sees a steady
stream of a few hundred events/s (about 4 events per task) and a churning task index.
Every --interval seconds it records the exporter's RSS and CPU (its
process is found by its command line and the CELERY_OBSERVATORY_STACK id in its
environment), its event lag (/api/status ``event_lag_seconds``: now minus the newest event's
time; heartbeats every 2 s keep it low when all is well) and the latency of one /metrics
scrape. At the end the stack gets SIGINT (its own clean shutdown) and the script checks that
no process of that stack id is left.

Prints a table and a verdict (memory flat? lag growing?), writes bench/out/soak.json and a
plot (default bench/soak.png).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import (
    PYTHON,
    ROOT,
    Progress,
    free_port,
    http_json,
    process_cpu_seconds,
    table,
    wait_for,
    wait_until_quiet,
    write_json,
)

PORTS = ("redis", "api", "exporter", "prometheus", "alertmanager", "smtp", "images", "webhook")
EXPORTER = "celery-observatory-exporter"
WARM_UP_SECONDS = 60  # imports, first inspect, first label sets: growth here is expected
FLAT_MB = 1.0  # RSS may wander this much after warm-up (or FLAT_RATIO of it) and be "flat"
FLAT_RATIO = 0.02
MAX_TRACKED_TASKS = 100_000  # the exporter's default --max-tracked-tasks


@dataclass
class Sample:
    seconds: float
    rss_mb: float
    cpu_percent: float
    event_lag_seconds: float | None
    scrape_ms: float
    events_total: int
    succeeded: int
    failed: int
    waiting: int  # messages in the stack's queues: are the workers keeping up?
    tracked_tasks: int  # the exporter's task index: bounded, or a leak?


def stack_processes(stack_id: str) -> list[int]:
    """Pids of every process started for this stack (they all carry its id)."""
    marker = f"CELERY_OBSERVATORY_STACK={stack_id}".encode()
    pids = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        with contextlib.suppress(OSError):
            if marker in environ.read_bytes().split(b"\0"):
                pids.append(int(environ.parent.name))
    return pids


def find_exporter(stack_id: str) -> int:
    for pid in stack_processes(stack_id):
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if any(arg.endswith(EXPORTER.encode()) for arg in argv[:2]):
                return pid
    raise LookupError(f"no exporter process of stack {stack_id}")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise LookupError(f"no VmRSS for {pid}")


def scrape_seconds(url: str) -> float:
    """One full /metrics scrape, gzip accepted as Prometheus asks."""
    request = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=30) as response:
        response.read()
    return time.perf_counter() - started


class Recorder:
    """One sample per call: RSS, CPU since the previous call, lag, scrape latency."""

    def __init__(self, pid: int, exporter_url: str) -> None:
        self.pid, self.url = pid, exporter_url
        self.started = time.monotonic()
        self.last_wall, self.last_cpu = self.started, process_cpu_seconds(pid)

    def sample(self) -> Sample:
        now, cpu = time.monotonic(), process_cpu_seconds(self.pid)
        cpu_percent = 100 * (cpu - self.last_cpu) / max(1e-6, now - self.last_wall)
        self.last_wall, self.last_cpu = now, cpu
        scrape = scrape_seconds(f"{self.url}/metrics")
        status = http_json(f"{self.url}/api/status")
        lag = status["event_lag_seconds"]
        return Sample(
            seconds=round(now - self.started, 1),
            rss_mb=round(rss_bytes(self.pid) / 2**20, 2),
            cpu_percent=round(cpu_percent, 2),
            event_lag_seconds=None if lag is None else round(lag, 3),
            scrape_ms=round(1000 * scrape, 2),
            events_total=status["events_total"],
            succeeded=status["totals"].get("succeeded", 0),
            failed=status["totals"].get("failed", 0),
            waiting=sum(q["length"] for q in status["queues"]),
            tracked_tasks=status["tracked_tasks"],
        )


class Feeder(threading.Thread):
    """Sends dummy_task to the stack's default queue at a steady rate (a real event stream)."""

    def __init__(self, broker_url: str, rate: float) -> None:
        super().__init__(daemon=True, name="feeder")
        self.broker_url, self.rate = broker_url, rate
        self.sent = 0
        self.error = ""
        self.stop = threading.Event()

    def run(self) -> None:
        os.environ["CELERY_BROKER_URL"] = self.broker_url
        from workload.app import app
        from workload.tasks import dummy_task

        app.conf.result_backend = None  # send only: no result subscription per task
        started = time.monotonic()
        try:
            with app.producer_or_acquire() as producer:
                while not self.stop.wait(0.05):
                    due = int((time.monotonic() - started) * self.rate) - self.sent
                    for _ in range(max(0, due)):
                        dummy_task.apply_async((self.sent,), producer=producer)
                        self.sent += 1
        except Exception as exc:  # reported with the results, never a silent stop
            self.error = f"{type(exc).__name__}: {exc}"


# ----------------------------------------------------------------------------- verdict


def verdict(samples: list[Sample]) -> dict[str, Any]:
    """Flat memory and no lag growth, judged after the warm-up, with the figures behind it."""
    settled = [s for s in samples if s.seconds >= WARM_UP_SECONDS] or samples
    third = max(1, len(settled) // 3)
    early, late = settled[:third], settled[-third:]
    rss_start = statistics.median(s.rss_mb for s in early)
    rss_end = statistics.median(s.rss_mb for s in late)
    growth_mb = rss_end - rss_start
    tasks = lambda part: statistics.median(s.succeeded + s.failed for s in part)  # noqa: E731
    new_tasks = tasks(late) - tasks(early)
    lags = lambda part: [s.event_lag_seconds for s in part if s.event_lag_seconds is not None]  # noqa: E731
    lag_early = statistics.median(lags(early) or [0.0])
    lag_late = statistics.median(lags(late) or [0.0])
    return {
        "judged_samples": len(settled),
        "rss_start_mb": round(rss_start, 2),
        "rss_end_mb": round(rss_end, 2),
        "rss_growth_mb": round(growth_mb, 2),
        "rss_peak_mb": max(s.rss_mb for s in samples),
        "rss_growth_bytes_per_task": round(growth_mb * 2**20 / new_tasks) if new_tasks else None,
        "tasks_seen": samples[-1].succeeded + samples[-1].failed,
        "memory_flat": growth_mb <= max(FLAT_MB, FLAT_RATIO * rss_start),
        "lag_early_median_seconds": lag_early,
        "lag_late_median_seconds": lag_late,
        "lag_max_seconds": max(lags(samples) or [0.0]),
        "lag_growing": lag_late > lag_early + 1.0,
        "scrape_ms_median": statistics.median(s.scrape_ms for s in samples),
        "scrape_ms_max": max(s.scrape_ms for s in samples),
        "cpu_percent_median": statistics.median(s.cpu_percent for s in samples),
    }


def plot(samples: list[Sample], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display; a file only
    import matplotlib.pyplot as plt

    minutes = [s.seconds / 60 for s in samples]
    panels = [
        ("exporter RSS (MB)", [s.rss_mb for s in samples]),
        ("exporter CPU (% of one core)", [s.cpu_percent for s in samples]),
        ("event lag (s)", [s.event_lag_seconds or 0.0 for s in samples]),
        ("/metrics scrape (ms)", [s.scrape_ms for s in samples]),
    ]
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 9), sharex=True)
    for axis, (label, values) in zip(axes, panels, strict=True):
        axis.plot(minutes, values, marker=".", linewidth=1)
        axis.set_ylabel(label, fontsize=9)
        axis.set_ylim(bottom=0, top=max([*values, 1e-9]) * 1.25)
        axis.grid(alpha=0.3)
    axes[-1].set_xlabel("minutes")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ----------------------------------------------------------------------------- the run


def start_stack(state: Path, rate: float, stack_id: str, ports: dict[str, int], log: Path) -> Any:
    argv = [PYTHON, str(ROOT / "scripts" / "stack.py"), "--state-dir", str(state), "--rate",
            str(rate), *(f"--{name}-port={port}" for name, port in ports.items())]  # fmt: skip
    with open(log, "wb") as out:
        return subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "CELERY_OBSERVATORY_STACK": stack_id},
            cwd=ROOT,
        )


def stop_stack(proc: Any, stack_id: str) -> list[int]:
    """SIGINT, the way a user stops it; returns any pid of the stack still alive after."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    with contextlib.suppress(RuntimeError):  # give the kernel a moment to reap the groups
        wait_for(lambda: not stack_processes(stack_id), 10, "the stack's processes to exit")
    return stack_processes(stack_id)


def soak(
    minutes: float, rate: float, feed_rate: float, interval: float, workdir: Path
) -> dict[str, Any]:
    stack_id = f"soak-{uuid.uuid4().hex[:8]}"
    ports: dict[str, int] = {}
    while len(set(ports.values())) < len(PORTS):  # eight distinct free ports
        ports = {name: free_port() for name in PORTS}
    log = workdir / "stack.log"
    proc = start_stack(workdir / "state", rate, stack_id, ports, log)
    url = f"http://127.0.0.1:{ports['exporter']}"
    samples: list[Sample] = []
    leftovers: list[int] = []
    feeder: Feeder | None = None
    try:
        wait_for(lambda: proc.poll() is None and http_json(f"{url}/readyz")["ready"], 120,
                 f"the stack (see {log})")  # fmt: skip
        wait_for(lambda: stack_processes(stack_id) and find_exporter(stack_id), 30, "exporter")
        recorder = Recorder(find_exporter(stack_id), url)
        if feed_rate > 0:
            feeder = Feeder(f"redis://127.0.0.1:{ports['redis']}/0", feed_rate)
            feeder.start()
        progress = Progress("soak")
        deadline = time.monotonic() + minutes * 60
        while time.monotonic() < deadline:
            time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
            if proc.poll() is not None:
                raise click.ClickException(f"the stack exited early; see {log}")
            samples.append(recorder.sample())
            s = samples[-1]
            progress.update(
                f"{s.seconds / 60:4.1f}/{minutes:g} min  RSS {s.rss_mb:.1f} MB  CPU "
                f"{s.cpu_percent:.1f}%  lag {s.event_lag_seconds}s  scrape {s.scrape_ms:.1f} ms"
                f"  waiting {s.waiting}",
                force=True,
            )
        progress.done(f"{len(samples)} samples")
    finally:
        if feeder is not None:
            feeder.stop.set()
            feeder.join(timeout=10)
        leftovers = stop_stack(proc, stack_id)
    return {
        "stack_id": stack_id,
        "fed_tasks": feeder.sent if feeder else 0,
        "feeder_error": feeder.error if feeder else "",
        "ports": ports,
        "stack_exit_code": proc.returncode,
        "leftover_pids": leftovers,
        "samples": samples,
    }


def report(meta: dict[str, Any], samples: list[Sample], plot_path: Path) -> dict[str, Any]:
    """Print the table and the verdict, draw the plot; returns the verdict's figures."""
    print(
        table(
            ["min", "RSS MB", "CPU %", "event lag s", "scrape ms", "events", "succeeded",
             "failed", "waiting", "tracked"],
            [[f"{s.seconds / 60:.1f}", s.rss_mb, s.cpu_percent, s.event_lag_seconds,
              s.scrape_ms, s.events_total, s.succeeded, s.failed, s.waiting, s.tracked_tasks]
             for s in samples],
        )
    )  # fmt: skip
    result = verdict(samples)
    first, last = samples[0], samples[-1]
    result["events_per_second"] = round(
        (last.events_total - first.events_total) / max(1.0, last.seconds - first.seconds), 1
    )
    judged = "" if result["judged_samples"] >= 6 else " -- too few samples to judge"
    print(
        f"\nmemory{judged}: {'flat' if result['memory_flat'] else 'NOT FLAT'} "
        f"({result['rss_start_mb']} -> {result['rss_end_mb']} MB after the first "
        f"{WARM_UP_SECONDS} s, about {result['rss_growth_bytes_per_task']} bytes per task "
        f"seen meanwhile; peak {result['rss_peak_mb']} MB)"
    )
    if not result["memory_flat"] and result["tasks_seen"] < MAX_TRACKED_TASKS:
        print(
            f"  the run saw {result['tasks_seen']:,} tasks, fewer than the exporter's "
            f"--max-tracked-tasks ({MAX_TRACKED_TASKS:,}): its task index is bounded only "
            "once that many have passed, so a plateau needs a longer run"
        )
    print(
        f"event lag: {'GROWING' if result['lag_growing'] else 'no growth'} (median "
        f"{result['lag_early_median_seconds']} s early, {result['lag_late_median_seconds']} s "
        f"late; max {result['lag_max_seconds']} s)"
    )
    print(
        f"scrape: median {result['scrape_ms_median']} ms, max {result['scrape_ms_max']} ms; "
        f"exporter CPU median {result['cpu_percent_median']}% of a core at "
        f"{result['events_per_second']:.0f} events/s"
    )
    print(f"stack stopped with SIGINT (exit {meta['stack_exit_code']}); leftovers: "
          f"{meta['leftover_pids'] or 'none'}")  # fmt: skip
    title = (
        f"soak: {meta['minutes']:g} min, traffic {meta['rate']:g} req/s + {meta['feed_rate']:g} "
        f"dummy_task/s, {result['events_per_second']:.0f} events/s"
    )
    plot(samples, plot_path, title)
    return result


@click.command(context_settings={"max_content_width": 100})
@click.option("--minutes", type=click.FloatRange(min=0.2), default=10.0, show_default=True)
@click.option(
    "--rate", type=float, default=2.0, show_default=True, help="Traffic generator requests/s."
)
@click.option(
    "--feed-rate",
    type=click.FloatRange(min=0),
    default=100.0,
    show_default=True,
    help="dummy_task/s sent to the default queue besides the traffic (0: none).",
)
@click.option("--interval", type=float, default=10.0, show_default=True, help="Seconds/sample.")
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=ROOT / "bench" / "soak.png",
    show_default="bench/soak.png",
)
@click.option(
    "--from-json",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Report and plot a recorded run (bench/out/soak.json) again instead of running.",
)
def main(
    minutes: float,
    rate: float,
    feed_rate: float,
    interval: float,
    plot_path: Path,
    from_json: Path | None,
) -> None:
    """Run the local stack under steady traffic and record the exporter's health over time."""
    if from_json:  # judge and plot a recorded run again, starting nothing
        record = json.loads(from_json.read_text())
        samples = [Sample(**s) for s in record.pop("samples")]
        result = report(record, samples, plot_path)
        # The recorded machine, command and date stay; only the verdict is refreshed.
        write_json(from_json.name, {**record, **result, "samples": [asdict(s) for s in samples]})
        return
    load = wait_until_quiet()
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        run = soak(minutes, rate, feed_rate, interval, Path(tmp))
    samples = run.pop("samples")
    if not samples:
        raise click.ClickException("no samples recorded")
    meta = {"minutes": minutes, "rate": rate, "feed_rate": feed_rate, "interval": interval,
            "load_before": load, **run}  # fmt: skip
    result = report(meta, samples, plot_path)
    path = write_json(
        "soak.json",
        {**meta, **result, "plot": str(plot_path), "samples": [asdict(s) for s in samples]},
    )
    print(f"\nwrote {path} and {plot_path}")
    if run["leftover_pids"]:
        sys.exit(1)


if __name__ == "__main__":
    main()

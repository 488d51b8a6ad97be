"""Scrape benchmark: /metrics latency at 1k, 10k and 100k series, idle and under ingest,
with Prometheus' own request beside a text/plain one.

    python bench/scrape.py                         # exporter and Flower, 1k/10k/100k series
    python bench/scrape.py --series 10000 --consumers exporter --ingest-rate 100000

For each consumer and target series count: seed label sets (task name x worker) with one
full task lifecycle each until /metrics holds about that many series; then time sequential
scrapes, alternating the two requests so both see the same machine: "prometheus" sends
Prometheus' Accept header (OpenMetrics preferred) and gzip, as every real scrape does;
"text" asks for text/plain and gzip. First idle, then while the publisher of bench/ingest.py
sends at the consumer's --ingest-rate (default: half the highest lossless rate in
bench/out/ingest.json). Prints p50/p99 per request and the ratio of Prometheus' p50 to
text's, and writes bench/out/scrape.json.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import OUT, Progress, private_redis, table, write_json
from bench.envelopes import envelope
from bench.ingest import publisher_argv, run_exporter, run_flower
from exporter.negotiate import PROMETHEUS_ACCEPT

RUNNERS = {"exporter": run_exporter, "flower": run_flower}
FALLBACK_RATE = {"exporter": 100_000, "flower": 5_000}
REQUESTS = {
    "prometheus": {"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "gzip"},
    "text": {"Accept": "text/plain;version=0.0.4", "Accept-Encoding": "gzip"},
}


def lifecycle(name: str, host: str, ts: float) -> list[tuple[str, bytes]]:
    """task-sent, then task-received/started/succeeded in one task.multi batch."""
    task_id = str(uuid.uuid4())
    base = {"utcoffset": 0.0, "pid": 1, "clock": 1, "timestamp": ts}
    sent = {
        **base,
        "type": "task-sent",
        "hostname": "gen1@web",
        "uuid": task_id,
        "name": name,
        "queue": "seed",
        "eta": None,
    }
    worker = [
        {**base, "type": "task-received", "hostname": host, "uuid": task_id, "name": name},
        {**base, "type": "task-started", "hostname": host, "uuid": task_id},
        {**base, "type": "task-succeeded", "hostname": host, "uuid": task_id, "runtime": 0.01},
    ]
    return [
        ("/0.celeryev/task.sent", envelope(sent, "task.sent", "gen1@web")),
        ("/0.celeryev/task.multi", envelope(worker, "task.multi", host)),
    ]


def seed(port: int, first: int, count: int) -> None:
    """Publish ``count`` new label sets: task names x 50 worker hosts."""
    client = redis.Redis(port=port)
    pipe = client.pipeline(transaction=False)
    now = time.time()
    for i in range(first, first + count):
        for channel, data in lifecycle(f"seed.task_{i // 50}", f"worker{i % 50}@seed", now):
            pipe.publish(channel, data)
    pipe.execute()


def scrape_once(url: str, kind: str = "prometheus") -> tuple[float, int, str]:
    """Seconds for one full scrape with the headers of ``kind``, the samples it held and
    the format served (the Content-Type's media type)."""
    request = urllib.request.Request(url, headers=REQUESTS[kind])
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=60) as response:
        body = response.read()
        if response.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        served = response.headers.get("Content-Type", "").split(";")[0]
    elapsed = time.perf_counter() - start
    series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
    return elapsed, series, served


def rate_for(consumer: str, override: int | None) -> int:
    if override:
        return override
    with contextlib.suppress(OSError, KeyError, ValueError):
        best = json.loads((OUT / "ingest.json").read_text())["best"][consumer]
        return max(1, best // 2)
    return FALLBACK_RATE[consumer]


def measure(consumer: str, target: int, rate: int, scrapes: int) -> list[dict[str, Any]]:
    with (
        tempfile.TemporaryDirectory() as tmp,
        private_redis() as port,
        RUNNERS[consumer](port, Path(tmp)) as count,
    ):
        url = count.url  # type: ignore[attr-defined]
        progress = Progress(f"{consumer} {target:,} series")
        sets, series = 0, scrape_once(url)[1]
        while series < target:  # seed in steps sized from what one set added so far
            step = 20 if sets == 0 else max(1, int((target - series) / (series / sets) * 0.9))
            seed(port, sets, step)
            sets += step
            time.sleep(0.5)
            series = _settle(url, lambda: count(), progress)
        results = [_phase(consumer, target, series, sets, "idle", 0, url, scrapes, progress)]
        with _publisher(port, rate, Path(tmp)):
            time.sleep(3)  # let the stream reach its rate
            results.append(
                _phase(consumer, target, series, sets, "ingest", rate, url, scrapes, progress)
            )
    summary = ", ".join(
        f"{r['phase']} {r['request']} p50 {r['p50_ms']} ms" for phase in results for r in phase
    )
    progress.done(summary)
    return [r for phase in results for r in phase]


@contextlib.contextmanager
def _publisher(port: int, rate: int, tmp: Path) -> Any:
    argv = publisher_argv(port, rate, 3600, 50000, tmp / "pub.json")
    publisher = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    try:
        yield publisher
    finally:
        publisher.terminate()
        publisher.wait()


def _phase(
    consumer: str,
    target: int,
    series: int,
    sets: int,
    phase: str,
    rate: int,
    url: str,
    scrapes: int,
    progress: Progress,
) -> list[dict[str, Any]]:
    """Alternate the two requests ``scrapes`` times each; one result per request."""
    latencies: dict[str, list[float]] = {kind: [] for kind in REQUESTS}
    served: dict[str, str] = {}
    for i in range(scrapes):
        for kind in REQUESTS:
            elapsed, _, served[kind] = scrape_once(url, kind)
            latencies[kind].append(elapsed)
        progress.update(f"{phase}: scrape {i + 1}/{scrapes}")
    out = []
    for kind, times in latencies.items():
        times.sort()
        out.append(
            {
                "consumer": consumer,
                "target_series": target,
                "series": series,
                "label_sets": sets,
                "phase": phase,
                "ingest_rate": rate,
                "request": kind,
                "served": served[kind],
                "scrapes": scrapes,
                "p50_ms": round(statistics.median(times) * 1000, 1),
                "p99_ms": round(times[min(len(times) - 1, int(len(times) * 0.99))] * 1000, 1),
                "max_ms": round(times[-1] * 1000, 1),
            }
        )
    text_p50 = out[-1]["p50_ms"]
    for r in out:
        r["p50_vs_text"] = round(r["p50_ms"] / text_p50, 2) if text_p50 else None
    return out


def _settle(url: str, count: Callable[[], int], progress: Progress) -> int:
    """Series count once the consumer has applied everything published so far."""
    last = -1
    for _ in range(100):
        seen = count()
        if seen == last:
            break
        last = seen
        time.sleep(0.3)
    series = scrape_once(url)[1]
    progress.update(f"seeded {series:,} series", force=True)
    return series


@click.command()
@click.option("--series", default="1000,10000,100000", show_default=True)
@click.option("--consumers", default="exporter,flower", show_default=True)
@click.option(
    "--ingest-rate",
    type=int,
    default=None,
    help="Events/s during the scrapes (default: half of each consumer's best).",
)
@click.option(
    "--scrapes",
    type=int,
    default=100,
    show_default=True,
    help="Scrapes per measurement (a quarter of it at 100k series and more).",
)
def main(series: str, consumers: str, ingest_rate: int | None, scrapes: int) -> None:
    """/metrics latency at given series counts, side by side, while events stream in."""
    results = []
    for consumer in consumers.split(","):
        rate = rate_for(consumer, ingest_rate)
        for target in (int(s) for s in series.split(",")):
            n = scrapes if target < 100_000 else max(10, scrapes // 4)
            results.extend(measure(consumer, target, rate, n))
    rows = [
        (
            r["consumer"],
            f"{r['series']:,}",
            r["phase"],
            f"{r['ingest_rate']:,}",
            r["request"],
            r["served"],
            r["scrapes"],
            r["p50_ms"],
            r["p99_ms"],
            r["max_ms"],
            r["p50_vs_text"],
        )
        for r in results
    ]
    header = ["consumer", "series", "phase", "ingest ev/s", "request", "served", "scrapes"]
    print(table([*header, "p50 ms", "p99 ms", "max ms", "p50 / text p50"], rows))
    print(f"\nwrote {write_json('scrape.json', {'results': results})}")


if __name__ == "__main__":
    main()

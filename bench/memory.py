"""Memory benchmark: RSS and bytes per tracked task after 1M distinct task ids.

    python bench/memory.py                      # exporter at caps 100k and 1M, Flower at 100k
    python bench/memory.py --ids 200000 --caps 100000 --consumers exporter

Publishes ``--ids`` task-sent events with distinct ids (tasks that never finish, so each
stays tracked until evicted) and samples the consumer's RSS every 10% of the way. Bytes per
tracked task = (RSS at the end - RSS before) / tasks tracked. "Flat" compares the RSS once
the cap was reached with the RSS at the end. Writes bench/out/memory.json.
"""

from __future__ import annotations

import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import click
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import (
    Progress,
    free_port,
    http_json,
    private_redis,
    process,
    table,
    wait_for,
    write_json,
)
from bench.envelopes import envelope
from bench.ingest import ensure_flower, run_exporter

BATCH = 10_000


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def task_sent(task_id: str, ts: float) -> bytes:
    event = {
        "type": "task-sent",
        "hostname": "gen1@web",
        "utcoffset": 0.0,
        "pid": 1,
        "clock": 1,
        "timestamp": ts,
        "uuid": task_id,
        "name": "bench.memory",
        "queue": "memory",
        "eta": None,
        "args": "(1,)",
        "kwargs": "{}",
        "retries": 0,
    }
    return envelope(event, "task.sent", "gen1@web")


def publish_ids(port: int, ids: int, pid: int, settled: Any, progress: Progress) -> list[dict]:
    """Publish ``ids`` distinct task-sent events; sample RSS after every 10%."""
    client = redis.Redis(port=port)
    samples = []
    step = max(BATCH, ids // 10)
    for start in range(0, ids, BATCH):
        pipe = client.pipeline(transaction=False)
        now = time.time()
        for _ in range(min(BATCH, ids - start)):
            pipe.publish("/0.celeryev/task.sent", task_sent(str(uuid.uuid4()), now))
        pipe.execute()
        done = min(ids, start + BATCH)
        if done % step == 0 or done == ids:
            settled(done)
            samples.append({"ids": done, "rss": rss_bytes(pid)})
            progress.update(f"{done:,} ids, RSS {samples[-1]['rss'] / 2**20:.0f} MiB", force=True)
    return samples


def measure_exporter(port: int, cap: int, ids: int, workdir: Path) -> dict[str, Any]:
    with run_exporter(port, workdir, ["--max-tracked-tasks", str(cap)]) as events_total:
        status = events_total.url.replace("/metrics", "/api/status")  # type: ignore[attr-defined]
        pid = events_total.pid  # type: ignore[attr-defined]
        client = redis.Redis(port=port)
        client.publish("/0.celeryev/task.sent", task_sent("warm-up", time.time()))
        wait_for(lambda: events_total() == 1, 10, "warm-up")
        before = rss_bytes(pid)

        def settled(n: int) -> None:
            wait_for(lambda: events_total() >= n + 1, 120, f"{n} events")

        progress = Progress(f"exporter cap {cap:,}")
        samples = publish_ids(port, ids, pid, settled, progress)
        tracked = http_json(status)["tracked_tasks"]
    return summarize("exporter", cap, ids, before, samples, tracked, progress)


def measure_flower(port: int, cap: int, ids: int, workdir: Path) -> dict[str, Any]:
    web = free_port()
    argv = [
        str(ensure_flower()),
        "--broker",
        f"redis://127.0.0.1:{port}/0",
        "flower",
        f"--port={web}",
        "--address=127.0.0.1",
        f"--max_tasks={cap}",
        "--logging=warning",
    ]
    with process(argv, workdir / "flower.log") as proc:
        client = redis.Redis(port=port)
        wait_for(lambda: client.execute_command("PUBSUB", "NUMPAT") >= 1, 60, "flower subscribed")
        time.sleep(2)
        before = rss_bytes(proc.pid)
        progress = Progress(f"flower max_tasks {cap:,}")

        def settled(n: int) -> None:
            # Flower has no event counter in its API: wait until RSS stops moving.
            last = -1
            for _ in range(60):
                now = rss_bytes(proc.pid)
                if now == last:
                    return
                last = now
                time.sleep(1)

        samples = publish_ids(port, ids, proc.pid, settled, progress)
        tracked = min(cap, ids)
    return summarize("flower", cap, ids, before, samples, tracked, progress)


def summarize(
    consumer: str,
    cap: int,
    ids: int,
    before: int,
    samples: list[dict],
    tracked: int,
    progress: Progress,
) -> dict[str, Any]:
    end = samples[-1]["rss"]
    # Flatness: from twice the cap (the index full, buffers at their working size) to the end.
    at_cap = next((s["rss"] for s in samples if s["ids"] >= 2 * cap), end)
    result = {
        "consumer": consumer,
        "cap": cap,
        "ids": ids,
        "tracked": tracked,
        "rss_before_mib": round(before / 2**20, 1),
        "rss_end_mib": round(end / 2**20, 1),
        "bytes_per_tracked_task": round((end - before) / max(1, tracked)),
        "growth_after_2x_cap_mib": round((end - at_cap) / 2**20, 1),
        "samples": samples,
    }
    progress.done(f"{result['bytes_per_tracked_task']} bytes/task")
    return result


@click.command()
@click.option("--ids", type=int, default=1_000_000, show_default=True)
@click.option("--caps", default="100000,1000000", show_default=True)
@click.option("--consumers", default="exporter,flower", show_default=True)
@click.option("--flower-cap", type=int, default=100_000, show_default=True)
def main(ids: int, caps: str, consumers: str, flower_cap: int) -> None:
    """Bytes per tracked task and RSS flatness past the cap, side by side."""
    results = []
    for consumer in consumers.split(","):
        consumer_caps = [flower_cap] if consumer == "flower" else [int(c) for c in caps.split(",")]
        for cap in consumer_caps:
            with tempfile.TemporaryDirectory() as tmp, private_redis() as port:
                measure = measure_exporter if consumer == "exporter" else measure_flower
                results.append(
                    measure(port, cap, ids if consumer == "exporter" else cap * 2, Path(tmp))
                )
    rows = [
        (
            r["consumer"],
            f"{r['cap']:,}",
            f"{r['ids']:,}",
            f"{r['tracked']:,}",
            r["rss_before_mib"],
            r["rss_end_mib"],
            r["bytes_per_tracked_task"],
            r["growth_after_2x_cap_mib"],
        )
        for r in results
    ]
    print(
        table(
            [
                "consumer",
                "cap",
                "ids",
                "tracked",
                "RSS before MiB",
                "RSS end MiB",
                "bytes/task",
                "growth after 2x cap MiB",
            ],
            rows,
        )
    )
    print(f"\nwrote {write_json('memory.json', {'results': results})}")


if __name__ == "__main__":
    main()

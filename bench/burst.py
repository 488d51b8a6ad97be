"""Burst benchmark: a flood far past --max-backlog-bytes, and SIGTERM with a large backlog.

    python bench/burst.py --consumers exporter@9961fa6,exporter       # before/after, one run

Redis may buffer pub/sub output without limit here, so only the exporter decides what is
dropped. The exporter is paused (SIGSTOP) while Redis takes ``--messages`` worker
heartbeats (~290 bytes each); on SIGCONT they arrive at socket speed, far faster than they
can be decoded. Two trials per consumer, alternating consumers:

* cap: with ``--max-backlog-bytes`` = ``--cap-mib``: peak RSS growth (VmHWM), largest
  backlog seen, events counted and dropped, seconds until every message is accounted for;
* sigterm: with the default cap: once the backlog passes 40 MiB (half of a smaller
  flood), SIGTERM; seconds to exit and the exit code (the target: 0 within 5 s).

Prints a table and writes bench/out/burst.json.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import Progress, http_json, http_text, private_redis, table, write_json
from bench.ingest import consumer
from tests.support.events import publish_heartbeats

UNLIMITED_PUBSUB = ("--client-output-buffer-limit", "pubsub 0 0 0")
SIGTERM_BACKLOG = 40 * 1024 * 1024
HEARTBEAT_BYTES = 290  # one published heartbeat envelope, about


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def status(url: str) -> dict[str, Any]:
    return http_json(url.replace("/metrics", "/api/status"))


def flood(port: int, pid: int, messages: int) -> None:
    os.kill(pid, signal.SIGSTOP)
    try:
        publish_heartbeats(redis.Redis(port=port), messages)
    finally:
        os.kill(pid, signal.SIGCONT)


def cap_trial(name: str, messages: int, cap: int) -> dict[str, Any]:
    args = ["--max-backlog-bytes", str(cap)]
    with (
        tempfile.TemporaryDirectory(prefix="burst-") as tmp,
        private_redis(*UNLIMITED_PUBSUB) as port,
        consumer(name)(port, Path(tmp), args) as count,
    ):
        pid, url = count.pid, count.url  # type: ignore[attr-defined]
        before = peak_rss(pid)
        flood(port, pid, messages)
        started, biggest = time.monotonic(), 0
        progress = Progress(f"{name} cap")
        while True:
            doc = status(url)
            biggest = max(biggest, _backlog(url))
            accounted = doc["events_total"] + doc["events_dropped_total"]
            progress.update(f"accounted {accounted:,} of {messages:,}")
            if accounted >= messages or time.monotonic() - started > 300:
                break
            time.sleep(0.1)
        seconds = time.monotonic() - started
        progress.done(f"dropped {doc['events_dropped_total']:,}")
        return {
            "consumer": name,
            "cap_mib": cap / 2**20,
            "messages": messages,
            "counted": doc["events_total"],
            "dropped": doc["events_dropped_total"],
            "max_backlog_mib": round(biggest / 2**20, 1),
            "peak_rss_growth_mib": round((peak_rss(pid) - before) / 2**20, 1),
            "seconds_to_account": round(seconds, 2),
        }


def _backlog(url: str) -> int:
    for line in http_text(url).splitlines():
        if line.startswith("celery_exporter_event_backlog_bytes "):
            return int(float(line.split()[1]))
    return 0


def sigterm_trial(name: str, messages: int) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory(prefix="burst-") as tmp,
        private_redis(*UNLIMITED_PUBSUB) as port,
        consumer(name)(port, Path(tmp)) as count,
    ):
        pid, url, proc = count.pid, count.url, count.proc  # type: ignore[attr-defined]
        flood(port, pid, messages)
        # 40 MiB (several seconds of decoding), or half of a smaller flood.
        wanted = min(SIGTERM_BACKLOG, messages * HEARTBEAT_BYTES // 2)
        deadline = time.monotonic() + 60
        backlog = 0
        while backlog < wanted and time.monotonic() < deadline:
            backlog = _backlog(url)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            code = None
        return {
            "consumer": name,
            "backlog_at_sigterm_mib": round(backlog / 2**20, 1),
            "exit_seconds": round(time.monotonic() - started, 2),
            "exit_code": code,
        }


@click.command()
@click.option("--consumers", default="exporter", show_default=True,
              help="exporter, or exporter@REV for the exporter at a git revision.")  # fmt: skip
@click.option("--messages", type=int, default=300_000, show_default=True)
@click.option("--cap-mib", type=int, default=4, show_default=True)
@click.option("--repeat", type=int, default=2, show_default=True)
def main(consumers: str, messages: int, cap_mib: int, repeat: int) -> None:
    """A flood past the backlog cap, and SIGTERM with a backlog, side by side."""
    names = consumers.split(",")
    caps, stops = [], []
    for _ in range(repeat):
        for name in names:
            caps.append(cap_trial(name, messages, cap_mib * 2**20))
            stops.append(sigterm_trial(name, messages))
    print(table(list(caps[0]), [list(row.values()) for row in caps]))
    print()
    print(table(list(stops[0]), [list(row.values()) for row in stops]))
    path = write_json("burst.json", {"cap": caps, "sigterm": stops})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()

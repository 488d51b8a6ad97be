"""The periodic tasks' work (beat, workload/app.py): a stats snapshot and a retention sweep.

Both are cheap by design: one pipelined round trip per Redis for the stats, and for the
sweep one directory scan plus at most ``PURGE_BATCH`` dead letters per run.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import redis

from workload import datastore, queues

STATS_KEY = f"{datastore.KEY_PREFIX}stats"
PURGE_BATCH = 1000


def queue_lengths(broker: redis.Redis) -> dict[str, int]:
    """Waiting messages per workload queue, every priority list summed (one round trip)."""
    pipe = broker.pipeline(transaction=False)
    for queue in queues.QUEUES:
        for key in queues.redis_lists(queue):
            pipe.llen(key)
    counts = iter(pipe.execute())
    per_list = len(queues.PRIORITY_SUFFIXES)
    return {queue: sum(next(counts) for _ in range(per_list)) for queue in queues.QUEUES}


def refresh_stats(broker: redis.Redis, data: redis.Redis, ttl: int) -> dict[str, Any]:
    """Write a small snapshot to ``workload:stats``; it expires if beat stops refreshing it."""
    from workload.dlq import LETTERS_KEY

    snapshot: dict[str, Any] = {f"queue:{q}": n for q, n in queue_lengths(broker).items()}
    snapshot["dead_letters"] = data.hlen(LETTERS_KEY)
    snapshot["refreshed_at"] = round(time.time(), 3)
    pipe = data.pipeline()
    pipe.delete(STATS_KEY).hset(STATS_KEY, mapping=snapshot).expire(STATS_KEY, ttl)
    pipe.execute()
    return snapshot


def read_stats(data: redis.Redis) -> dict[str, Any]:
    raw = data.hgetall(STATS_KEY)
    return {key: float(value) if "." in value else int(value) for key, value in raw.items()}


def purge_report_files(directory: Path, older_than: float) -> int:
    """Delete report files last written before ``older_than`` (epoch seconds)."""
    removed = 0
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return 0
    for entry in entries:
        if not (entry.name.startswith("report-") and entry.name.endswith(".csv")):
            continue
        try:
            if entry.is_file() and entry.stat().st_mtime < older_than:
                os.unlink(entry.path)
                removed += 1
        except FileNotFoundError:  # another worker's sweep got there first
            continue
    return removed


def purge_dead_letters(data: redis.Redis, older_than: float) -> int:
    """Delete parked dead letters that failed before ``older_than`` (oldest first, batched)."""
    from workload.dlq import INDEX_KEY, LETTERS_KEY

    ids = data.zrangebyscore(INDEX_KEY, "-inf", f"({older_than}", start=0, num=PURGE_BATCH)
    if not ids:
        return 0
    data.pipeline().hdel(LETTERS_KEY, *ids).zrem(INDEX_KEY, *ids).execute()
    return len(ids)

"""Admission control for the API: refuse new jobs while a queue's backlog is over its limit.

A queue's length is one pipelined round trip to the broker (LLEN of its four priority lists).
That round trip costs about as much as the job-id SET every submission makes, ~10% of a
POST (bench/workload.py's ``admission`` command), so each API process reuses a length for
``WORKLOAD_API_BACKLOG_CACHE_MS`` (100 ms): under load, when admission matters, the check then
costs one round trip per queue per 100 ms instead of one per request. The price is an
overshoot of at most what one process accepts in that time (100 jobs at 1,000 requests/s),
1% of the default limit; 0 reads the length on every request.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import redis

from workload import queues


@dataclass(frozen=True)
class Backlogged(Exception):
    """The queue holds ``length`` messages, at or over its ``limit``."""

    queue: str
    length: int
    limit: int

    def __str__(self) -> str:
        return (
            f"queue {self.queue!r} is full ({self.length} waiting, limit {self.limit}); "
            "try again later"
        )


def backlog(broker: redis.Redis, queue: str) -> int:
    """Messages waiting in ``queue``, summed over kombu's priority lists (one round trip)."""
    pipe = broker.pipeline(transaction=False)
    for key in queues.redis_lists(queue):
        pipe.llen(key)
    return sum(pipe.execute())


class BacklogCache:
    """Queue lengths read at most once per ``max_age`` seconds (per process)."""

    def __init__(self, max_age: float) -> None:
        self.max_age = max_age
        self.lengths: dict[str, tuple[float, int]] = {}
        self.lock = threading.Lock()

    def length(self, broker: redis.Redis, queue: str) -> int:
        now = time.monotonic()
        with self.lock:
            read_at, length = self.lengths.get(queue, (-1e18, 0))
        if now - read_at < self.max_age:
            return length
        length = backlog(broker, queue)  # a race only costs an extra read
        with self.lock:
            self.lengths[queue] = (now, length)
        return length


def admit(broker: redis.Redis, queue: str, limit: int, cache: BacklogCache | None = None) -> None:
    """Raise Backlogged when ``queue`` already holds ``limit`` messages (0: no limit)."""
    if limit <= 0:
        return
    length = cache.length(broker, queue) if cache else backlog(broker, queue)
    if length >= limit:
        raise Backlogged(queue, length, limit)

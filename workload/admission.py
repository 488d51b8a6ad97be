"""Admission control for the API: refuse new jobs while a queue's backlog is over its limit.

The check is one pipelined round trip to the broker (LLEN of the queue's four priority lists),
about as cheap as the job-id SET every submission already makes; bench/workload.py's
``admission`` command measures it. A cached length would save that round trip but let a burst
overshoot the limit by everything accepted between refreshes, on every API process.
"""

from __future__ import annotations

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


def admit(broker: redis.Redis, queue: str, limit: int) -> None:
    """Raise Backlogged when ``queue`` already holds ``limit`` messages (0: no limit)."""
    if limit <= 0:
        return
    length = backlog(broker, queue)
    if length >= limit:
        raise Backlogged(queue, length, limit)

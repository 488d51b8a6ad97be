"""The task series: counters and histograms keyed by label sets, with their ``_created``
times and the total series budget. What the state counts, apart from why it counts it.

Counters are plain dicts keyed by label-value tuples: at 100k+ events/s the per-call locking
of a prometheus_client ``Counter.labels().inc()`` would be the bottleneck. A new worker-side
label set appears at 0 in every counter at once, so ``rate()`` and ``increase()`` see its
first event, and it draws its series from the budget; past the budget it folds into one
``(other, other, other)`` set, and each fold is counted.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable

from exporter.labels import OTHER, SeriesBudget

TASK_EVENT_TYPES = (
    "task-sent",
    "task-received",
    "task-started",
    "task-succeeded",
    "task-failed",
    "task-rejected",
    "task-revoked",
    "task-retried",
)
# Counters the exporter derives itself, kept beside the event counters (same label sets).
TASK_LOST = "task-lost"
TASK_REDELIVERED = "task-redelivered"
TASK_COUNTERS = (*TASK_EVENT_TYPES, TASK_LOST, TASK_REDELIVERED)
OVERFLOW_KEY = (OTHER, OTHER, OTHER)
SENT_KEY_COST = 2  # a producer's label set: its sent counter and that counter's _created

Key = tuple[str, ...]


class Histogram:
    """Non-cumulative bucket counts plus a sum; cumulated only when rendered."""

    __slots__ = ("counts", "sum")

    def __init__(self, n_buckets: int) -> None:
        self.counts = [0] * (n_buckets + 1)  # the last one is +Inf
        self.sum = 0.0


class TaskSeries:
    """Every task counter and histogram; written by the event thread only."""

    def __init__(
        self,
        max_series: int,
        runtime_buckets: tuple[float, ...],
        queue_wait_buckets: tuple[float, ...],
    ) -> None:
        self.runtime_buckets = runtime_buckets
        self.queue_wait_buckets = queue_wait_buckets
        self.budget = SeriesBudget(max_series)
        self.counters: dict[str, dict[Key, int]] = {kind: {} for kind in TASK_COUNTERS}
        self.failed = self.counters["task-failed"]  # keyed (name, host, queue, exception)
        self.sent = self.counters["task-sent"]
        self.processed: dict[Key, int] = {}
        self.runtime: dict[Key, Histogram] = {}
        self.queue_wait: dict[Key, Histogram] = {}
        self.created: dict[Key, float] = {}  # label set -> when its series began
        self.known: set[Key] = set()  # worker-side label sets
        # Counters and processed with their _created; both histograms' buckets, count, sum
        # and _created.
        self.key_cost = (
            2 * (len(TASK_COUNTERS) + 1)
            + sum(len(b) + 4 for b in (runtime_buckets, queue_wait_buckets))
        )  # fmt: skip

    def worker_key(self, key: Key) -> Key:
        """``key``, made known at 0 in every counter (or the overflow set past the budget)."""
        if key in self.known:
            return key
        if not self.budget.take(self.key_cost):
            key = OVERFLOW_KEY
            if key in self.known:
                return key
        self.known.add(key)
        now = time.time()
        self.created.setdefault(key, now)
        # task_failed's zero series is keyed with exception="": it has its _created too.
        self.created.setdefault((*key, ""), now)
        for kind, counter in self.counters.items():
            counter.setdefault((*key, "") if kind == "task-failed" else key, 0)
        self.processed.setdefault(key, 0)
        return key

    def sent_key(self, key: Key) -> Key:
        """A producer's label set lives in the sent counter only (the peer does the same:
        producers times every series would multiply the exposition)."""
        if key in self.sent:
            return key
        if not self.budget.take(SENT_KEY_COST):
            key = OVERFLOW_KEY
            if key in self.sent:
                return key
        self.sent[key] = 0
        self.created.setdefault(key, time.time())
        return key

    def count(self, kind: str, key: Key) -> None:
        self.counters[kind][key] += 1

    def fail(self, key: Key, exception: str) -> None:
        exc_key = (*key, exception)
        if exc_key not in self.failed:
            self.failed[exc_key] = 0
            self.created.setdefault(exc_key, time.time())
        self.failed[exc_key] += 1
        self.processed[key] += 1

    def drop(self, doomed: Callable[[Key], bool]) -> None:
        """Remove every series whose label set is ``doomed`` and return its budget."""
        sent_only = [key for key in self.sent if doomed(key) and key not in self.known]
        worker_sets = [key for key in self.known if doomed(key)]
        self.known.difference_update(worker_sets)
        self.budget.give_back(len(worker_sets) * self.key_cost + len(sent_only) * SENT_KEY_COST)
        tables: tuple[dict[Key, object], ...] = (
            *self.counters.values(), self.processed, self.runtime, self.queue_wait, self.created,
        )  # fmt: skip
        for table in tables:
            for key in [key for key in table if doomed(key)]:
                del table[key]


def observe(table: dict[Key, Histogram], key: Key, value: float, bounds: tuple[float, ...]) -> None:
    """Count ``value`` in ``table[key]`` (created on first use). On the hot path: one call."""
    hist = table.get(key)
    if hist is None:
        hist = table[key] = Histogram(len(bounds))
    hist.counts[bisect_left(bounds, value)] += 1
    hist.sum += value

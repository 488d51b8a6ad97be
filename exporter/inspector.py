"""Background ``inspect``: consumers, workers and pool processes per queue.

Only a broadcast can tell which worker consumes which queue and how big its pool is, and a
broadcast waits for replies. The peer exporter broadcasts on every scrape (about 2 s per
scrape); here it runs every ``--inspect-interval`` seconds in its own thread with a hard
timeout, and scrapes read the last result. Until the first inspect succeeds the figures are
absent (unknown), not 0.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from celery import Celery

from exporter.periodic import Periodic
from exporter.workers import Pool, pool_kind

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class InspectView:
    """Per-queue figures from the last successful inspect; ``at`` is None before it."""

    at: float | None = None
    workers: dict[str, int] = field(default_factory=dict)
    processes: dict[str, int] = field(default_factory=dict)
    queues_of: dict[str, tuple[str, ...]] = field(default_factory=dict)  # worker -> its queues
    pools: dict[str, Pool] = field(default_factory=dict)  # worker -> pool kind and size


def summarize(active_queues: dict[str, Any], stats: dict[str, Any], now: float) -> InspectView:
    """Fold inspect replies (``{worker: [queue info...]}``, ``{worker: stats}``) per queue."""
    workers: Counter[str] = Counter()
    processes: Counter[str] = Counter()
    queues_of: dict[str, tuple[str, ...]] = {}
    pools = {worker: pool_of(reply) for worker, reply in (stats or {}).items()}
    for worker, queue_infos in (active_queues or {}).items():
        size = pools[worker].size if worker in pools else 0
        for info in queue_infos or []:
            name = info.get("name") if isinstance(info, dict) else None
            if isinstance(name, str):
                workers[name] += 1
                processes[name] += int(size or 0)
                queues_of[worker] = (*queues_of.get(worker, ()), name)
    return InspectView(
        at=now, workers=dict(workers), processes=dict(processes), queues_of=queues_of, pools=pools
    )


def pool_of(stats: object) -> Pool:
    """A worker's pool from its ``stats`` reply (``{"pool": {"implementation": ...,
    "max-concurrency": n, "processes": [...]}}``); unknown parts are empty."""
    pool = stats.get("pool") if isinstance(stats, dict) else None
    if not isinstance(pool, dict):
        return Pool("", 0)
    size = pool.get("max-concurrency") or len(pool.get("processes") or [])
    return Pool(pool_kind(pool.get("implementation")), size if isinstance(size, int) else 0)


class InspectorThread(Periodic):
    """Broadcasts ``active_queues`` and ``stats`` every ``interval`` seconds."""

    thread_name = "inspector"
    failure_message = "inspect failed; consumer counts stay at their last value"
    recovery_message = "inspect recovered"

    def __init__(
        self,
        app: Celery,
        interval: float,
        timeout: float,
        on_view: Callable[[InspectView], None] | None = None,
    ) -> None:
        super().__init__(interval, join_timeout=timeout * 2 + 5)
        self.app = app
        self.timeout = timeout
        self.on_view = on_view
        self.view = InspectView()

    def step(self) -> None:
        inspect = self.app.control.inspect(timeout=self.timeout)
        self.view = summarize(inspect.active_queues() or {}, inspect.stats() or {}, time.time())
        if self.on_view is not None:
            self.on_view(self.view)

"""Workers as the exporter knows them: heartbeats, the pool they run, and their state.

A worker is ``online`` while its heartbeats arrive within the worker timeout. When they stop
it is either gone on purpose or not:

* ``offline``: it said goodbye (``worker-offline``: warm shutdown, autoscale-down, a
  rolling deploy). A departure, not a death; it never alerts.
* ``lost``: heartbeats stopped without a goodbye (SIGKILL, OOM, node loss). This alerts.
* ``busy``: heartbeats stopped while it runs a task the exporter saw start, and its pool
  (known from the background inspect) can starve the loop that sends heartbeats (a threads
  pool whose task holds the GIL, a gevent/eventlet task that never yields). Such a worker is
  most likely working, not dead; the long task shows in
  ``celery_task_oldest_running_age_seconds``. The exporter states what it saw rather than
  guess either way.

A solo pool runs the task inside the event loop itself, and Celery buffers task events in
that loop: while a solo worker runs a long task the exporter sees nothing at all, not even
the task's start, so it cannot tell it from a dead one and shows it ``lost``. Such workers
need a ``--worker-timeout`` longer than their longest task (docs and runbook say so).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

ONLINE, OFFLINE, LOST, BUSY = "online", "offline", "lost", "busy"
STATES = (ONLINE, OFFLINE, LOST, BUSY)
# Pools whose running task blocks the heartbeat (module of celery.concurrency.<x>:TaskPool).
HEARTBEAT_BLOCKING_POOLS = frozenset({"solo", "thread", "threads", "gevent", "eventlet"})
MAX_FREQ = 3600.0  # a heartbeat interval beyond an hour is a bug or an attack, not a worker
MAX_COUNT = 10**9


class Pool(NamedTuple):
    """A worker's pool from inspect ``stats``: implementation short name and concurrency."""

    kind: str
    size: int


def pool_kind(implementation: object) -> str:
    """``"celery.concurrency.solo:TaskPool"`` -> ``"solo"``; unknown input -> ``""``."""
    if not isinstance(implementation, str):
        return ""
    module = implementation.partition(":")[0]
    return module.rsplit(".", 1)[-1]


@dataclass(slots=True)
class Worker:
    """What the worker's events said about it."""

    last_seen: float  # local receive time (skew-free), Unix seconds
    freq: float = 2.0
    active: int = 0
    processed: int = 0
    first_processed: int | None = None
    online: bool = True
    task_events_seen: bool = False

    @property
    def sends_task_events(self) -> bool:
        """False when the worker processed tasks but none of its task events arrived (no -E)."""
        return self.task_events_seen or self.processed == (self.first_processed or 0)

    def read_heartbeat(self, event: dict[str, Any]) -> list[str]:
        """Take freq, active and processed from a worker event; return the names of fields
        that were out of range and ignored (a dead worker must not stay up on freq=1e18)."""
        invalid = []
        freq = event.get("freq")
        if freq is not None:
            if (value := valid_freq(freq)) is None:
                invalid.append("freq")
            else:
                self.freq = value
        active = event.get("active")
        if active is not None:
            if (count := valid_count(active)) is None:
                invalid.append("active")
            else:
                self.active = count
        processed = event.get("processed")
        if processed is not None:
            if (count := valid_count(processed)) is None:
                invalid.append("processed")
            else:
                self.processed = count
                if self.first_processed is None or count < self.first_processed:
                    self.first_processed = count  # a restarted worker counts from 0 again
        return invalid

    def copy(self) -> Worker:
        return Worker(
            self.last_seen,
            self.freq,
            self.active,
            self.processed,
            self.first_processed,
            self.online,
            self.task_events_seen,
        )


def worker_state(
    worker: Worker, now: float, timeout: float | None, pool: Pool | None, running: int
) -> str:
    """online / offline / lost / busy (module docstring). ``timeout`` None: three heartbeat
    intervals of this worker; 0: never time out. ``running``: tasks the exporter saw start
    on it and not finish."""
    if not worker.online:
        return OFFLINE
    limit = 3 * worker.freq if timeout is None else timeout
    if limit == 0 or now - worker.last_seen <= limit:
        return ONLINE
    if running > 0 and pool is not None and pool.kind in HEARTBEAT_BLOCKING_POOLS:
        return BUSY
    return LOST


def valid_freq(value: object) -> float | None:
    """A heartbeat interval we can trust, or None (``freq=1e18`` would keep a dead worker up)."""
    if (type(value) is float or type(value) is int) and 0 < value <= MAX_FREQ:
        return float(value)
    return None


def valid_count(value: object) -> int | None:
    """A task count from a heartbeat: an int in [0, 1e9], or None (``active=-5``)."""
    if type(value) is int and 0 <= value <= MAX_COUNT:
        return value
    return None

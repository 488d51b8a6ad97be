"""Tasks in flight that the queue cannot show: running ones and ETA tasks held by workers.

Both are kept as cheaply as the hot path allows (one dict operation per event) and
summarised only when read:

* running tasks: ``uuid -> ((name, queue), worker, local start time)``; a scrape derives the
  oldest per (name, queue), and the worker check derives how many run on each worker, which
  tells a silent worker that is busy with a long task from one that is gone. There are as
  many entries as tasks running (pool sizes), bounded by the task index in any case: an
  evicted task leaves;
* scheduled tasks per queue: received with a future ETA or countdown and not started, held
  in the worker's memory (``celery_queue_length`` cannot see them).
"""

from __future__ import annotations

from collections.abc import Mapping

Running = Mapping[str, tuple[tuple[str, str], str, float]]


class InFlight:
    """Owned by the event thread; readers copy ``running`` and ``scheduled``."""

    def __init__(self) -> None:
        self.running: dict[str, tuple[tuple[str, str], str, float]] = {}
        self._scheduled: dict[str, str] = {}  # uuid -> queue
        self.scheduled: dict[str, int] = {}  # queue -> scheduled tasks

    def start(self, uuid: str, key: tuple[str, str], host: str, at: float) -> None:
        if self._scheduled:
            self.unschedule(uuid)
        if uuid not in self.running:
            self.running[uuid] = (key, host, at)

    def schedule(self, uuid: str, queue: str) -> None:
        if uuid not in self._scheduled:
            self._scheduled[uuid] = queue
            self.scheduled[queue] = self.scheduled.get(queue, 0) + 1

    def unschedule(self, uuid: str) -> None:
        queue = self._scheduled.pop(uuid, None)
        if queue is not None:
            left = self.scheduled[queue] - 1
            if left:
                self.scheduled[queue] = left
            else:
                del self.scheduled[queue]

    def leave(self, uuid: str) -> None:
        """The task is neither scheduled nor running any more (finished, lost, evicted,
        retried, requeued or delivered again)."""
        self.running.pop(uuid, None)
        if self._scheduled:
            self.unschedule(uuid)


def oldest_running(running: Running) -> dict[tuple[str, str], float]:
    """(name, queue) -> start time of its oldest running task."""
    oldest: dict[tuple[str, str], float] = {}
    for key, _, since in running.values():
        if not oldest.get(key, since) < since:
            oldest[key] = since
    return oldest


def running_per_worker(running: Running) -> dict[str, int]:
    counts: dict[str, int] = {}
    for _, host, _ in running.values():
        counts[host] = counts.get(host, 0) + 1
    return counts

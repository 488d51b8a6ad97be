"""Tasks in flight that the queue cannot show: running ones and ETA tasks held by workers.

Two figures come from here, both maintained per event so a scrape only copies a dict:

* the oldest running task per (name, queue): each key keeps an insertion-ordered dict
  ``uuid -> local start time``; starts arrive in time order, so its first value is the
  oldest, and removing any task is O(1);
* scheduled tasks per queue: received with a future ETA or countdown and not started,
  held in the worker's memory (``celery_queue_length`` cannot see them).

It also counts running tasks per worker, which tells a silent worker that is busy with a
long task (solo pool) from one that is gone.
"""

from __future__ import annotations


class InFlight:
    """Owned by the event thread; scrapes copy ``oldest`` and ``scheduled``."""

    def __init__(self) -> None:
        self._running: dict[str, tuple[tuple[str, str], str]] = {}  # uuid -> (key, host)
        self._by_key: dict[tuple[str, str], dict[str, float]] = {}
        self.oldest: dict[tuple[str, str], float] = {}  # (name, queue) -> oldest start
        self.per_host: dict[str, int] = {}  # worker -> tasks running on it
        self._scheduled: dict[str, str] = {}  # uuid -> queue
        self.scheduled: dict[str, int] = {}  # queue -> scheduled tasks

    def start(self, uuid: str, key: tuple[str, str], host: str, at: float) -> None:
        if uuid in self._running:
            return
        self._running[uuid] = (key, host)
        tasks = self._by_key.get(key)
        if tasks is None:
            tasks = self._by_key[key] = {}
            self.oldest[key] = at
        tasks[uuid] = at
        self.per_host[host] = self.per_host.get(host, 0) + 1

    def schedule(self, uuid: str, queue: str) -> None:
        if uuid not in self._scheduled:
            self._scheduled[uuid] = queue
            self.scheduled[queue] = self.scheduled.get(queue, 0) + 1

    def unschedule(self, uuid: str) -> None:
        queue = self._scheduled.pop(uuid, None)
        if queue is not None:
            _decrement(self.scheduled, queue)

    def leave(self, uuid: str) -> None:
        """The task is neither scheduled nor running any more (finished, lost, evicted,
        retried, requeued or delivered again)."""
        self.unschedule(uuid)
        entry = self._running.pop(uuid, None)
        if entry is None:
            return
        key, host = entry
        tasks = self._by_key[key]
        del tasks[uuid]
        if tasks:
            self.oldest[key] = next(iter(tasks.values()))
        else:
            del self._by_key[key]
            del self.oldest[key]
        _decrement(self.per_host, host)

    def running_on(self, host: str) -> int:
        return self.per_host.get(host, 0)


def _decrement(counts: dict[str, int], key: str) -> None:
    left = counts[key] - 1
    if left:
        counts[key] = left
    else:
        del counts[key]

"""The task index: what later events of a task need to know about its earlier ones.

Only ``task-sent`` carries the queue and only ``task-sent``/``task-received`` carry the name,
so ``task-started`` or ``task-failed`` look them up here, with the times that give queue wait
and failed-task runtime.

Memory is the design constraint (a busy fleet sends millions of task ids), so the index is a
ring of parallel arrays plus one dict ``uuid -> slot``:

* about 200 bytes per tracked task (the uuid string, a dict entry, three doubles and two
  references to interned strings) instead of a few KB for an object per task;
* a hard cap: when the ring is full the oldest task (first seen) is evicted and counted;
* finished tasks leave the index at once, so it holds mostly tasks in flight; a small
  second ring remembers recently finished ones, because some events arrive after the
  terminal one (Celery 5.7 sends ``task-rejected`` after ``task-failed`` for
  ``Reject(requeue=False)``).
"""

from __future__ import annotations

from array import array
from collections import deque

NaN = float("nan")


class TaskIndex:
    """``uuid -> (name, queue, sent, ready, started)`` with a hard cap, oldest evicted first.

    ``ready`` is ``max(sent, eta)``: when the task could first have started.
    Only the event-processing thread writes; other threads may read with ``sent_time``.
    """

    def __init__(self, cap: int) -> None:
        if cap < 1:
            raise ValueError("the task index needs room for at least one task")
        self.cap = cap
        # Recently finished tasks: uuid -> (name, queue), oldest dropped first.
        self._recent: dict[str, tuple[str | None, str | None]] = {}
        self._recent_order: deque[str] = deque()
        self._recent_cap = max(1, cap // 10)
        self.slot_of: dict[str, int] = {}
        self._uuids: list[str | None] = []
        self._names: list[str | None] = []
        self._queues: list[str | None] = []
        self._sent = array("d")
        self._ready = array("d")
        self._started = array("d")
        # Slot numbers are shared int objects, so the dict holds no per-task int.
        self._slot_numbers: list[int] = []
        self._head = 0
        self.evicted = 0

    def __len__(self) -> int:
        return len(self.slot_of)

    def _allocate(self, uuid: str) -> int:
        """A slot for a new task: grow until the cap, then reuse the oldest slot."""
        if len(self._uuids) < self.cap:
            slot = len(self._uuids)
            self._uuids.append(uuid)
            self._names.append(None)
            self._queues.append(None)
            self._sent.append(NaN)
            self._ready.append(NaN)
            self._started.append(NaN)
            self._slot_numbers.append(slot)
        else:
            slot = self._head
            self._head = (slot + 1) % self.cap
            old = self._uuids[slot]
            if old is not None:
                del self.slot_of[old]
                self.evicted += 1
            self._uuids[slot] = uuid
            self._names[slot] = self._queues[slot] = None
            self._sent[slot] = self._ready[slot] = self._started[slot] = NaN
        self.slot_of[uuid] = self._slot_numbers[slot]
        return slot

    def slot(self, uuid: str) -> int:
        """The slot of ``uuid``, creating an empty entry if the task is new."""
        slot = self.slot_of.get(uuid)
        if slot is None:
            slot = self._allocate(uuid)
        return slot

    def sent(self, uuid: str, name: str, queue: str, sent: float, ready: float) -> None:
        slot = self.slot(uuid)
        self._names[slot] = name
        self._queues[slot] = queue
        self._sent[slot] = sent
        self._ready[slot] = ready

    def received(self, uuid: str, name: str, ready: float) -> None:
        slot = self.slot(uuid)
        self._names[slot] = name
        if ready == ready and not self._ready[slot] >= ready:  # NaN-safe max
            self._ready[slot] = ready

    def started(self, uuid: str, started: float) -> tuple[str | None, str | None, float]:
        """Record the start; return (name, queue, ready time or NaN)."""
        slot = self.slot(uuid)
        self._started[slot] = started
        return self._names[slot], self._queues[slot], self._ready[slot]

    def lookup(self, uuid: str) -> tuple[str | None, str | None, float]:
        """(name, queue, started time or NaN) of a known task, without creating it."""
        slot = self.slot_of.get(uuid)
        if slot is None:
            name, queue = self._recent.get(uuid, (None, None))
            return name, queue, NaN
        return self._names[slot], self._queues[slot], self._started[slot]

    def finish(self, uuid: str) -> tuple[str | None, str | None, float]:
        """Move a finished task to the recent ring; return (name, queue, started or NaN)."""
        slot = self.slot_of.pop(uuid, None)
        if slot is None:
            return self.lookup(uuid)
        self._uuids[slot] = None
        name, queue, started = self._names[slot], self._queues[slot], self._started[slot]
        self._recent[uuid] = (name, queue)
        self._recent_order.append(uuid)
        if len(self._recent_order) > self._recent_cap:
            self._recent.pop(self._recent_order.popleft(), None)
        return name, queue, started

    def sent_time(self, uuid: str) -> float | None:
        """When the task was sent, if known (read by the broker poller's thread)."""
        slot = self.slot_of.get(uuid)
        if slot is None:
            return None
        sent = self._sent[slot]
        return None if sent != sent else sent

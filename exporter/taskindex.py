"""The task index: what later events of a task need to know about its earlier ones.

Only ``task-sent`` carries the queue and only ``task-sent``/``task-received`` carry the name,
so ``task-started`` or ``task-failed`` look them up here, with the times that give queue wait
and failed-task runtime, the worker that holds the task (for lost tasks), and the ``retries``
count of its last delivery (a second ``task-received`` with the same count is a redelivery).

Memory is the design constraint (a busy fleet sends millions of task ids), so the index is a
ring of parallel arrays plus one dict ``uuid -> slot``:

* about 260 bytes per tracked task (the uuid string, a dict entry, three doubles, an int, a
  flag byte and references to interned label strings) instead of a few KB for an object per
  task;
* a hard cap: when the ring is full the oldest task (first seen) is evicted and counted;
* finished tasks leave the index at once, so it holds mostly tasks in flight; a small
  second table remembers recently finished ones, because some events arrive after the
  terminal one (Celery 5.7 sends ``task-rejected`` after ``task-failed`` for
  ``Reject(requeue=False)``, and two ``task-failed`` for a hard time limit) and because a
  visibility-timeout redelivery of a finished task is received again.
"""

from __future__ import annotations

from array import array
from collections import deque
from collections.abc import Callable, Iterator

NaN = float("nan")
NOT_RECEIVED = -1

# Slot flags.
SCHEDULED = 1  # received with a future ETA, not started: counted in the scheduled gauge
LOST = 2  # counted as lost with its worker: never counted twice


# What a final event needs: (name, queue, start time or NaN, whether it repeats a final
# state of this attempt).
Finished = tuple[str | None, str | None, float, bool]


# Final states, as bits: a task id remembers which it reported (Celery repeats some).
FINAL_BITS = {"task-succeeded": 1, "task-failed": 2, "task-revoked": 4, "task-rejected": 8}


class TaskIndex:
    """``uuid -> (name, queue, host, sent, ready, started, retries, flags)``, capped.

    ``ready`` is ``max(sent, eta)``: when the task could first have started.
    Only the event-processing thread writes; other threads may read with ``sent_time``.
    ``on_evict(slot)`` is called before an in-flight task's slot is reused, so the owner can
    drop what it derived from the task (running and scheduled figures).
    """

    def __init__(self, cap: int, on_evict: Callable[[int], None] | None = None) -> None:
        if cap < 1:
            raise ValueError("the task index needs room for at least one task")
        self.cap = cap
        self.on_evict = on_evict
        # Recently finished: uuid -> (name, queue, retries, final-state bits).
        self._recent: dict[str, tuple[str | None, str | None, int, int]] = {}
        self._recent_order: deque[str] = deque()
        self._recent_cap = max(1, cap // 10)
        self.slot_of: dict[str, int] = {}
        self.uuids: list[str | None] = []
        self.names: list[str | None] = []
        self.queues: list[str | None] = []
        self.hosts: list[str | None] = []
        self.sent_at = array("d")
        self.ready = array("d")
        self.started_at = array("d")
        self.retries = array("i")
        self.flags = bytearray()
        # Slot numbers are shared int objects, so the dict holds no per-task int.
        self._slot_numbers: list[int] = []
        self._head = 0
        self.evicted = 0

    def __len__(self) -> int:
        return len(self.slot_of)

    def _allocate(self, uuid: str) -> int:
        """A slot for a new task: grow until the cap, then reuse the oldest slot."""
        if len(self.uuids) < self.cap:
            slot = len(self.uuids)
            self.uuids.append(uuid)
            self.names.append(None)
            self.queues.append(None)
            self.hosts.append(None)
            self.sent_at.append(NaN)
            self.ready.append(NaN)
            self.started_at.append(NaN)
            self.retries.append(NOT_RECEIVED)
            self.flags.append(0)
            self._slot_numbers.append(slot)
        else:
            slot = self._head
            self._head = (slot + 1) % self.cap
            old = self.uuids[slot]
            if old is not None:
                if self.on_evict is not None:
                    self.on_evict(slot)
                del self.slot_of[old]
                self.evicted += 1
            self._clear(slot, uuid)
        self.slot_of[uuid] = self._slot_numbers[slot]
        return slot

    def _clear(self, slot: int, uuid: str | None) -> None:
        self.uuids[slot] = uuid
        self.names[slot] = self.queues[slot] = self.hosts[slot] = None
        self.sent_at[slot] = self.ready[slot] = self.started_at[slot] = NaN
        self.retries[slot] = NOT_RECEIVED
        self.flags[slot] = 0

    def slot(self, uuid: str) -> int:
        """The slot of ``uuid``, creating it if the task is new (restoring the name and
        queue of a recently finished task, which is running again: a redelivery)."""
        slot = self.slot_of.get(uuid)
        if slot is None:
            slot = self._allocate(uuid)
            recent = self._recent.pop(uuid, None)
            if recent is not None:
                self.names[slot], self.queues[slot], self.retries[slot], _ = recent
        return slot

    def sent(self, uuid: str, name: str, queue: str, sent: float, ready: float) -> None:
        slot = self.slot(uuid)
        self.names[slot] = name
        self.queues[slot] = queue
        self.sent_at[slot] = sent
        self.ready[slot] = ready

    def received(self, uuid: str, name: str, ready: float, retries: int) -> tuple[int, bool]:
        """Record a delivery; return (slot, redelivered): a second delivery of the same
        attempt (same ``retries``) is a redelivery. A retry is a new attempt, not one."""
        slot = self.slot(uuid)
        self.names[slot] = name
        if ready == ready and not self.ready[slot] >= ready:  # NaN-safe max
            self.ready[slot] = ready
        redelivered = self.retries[slot] == retries
        self.retries[slot] = retries
        self.started_at[slot] = NaN
        self.flags[slot] &= ~LOST
        return slot, redelivered

    def forget_delivery(self, uuid: str) -> None:
        """The message goes back to the broker on purpose (a requeueing reject): its next
        delivery is not a redelivery."""
        slot = self.slot_of.get(uuid)
        if slot is not None:
            self.retries[slot] = NOT_RECEIVED

    def started(self, uuid: str, started: float) -> int:
        """Record the start; return the slot."""
        slot = self.slot(uuid)
        self.started_at[slot] = started
        return slot

    def lookup(self, uuid: str) -> tuple[str | None, str | None, float]:
        """(name, queue, started time or NaN) of a known task, without creating it."""
        slot = self.slot_of.get(uuid)
        if slot is None:
            recent = self._recent.get(uuid)
            return (recent[0], recent[1], NaN) if recent else (None, None, NaN)
        return self.names[slot], self.queues[slot], self.started_at[slot]

    def finish(self, uuid: str, final: str) -> Finished:
        """Move a finished task to the recent table. A final state already seen for this
        attempt is reported as a duplicate (counted once per task id)."""
        bit = FINAL_BITS[final]
        slot = self.slot_of.pop(uuid, None)
        if slot is None:
            recent = self._recent.get(uuid)
            if recent is None:
                return None, None, NaN, False
            name, queue, retries, finals = recent
            if finals & bit:
                return name, queue, NaN, True
            self._recent[uuid] = (name, queue, retries, finals | bit)
            return name, queue, NaN, False
        name, queue = self.names[slot], self.queues[slot]
        self._remember(uuid, (name, queue, self.retries[slot], bit))
        self.uuids[slot] = None  # the slot is cleared when it is allocated again
        return name, queue, self.started_at[slot], False

    def _remember(self, uuid: str, recent: tuple[str | None, str | None, int, int]) -> None:
        self._recent[uuid] = recent
        self._recent_order.append(uuid)
        while len(self._recent_order) > self._recent_cap:
            self._recent.pop(self._recent_order.popleft(), None)

    def held_by(self, host: str) -> Iterator[int]:
        """Slots of tasks received or started on ``host`` and not yet counted lost."""
        hosts, flags = self.hosts, self.flags
        for slot in self.slot_of.values():
            if hosts[slot] is host and not flags[slot] & LOST:
                yield slot

    def sent_time(self, uuid: str) -> float | None:
        """When the task was sent, if known (read by the broker poller's thread)."""
        slot = self.slot_of.get(uuid)
        if slot is None:
            return None
        sent = self.sent_at[slot]
        return None if sent != sent else sent

"""Bounded state built from Celery events, owned by the event-processing thread.

Counters live in plain dicts keyed by label-value tuples and are rendered at scrape time:
no prometheus_client object is touched per event (at 100k+ events/s the per-call locking
of ``Counter.labels().inc()`` would be the bottleneck). Other threads only read, through
``snapshot()`` copies made atomically under the GIL.
"""

from __future__ import annotations

import re
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog

from exporter.labels import OTHER, LabelGuard
from exporter.taskindex import TaskIndex

log = structlog.get_logger(__name__)

UNKNOWN = "unknown"
REJECT_LOG_INTERVAL = 60.0
NAN = float("nan")
AMBIGUOUS = "\x00ambiguous"  # a worker seen serving several queues: never inferred
PENDING_SECONDS = 1.0
PENDING_CAP = 10_000
DEFAULT_QUEUE = UNKNOWN
_EXCEPTION_CLASS = re.compile(r"^([\w.]+)\(")

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
WORKER_EVENT_TYPES = ("worker-online", "worker-heartbeat", "worker-offline")


class InvalidEvent(ValueError):
    """An event with a missing or wrongly typed field; counted as rejected."""


def exception_class(text: object) -> str:
    """``"ValueError('bad')"`` -> ``"ValueError"``, as the peer exporter labels failures."""
    if isinstance(text, str):
        match = _EXCEPTION_CLASS.match(text)
        if match:
            return match.group(1).rsplit(".", 1)[-1]
        if text.startswith("reject requeue="):  # celery.exceptions.Reject's own repr
            return "Reject"
    return "UnknownException"


def producer_host(hostname: str) -> str:
    """``gen1234@web-1`` -> ``web-1``: producers are not workers and a pid per process
    would grow labels without end. Worker node names (``cpu@host``) are kept whole."""
    if hostname.startswith("gen"):
        name, sep, host = hostname.partition("@")
        if sep and name[3:].isdigit():
            return host
    return hostname


def parse_eta(eta: object) -> float:
    """An ISO-8601 eta (or None) as a Unix time; NaN when absent or unparsable."""
    if eta is None:
        return float("nan")
    if not isinstance(eta, str):
        raise InvalidEvent("eta")
    try:
        return datetime.fromisoformat(eta).timestamp()
    except ValueError as exc:
        raise InvalidEvent("eta") from exc


class Histogram:
    """Non-cumulative bucket counts plus a sum; cumulated only when rendered."""

    __slots__ = ("counts", "sum")

    def __init__(self, n_buckets: int) -> None:
        self.counts = [0] * (n_buckets + 1)  # the last one is +Inf
        self.sum = 0.0


@dataclass(slots=True)
class Worker:
    """What the last heartbeat said about one worker."""

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


@dataclass
class Options:
    """The parts of the configuration the state needs."""

    max_tracked_tasks: int = 100_000
    max_task_names: int = 1_000
    max_hostnames: int = 1_000
    max_queues: int = 500
    max_exception_types: int = 500
    max_label_length: int = 128
    runtime_buckets: tuple[float, ...] = (
        0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    )  # fmt: skip
    queue_wait_buckets: tuple[float, ...] = (
        0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
    )  # fmt: skip
    # None: three heartbeat intervals of each worker; 0: never time out (the peer's meaning).
    worker_timeout: float | None = None
    worker_forget_after: float = 86_400.0  # 0: never forget
    max_producers: int = 1_000
    producer_forget_after: float = 3_600.0
    default_queue_name: str = "unknown"
    generic_hostname_task_sent: bool = False
    generic_hostname_worker_task: bool = False
    max_series: int = 200_000


@dataclass
class Snapshot:
    """A consistent-enough copy of the state for one scrape."""

    now: float
    counters: dict[str, dict[tuple[str, ...], int]]
    processed: dict[tuple[str, ...], int]
    runtime: dict[tuple[str, ...], tuple[list[int], float]]
    queue_wait: dict[tuple[str, ...], tuple[list[int], float]]
    workers: dict[str, Worker]
    events: dict[str, int]
    rejected: dict[str, int]
    overflow: dict[str, int]
    tracked: int
    evicted: int
    newest_event: float | None
    queues_seen: list[str] = field(default_factory=list)


class State:
    """Applies decoded Celery events; one thread writes, scrapes read snapshots."""

    def __init__(self, options: Options | None = None) -> None:
        self.options = opts = options or Options()
        self.index = TaskIndex(opts.max_tracked_tasks)
        self.names = LabelGuard("name", opts.max_task_names, opts.max_label_length)
        self.hosts = LabelGuard("hostname", opts.max_hostnames, opts.max_label_length)
        self.queues = LabelGuard("queue_name", opts.max_queues, opts.max_label_length)
        self.exceptions = LabelGuard("exception", opts.max_exception_types, opts.max_label_length)
        self.counters: dict[str, dict[tuple[str, ...], int]] = {t: {} for t in TASK_EVENT_TYPES}
        self.failed = self.counters["task-failed"]  # keyed (name, host, queue, exception)
        self.processed: dict[tuple[str, ...], int] = {}
        self.runtime: dict[tuple[str, ...], Histogram] = {}
        self.queue_wait: dict[tuple[str, ...], Histogram] = {}
        self.workers: dict[str, Worker] = {}
        self.events: dict[str, int] = {}
        self.rejected: dict[str, int] = {}
        self.newest_event: float | None = None
        self._known_sets: set[tuple[str, ...]] = set()
        self._reject_logged_at: dict[str, float] = {}
        # Worker node name -> the one queue it consumes (from inspect), for tasks whose
        # task-sent the exporter never saw. Replaced whole by the inspector thread.
        self.worker_queue: dict[str, str] = {}
        # Guarded worker hostname -> the one queue its tasks came from so far (or AMBIGUOUS).
        self._queue_seen: dict[str, str] = {}
        # task-received events waiting for their task-sent: uuid -> hostname, and expiry order.
        self._pending: dict[str, str] = {}
        self._pending_order: deque[tuple[float, str]] = deque()
        self._handlers = {
            "task-sent": self._task_sent,
            "task-received": self._task_received,
            "task-started": self._task_started,
            "task-succeeded": self._task_succeeded,
            "task-failed": self._task_failed,
            "task-rejected": self._task_rejected,
            "task-revoked": self._task_finished,
            "task-retried": self._task_simple,
            "worker-online": self._worker_event,
            "worker-heartbeat": self._worker_event,
            "worker-offline": self._worker_event,
        }

    # ----------------------------------------------------------------- ingest (hot path)

    def apply(self, events: Iterable[Any], received: float) -> None:
        """Apply decoded events received at local time ``received``; reject bad ones."""
        handlers = self._handlers
        counts = self.events
        for event in events:
            try:
                if type(event) is not dict:
                    raise InvalidEvent("not_an_object")
                kind = event.get("type")
                handler = handlers.get(kind)  # type: ignore[arg-type]
                if handler is None:
                    self.reject("unknown_type")
                    continue
                hostname = event.get("hostname")
                timestamp = event.get("timestamp")
                if type(hostname) is not str or not hostname:
                    raise InvalidEvent("hostname")
                if type(timestamp) is not float and type(timestamp) is not int:
                    raise InvalidEvent("timestamp")
                if self._pending and kind not in ("task-sent", "task-received"):
                    # A later event of a task whose task-received waits: count that first.
                    uuid = event.get("uuid")
                    if type(uuid) is str and uuid in self._pending:
                        self._release(uuid)
                handler(event, hostname, timestamp, received)
            except InvalidEvent as exc:
                self.reject(f"invalid_{exc.args[0]}")
                continue
            counts[kind] = counts.get(kind, 0) + 1
            if self.newest_event is None or timestamp > self.newest_event:
                self.newest_event = timestamp

    def reject(self, reason: str, n: int = 1) -> None:
        """Count a rejected message or event; log each reason at most once a minute."""
        total = self.rejected[reason] = self.rejected.get(reason, 0) + n
        now = time.monotonic()
        if now - self._reject_logged_at.get(reason, -REJECT_LOG_INTERVAL) >= REJECT_LOG_INTERVAL:
            self._reject_logged_at[reason] = now
            log.warning("rejected event message", reason=reason, rejected_total=total)

    # ----------------------------------------------------------------- task events

    def _uuid(self, event: dict[str, Any]) -> str:
        uuid = event.get("uuid")
        if type(uuid) is not str or not uuid or len(uuid) > 255:
            raise InvalidEvent("uuid")
        return uuid

    def _name(self, event: dict[str, Any]) -> str:
        name = event.get("name")
        if type(name) is not str or not name:
            raise InvalidEvent("name")
        return self.names.get(name)

    def _labels(self, name: str | None, hostname: str, queue: str | None) -> tuple[str, ...]:
        """The (name, hostname, queue) label set of a worker-side event, made known at 0."""
        host = self.hosts.get(hostname)
        key = (name or UNKNOWN, host, queue or self._infer_queue(hostname, host))
        if key not in self._known_sets:
            self._make_known(key)
        worker = self.workers.get(host)
        if worker is not None:
            worker.task_events_seen = True
        return key

    def _learn_queue(self, host: str, queue: str) -> None:
        """Remember the queue a worker's task came from (or that it serves several)."""
        seen = self._queue_seen.get(host)
        if seen != queue and seen is not AMBIGUOUS:
            self._queue_seen[host] = queue if seen is None else AMBIGUOUS

    def _infer_queue(self, hostname: str, host: str) -> str:
        """The queue of a task whose task-sent has not been seen (producers without
        task_send_sent_event, or a worker's event racing ahead of the producer's): the one
        queue this worker consumes, per inspect, else per the tasks seen so far."""
        queue = self.worker_queue.get(hostname)
        if queue:
            return queue
        seen = self._queue_seen.get(host)
        return seen if seen is not None and seen is not AMBIGUOUS else DEFAULT_QUEUE

    def _make_known(self, key: tuple[str, ...]) -> None:
        # Every counter of the set appears at 0 so rate() and increase() see the first event.
        self._known_sets.add(key)
        for kind, counter in self.counters.items():
            if kind == "task-failed":
                counter.setdefault((*key, ""), 0)
            elif kind != "task-sent":
                counter.setdefault(key, 0)
        self.processed.setdefault(key, 0)

    def _task_sent(self, event: dict[str, Any], hostname: str, ts: float, received: float) -> None:
        uuid = self._uuid(event)
        name = self._name(event)
        queue = event.get("queue") or event.get("routing_key") or DEFAULT_QUEUE
        if type(queue) is not str:
            raise InvalidEvent("queue")
        queue = self.queues.get(queue)
        eta = parse_eta(event.get("eta"))
        self.index.sent(uuid, name, queue, ts, ts if not eta > ts else eta)
        key = (name, self.hosts.get(producer_host(hostname)), queue)
        counter = self.counters["task-sent"]
        counter[key] = counter.get(key, 0) + 1
        if uuid in self._pending:
            self._release(uuid)

    def _task_received(
        self, event: dict[str, Any], hostname: str, ts: float, received: float
    ) -> None:
        uuid = self._uuid(event)
        name = self._name(event)
        self.index.received(uuid, name, parse_eta(event.get("eta")))
        _, queue, _ = self.index.lookup(uuid)
        if queue is None and self._should_wait_for_sent(hostname):
            self._pending[uuid] = hostname
            self._pending_order.append((time.monotonic() + PENDING_SECONDS, uuid))
            return
        key = self._labels(name, hostname, queue)
        if queue:
            self._learn_queue(key[1], queue)
        self._count("task-received", key)

    def _should_wait_for_sent(self, hostname: str) -> bool:
        """Whether a task-received with no queue yet should wait for its task-sent.

        The producer and the worker publish on separate connections, so a worker that takes
        a message at once can get its task-received here before the producer's task-sent.
        Wait (up to PENDING_SECONDS) only when producers do send task-sent events and the
        worker's queue cannot be inferred."""
        return (
            bool(self.counters["task-sent"])
            and len(self._pending) < PENDING_CAP
            and self._infer_queue(hostname, self.hosts.get(hostname)) == DEFAULT_QUEUE
        )

    def _release(self, uuid: str) -> None:
        """Count a waiting task-received, with the queue known by now (or inferred)."""
        hostname = self._pending.pop(uuid)
        name, queue, _ = self.index.lookup(uuid)
        key = self._labels(name, hostname, queue)
        if queue:
            self._learn_queue(key[1], queue)
        self._count("task-received", key)

    def flush_pending(self) -> None:
        """Count the task-received events whose task-sent did not come in time."""
        order = self._pending_order
        if not order:
            return
        now = time.monotonic()
        while order and order[0][0] <= now:
            _, uuid = order.popleft()
            if uuid in self._pending:
                self._release(uuid)

    def _task_started(
        self, event: dict[str, Any], hostname: str, ts: float, received: float
    ) -> None:
        name, queue, ready = self.index.started(self._uuid(event), ts)
        key = self._labels(name, hostname, queue)
        self._count("task-started", key)
        if ready == ready:  # not NaN: we saw when it could first run
            self._observe(
                self.queue_wait, key, max(0.0, ts - ready), self.options.queue_wait_buckets
            )

    def _task_succeeded(
        self, event: dict[str, Any], hostname: str, ts: float, received: float
    ) -> None:
        name, queue, _ = self.index.finish(self._uuid(event))
        runtime = event.get("runtime")
        if type(runtime) is not float and type(runtime) is not int:
            raise InvalidEvent("runtime")
        key = self._labels(name, hostname, queue)
        self._count("task-succeeded", key)
        self.processed[key] += 1
        self._observe(self.runtime, key, max(0.0, runtime), self.options.runtime_buckets)

    def _task_failed(
        self, event: dict[str, Any], hostname: str, ts: float, received: float
    ) -> None:
        name, queue, started = self.index.finish(self._uuid(event))
        key = self._labels(name, hostname, queue)
        exc_key = (*key, self.exceptions.get(exception_class(event.get("exception"))))
        self.failed[exc_key] = self.failed.get(exc_key, 0) + 1
        self.processed[key] += 1
        if started == started:
            self._observe(self.runtime, key, max(0.0, ts - started), self.options.runtime_buckets)

    def _task_simple(
        self, event: dict[str, Any], hostname: str, ts: float, received: float
    ) -> None:
        name, queue, _ = self.index.lookup(self._uuid(event))
        self._count(event["type"], self._labels(name, hostname, queue))

    def _task_rejected(
        self, event: dict[str, Any], hostname: str, ts: float, received: float
    ) -> None:
        if event.get("requeue"):  # it will be delivered again: keep what we know of it
            self._task_simple(event, hostname, ts, received)
        else:
            self._task_finished(event, hostname, ts, received)

    def _task_finished(
        self, event: dict[str, Any], hostname: str, ts: float, received: float
    ) -> None:
        name, queue, _ = self.index.finish(self._uuid(event))
        self._count(event["type"], self._labels(name, hostname, queue))

    def _count(self, kind: str, key: tuple[str, ...]) -> None:
        self.counters[kind][key] += 1

    @staticmethod
    def _observe(
        table: dict[tuple[str, ...], Histogram],
        key: tuple[str, ...],
        value: float,
        bounds: tuple[float, ...],
    ) -> None:
        hist = table.get(key)
        if hist is None:
            hist = table[key] = Histogram(len(bounds))
        hist.counts[bisect_left(bounds, value)] += 1
        hist.sum += value

    # ----------------------------------------------------------------- worker events

    def _worker_event(
        self, event: dict[str, Any], hostname: str, ts: float, received: float
    ) -> None:
        host = self.hosts.get(hostname)
        if host == OTHER:
            return
        worker = self.workers.get(host)
        if worker is None:
            worker = self.workers[host] = Worker(last_seen=received)
        worker.last_seen = received
        worker.online = event["type"] != "worker-offline"
        freq = event.get("freq")
        if (type(freq) is float or type(freq) is int) and freq > 0:
            worker.freq = float(freq)
        active = event.get("active")
        if type(active) is int:
            worker.active = active
        processed = event.get("processed")
        if type(processed) is int:
            worker.processed = processed
            if worker.first_processed is None or processed < worker.first_processed:
                worker.first_processed = processed  # a restarted worker counts from 0 again

    def seed_inflight(self, tasks: Iterable[tuple[str, str, str]]) -> int:
        """Put tasks known to be in flight (from the broker) into the index; before ingest
        starts, so the one-writer rule holds."""
        n = 0
        for uuid, name, queue in tasks:
            self.index.sent(uuid, self.names.get(name), self.queues.get(queue), NAN, NAN)
            n += 1
        return n

    def worker_up(self, worker: Worker, now: float) -> bool:
        timeout = self.options.worker_timeout
        if timeout is None:
            timeout = 3 * worker.freq
        return worker.online and (timeout == 0 or now - worker.last_seen <= timeout)

    def forget_workers(self, now: float) -> list[str]:
        """Drop workers silent for --worker-forget-after, with every series they labelled."""
        if not self.options.worker_forget_after:
            return []
        gone = [
            host
            for host, worker in self.workers.items()
            if now - worker.last_seen > self.options.worker_forget_after
        ]
        for host in gone:
            del self.workers[host]
            self.hosts.forget(host)
            self._known_sets = {key for key in self._known_sets if key[1] != host}
            for table in (*self.counters.values(), self.processed, self.runtime, self.queue_wait):
                for key in [key for key in table if key[1] == host]:
                    del table[key]
        return gone

    # ----------------------------------------------------------------- reading

    def snapshot(self, now: float | None = None) -> Snapshot:
        """Copy what a scrape renders. dict.copy() and list slicing are atomic under the GIL,
        so the copy never sees a dict mid-resize; histograms are copied bucket list first."""
        return Snapshot(
            now=time.time() if now is None else now,
            counters={kind: counter.copy() for kind, counter in self.counters.items()},
            processed=self.processed.copy(),
            runtime={k: (h.counts[:], h.sum) for k, h in self.runtime.copy().items()},
            queue_wait={k: (h.counts[:], h.sum) for k, h in self.queue_wait.copy().items()},
            workers={host: _copy_worker(w) for host, w in self.workers.copy().items()},
            events=self.events.copy(),
            rejected=self.rejected.copy(),
            overflow={
                guard.label: guard.overflow
                for guard in (self.names, self.hosts, self.queues, self.exceptions)
            },
            tracked=len(self.index),
            evicted=self.index.evicted,
            newest_event=self.newest_event,
            queues_seen=list(self.queues.known.values()),
        )


def _copy_worker(worker: Worker) -> Worker:
    return Worker(
        last_seen=worker.last_seen,
        freq=worker.freq,
        active=worker.active,
        processed=worker.processed,
        first_processed=worker.first_processed,
        online=worker.online,
        task_events_seen=worker.task_events_seen,
    )

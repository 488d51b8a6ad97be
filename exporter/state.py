"""Bounded state built from Celery events, owned by the event-processing thread.

Counters live in plain dicts keyed by label-value tuples and are rendered at scrape time:
no prometheus_client object is touched per event (at 100k+ events/s the per-call locking
of ``Counter.labels().inc()`` would be the bottleneck). Other threads only read, through
``snapshot()`` copies made atomically under the GIL; the inspector thread replaces two
dicts whole (``worker_queue``, ``pools``), never mutates them.
"""

from __future__ import annotations

import math
import re
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog

from exporter.inflight import InFlight, oldest_running, running_per_worker
from exporter.labels import OTHER, LabelGuard
from exporter.series import (  # noqa: F401 - re-exported for the collector
    TASK_COUNTERS,
    TASK_EVENT_TYPES,
    TASK_LOST,
    TASK_REDELIVERED,
    TaskSeries,
    observe,
)
from exporter.taskindex import LOST, NOT_RECEIVED, TaskIndex
from exporter.workers import (
    LOST as WORKER_LOST,
)
from exporter.workers import (
    OFFLINE,
    Pool,
    Worker,
    worker_state,
)

log = structlog.get_logger(__name__)

UNKNOWN = "unknown"
GENERIC = "generic"  # the hostname label of --generic-hostname-* flags, as the peer spells it
REJECT_LOG_INTERVAL = 60.0
NAN = float("nan")
AMBIGUOUS = "\x00ambiguous"  # a worker seen serving several queues: never inferred
PENDING_SECONDS = 1.0
PENDING_CAP = 10_000
PENDING_PROBE = 50  # received events that wait in vain before we stop expecting task-sent
DEPARTURE_GRACE = 5.0  # seconds for a departed worker's buffered task events to arrive
MAX_CLOCK_AHEAD = 300.0  # an event stamped further in the future than this is clamped
MAX_RUNTIME = 1e7  # seconds (115 days): a longer runtime would pin the histogram sum
_EXCEPTION_CLASS = re.compile(r"^([\w.]+)\(")

WORKER_EVENT_TYPES = ("worker-online", "worker-heartbeat", "worker-offline")

# Reasons an event is not applied (celery_exporter_events_rejected_total{reason}).
INVALID_FIELDS = (
    "not_an_object", "hostname", "timestamp", "uuid", "name", "queue", "eta", "runtime",
)  # fmt: skip
EVENT_REJECT_REASONS = (
    "unknown_type",
    *(f"invalid_{name}" for name in INVALID_FIELDS),
    "duplicate_final_state",
    "internal_error",
)
# Fields out of range: the event still counts, the field is clamped or ignored.
CHECKED_FIELDS = ("timestamp", "freq", "active", "processed", "runtime", "retries")


class InvalidEvent(ValueError):
    """An event with a missing or wrongly typed field; counted as rejected."""


class DuplicateEvent(ValueError):
    """A final state already counted for this task id (Celery repeats some)."""


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


@dataclass
class Options:
    """The parts of the configuration the state needs (the one place their defaults live)."""

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
    default_queue_name: str = UNKNOWN
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
    created: dict[tuple[str, ...], float]
    workers: dict[str, Worker]
    worker_states: dict[str, str]
    pools: dict[str, Pool]
    events: dict[str, int]
    rejected: dict[str, int]
    invalid_fields: dict[str, int]
    overflow: dict[str, int]
    tracked: int
    evicted: int
    newest_event: float | None
    last_sent: dict[str, float] = field(default_factory=dict)
    scheduled: dict[str, int] = field(default_factory=dict)
    oldest_running: dict[tuple[str, str], float] = field(default_factory=dict)
    queues_seen: list[str] = field(default_factory=list)


class State:
    """Applies decoded Celery events; one thread writes, scrapes read snapshots."""

    def __init__(self, options: Options | None = None) -> None:
        self.options = opts = options or Options()
        self.index = TaskIndex(opts.max_tracked_tasks, on_evict=self._leaving)
        self.names = LabelGuard("name", opts.max_task_names, opts.max_label_length)
        self.hosts = LabelGuard("hostname", opts.max_hostnames, opts.max_label_length)
        self.producers = LabelGuard("producer", opts.max_producers, opts.max_label_length)
        self.queues = LabelGuard("queue_name", opts.max_queues, opts.max_label_length)
        self.exceptions = LabelGuard("exception", opts.max_exception_types, opts.max_label_length)
        self.series = series = TaskSeries(
            opts.max_series, opts.runtime_buckets, opts.queue_wait_buckets
        )
        # The series' tables, under the names the handlers and tests use.
        self.counters, self.failed, self.processed = (
            series.counters,
            series.failed,
            series.processed,
        )
        self.runtime, self.queue_wait, self.created = (
            series.runtime,
            series.queue_wait,
            series.created,
        )
        self.workers: dict[str, Worker] = {}
        self.events: dict[str, int] = {}
        self.rejected: dict[str, int] = {}
        self.invalid_fields: dict[str, int] = {}
        self.newest_event: float | None = None
        self.last_sent: dict[str, float] = {}  # task name -> newest task-sent time
        self.producer_seen: dict[str, float] = {}  # producer label -> last task-sent (local)
        self.inflight = InFlight()  # running and scheduled tasks
        self._generic_worker_host = opts.generic_hostname_worker_task
        self._reject_logged_at: dict[str, float] = {}
        self._worker_states: dict[str, str] = {}  # last state seen by check_workers
        self._departed: dict[str, float] = {}  # offline workers -> when they left
        self._departing: dict[str, float] = {}  # the same, until their tasks are settled
        # Written by the inspector thread, replaced whole: worker node name -> the one queue
        # it consumes, and -> its pool (kind and size).
        self.worker_queue: dict[str, str] = {}
        self.pools: dict[str, Pool] = {}
        # Guarded worker hostname -> the one queue its tasks came from so far (or AMBIGUOUS).
        self._queue_seen: dict[str, str] = {}
        # task-received events waiting for their task-sent: uuid -> (host, redelivered,
        # eta, event time), and expiry order.
        self._pending: dict[str, tuple[str, bool, float, float]] = {}
        self._pending_order: deque[tuple[float, str]] = deque()
        self._unanswered_waits = 0
        self._handlers = {
            "task-sent": self._task_sent,
            "task-received": self._task_received,
            "task-started": self._task_started,
            "task-succeeded": self._task_succeeded,
            "task-failed": self._task_failed,
            "task-rejected": self._task_rejected,
            "task-revoked": self._task_finished,
            "task-retried": self._task_retried,
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
                if not timestamp <= received + MAX_CLOCK_AHEAD:
                    timestamp = self._clock_ahead(timestamp, received)
                if self._pending and kind not in ("task-sent", "task-received"):
                    # A later event of a task whose task-received waits: count that first.
                    uuid = event.get("uuid")
                    if type(uuid) is str and uuid in self._pending:
                        self._release(uuid)
                handler(event, hostname, timestamp, received)
            except InvalidEvent as exc:
                self.reject(f"invalid_{exc.args[0]}")
                continue
            except DuplicateEvent:
                self.reject("duplicate_final_state")
                continue
            counts[kind] = counts.get(kind, 0) + 1
            if self.newest_event is None or timestamp > self.newest_event:
                self.newest_event = timestamp

    def _clock_ahead(self, timestamp: float, received: float) -> float:
        """A timestamp far ahead of our clock would pin the event lag at 0 for years:
        take it as 'now' and count it. NaN and infinities are not timestamps at all."""
        if math.isnan(timestamp) or math.isinf(timestamp):
            raise InvalidEvent("timestamp")
        self.invalid_field("timestamp")
        return received

    def reject(self, reason: str, n: int = 1) -> None:
        """Count a rejected message or event; log each reason at most once a minute."""
        total = self.rejected[reason] = self.rejected.get(reason, 0) + n
        self._log_rarely(reason, "rejected event message", reason=reason, rejected_total=total)

    def invalid_field(self, name: str) -> None:
        """Count an out-of-range field that was clamped or ignored (the event still counts)."""
        total = self.invalid_fields[name] = self.invalid_fields.get(name, 0) + 1
        self._log_rarely(
            f"field:{name}", "event field out of range: clamped or ignored", field=name,
            invalid_total=total,
        )  # fmt: skip

    def _log_rarely(self, key: str, message: str, **fields: Any) -> None:
        now = time.monotonic()
        if now - self._reject_logged_at.get(key, -REJECT_LOG_INTERVAL) >= REJECT_LOG_INTERVAL:
            self._reject_logged_at[key] = now
            log.warning(message, **fields)

    # ----------------------------------------------------------------- labels

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

    def _worker_label(self, hostname: str) -> str:
        """The guarded label of a worker; a full table first drops its longest-departed
        worker, so a new worker is always visible while departed ones can make room."""
        known = self.hosts.known.get(hostname)
        if known is not None:
            return known
        if self.hosts.full() and self._departed:
            self._forget_worker(min(self._departed, key=self._departed.__getitem__))
        return self.hosts.get(hostname)

    def _labels(self, name: str | None, host: str, queue: str | None) -> tuple[str, ...]:
        """The (name, hostname, queue) label set of a worker-side event, made known at 0."""
        task_host = GENERIC if self._generic_worker_host else host
        key = (name or UNKNOWN, task_host, queue or self._infer_queue(host))
        if key not in self.series.known:
            key = self.series.worker_key(key)
        worker = self.workers.get(host)
        if worker is not None:
            worker.task_events_seen = True
        return key

    def _learn_queue(self, host: str, queue: str) -> None:
        """Remember the queue a worker's task came from (or that it serves several)."""
        seen = self._queue_seen.get(host)
        if seen != queue and seen is not AMBIGUOUS:
            self._queue_seen[host] = queue if seen is None else AMBIGUOUS

    def _infer_queue(self, host: str) -> str:
        """The queue of a task whose task-sent has not been seen (producers without
        task_send_sent_event, or a worker's event racing ahead of the producer's): the one
        queue this worker consumes, per inspect, else per the tasks seen so far."""
        queue = self.worker_queue.get(host)
        if queue:
            return self.queues.get(queue)
        seen = self._queue_seen.get(host)
        if seen is not None and seen is not AMBIGUOUS:
            return seen
        return self.options.default_queue_name

    # ----------------------------------------------------------------- task events

    def _task_sent(self, event: dict[str, Any], hostname: str, ts: float, received: float) -> None:
        uuid = self._uuid(event)
        name = self._name(event)
        queue = event.get("queue") or event.get("routing_key") or self.options.default_queue_name
        if type(queue) is not str:
            raise InvalidEvent("queue")
        queue = self.queues.get(queue)
        eta = parse_eta(event.get("eta"))
        self.index.sent(uuid, name, queue, ts, ts if not eta > ts else eta)
        key = (name, self._producer_label(hostname, received), queue)
        sent = self.series.sent
        if key not in sent:
            key = self.series.sent_key(key)
        sent[key] += 1
        if not self.last_sent.get(name, 0.0) >= ts:
            self.last_sent[name] = ts
        if uuid in self._pending:
            self._release(uuid)

    def _producer_label(self, hostname: str, received: float) -> str:
        if self.options.generic_hostname_task_sent:
            return GENERIC
        label = self.producers.get(producer_host(hostname))
        self.producer_seen[label] = received
        return label

    def _task_received(
        self, event: dict[str, Any], hostname: str, ts: float, received: float
    ) -> None:
        uuid = self._uuid(event)
        name = self._name(event)
        eta = parse_eta(event.get("eta"))
        retries = event.get("retries", 0)
        if type(retries) is not int or not 0 <= retries < 2**31:
            self.invalid_field("retries")
            retries = 0
        host = self._worker_label(hostname)
        slot, redelivered = self.index.received(uuid, name, eta, retries)
        if redelivered:  # no longer running or scheduled where it was
            self._leaving(slot)
        self.index.hosts[slot] = host
        queue = self.index.queues[slot]
        if queue is None and self._should_wait_for_sent(host):
            self._pending[uuid] = (host, redelivered, eta, ts)
            self._pending_order.append((time.monotonic() + PENDING_SECONDS, uuid))
            return
        self._count_received(uuid, host, name, queue, redelivered, eta, ts)

    def _count_received(
        self,
        uuid: str,
        host: str,
        name: str | None,
        queue: str | None,
        redelivered: bool,
        eta: float,
        ts: float,
    ) -> None:
        key = self._labels(name, host, queue)
        if queue:
            self._learn_queue(host, queue)
        self.counters["task-received"][key] += 1
        if redelivered:
            self.counters[TASK_REDELIVERED][key] += 1
        if eta > ts:  # held in the worker's memory until its ETA: invisible in the queue
            self.inflight.schedule(uuid, key[2])

    def _should_wait_for_sent(self, host: str) -> bool:
        """Whether a task-received with no queue yet should wait for its task-sent.

        The producer and the worker publish on separate connections, so a worker that takes
        a message at once can get its task-received here before the producer's task-sent.
        Wait (up to PENDING_SECONDS) only when the worker's queue cannot be inferred and
        producers send task-sent events (or may: the first tasks after a start wait, until
        PENDING_PROBE waits went unanswered)."""
        return (
            (bool(self.last_sent) or self._unanswered_waits < PENDING_PROBE)
            and len(self._pending) < PENDING_CAP
            and self._infer_queue(host) == self.options.default_queue_name
        )

    def _release(self, uuid: str) -> None:
        """Count a waiting task-received, with the queue known by now (or inferred)."""
        host, redelivered, eta, ts = self._pending.pop(uuid)
        name, queue, _ = self.index.lookup(uuid)
        self._count_received(uuid, host, name, queue, redelivered, eta, ts)

    def flush_pending(self) -> None:
        """Count the task-received events whose task-sent did not come in time."""
        order = self._pending_order
        if not order:
            return
        now = time.monotonic()
        while order and order[0][0] <= now:
            _, uuid = order.popleft()
            if uuid in self._pending:
                self._unanswered_waits += 1
                self._release(uuid)

    def _task_started(
        self, event: dict[str, Any], hostname: str, ts: float, received: float
    ) -> None:
        uuid = self._uuid(event)
        host = self._worker_label(hostname)
        slot = self.index.started(uuid, ts)
        self.inflight.unschedule(uuid)
        index = self.index
        index.hosts[slot] = host
        key = self._labels(index.names[slot], host, index.queues[slot])
        self.counters["task-started"][key] += 1
        ready = index.ready[slot]
        if ready == ready:  # not NaN: we saw when it could first run
            series = self.series
            observe(series.queue_wait, key, max(0.0, ts - ready), series.queue_wait_buckets)
        self.inflight.start(uuid, (key[0], key[2]), host, received)

    def _finish(self, event: dict[str, Any], hostname: str, final: str) -> tuple[Any, ...]:
        """Labels and start time of a task reaching a final state, counted once per task."""
        uuid = self._uuid(event)
        name, queue, started, duplicate = self.index.finish(uuid, final)
        if duplicate:
            raise DuplicateEvent(final)
        self.inflight.leave(uuid)
        return self._labels(name, self._worker_label(hostname), queue), started

    def _task_succeeded(
        self, event: dict[str, Any], hostname: str, ts: float, received: float
    ) -> None:
        runtime = event.get("runtime")
        if type(runtime) is not float and type(runtime) is not int:
            raise InvalidEvent("runtime")
        key, _ = self._finish(event, hostname, "task-succeeded")
        self.counters["task-succeeded"][key] += 1
        self.processed[key] += 1
        self._observe_runtime(key, runtime)

    def _task_failed(
        self, event: dict[str, Any], hostname: str, ts: float, received: float
    ) -> None:
        key, started = self._finish(event, hostname, "task-failed")
        self.series.fail(key, self.exceptions.get(exception_class(event.get("exception"))))
        if started == started:  # not NaN: we saw it start
            self._observe_runtime(key, ts - started)

    def _observe_runtime(self, key: tuple[str, ...], runtime: float) -> None:
        """One huge or NaN runtime would pin the histogram's sum forever: count, skip it."""
        if runtime != runtime or runtime > MAX_RUNTIME:
            self.invalid_field("runtime")
        else:
            series = self.series
            observe(series.runtime, key, max(0.0, runtime), series.runtime_buckets)

    def _task_retried(
        self, event: dict[str, Any], hostname: str, ts: float, received: float
    ) -> None:
        # This attempt is over; the retry is a new message (a new task-sent and -received).
        uuid = self._uuid(event)
        slot = self.index.slot_of.get(uuid)
        if slot is not None:
            self._leaving(slot)
        self._task_simple(event, hostname, ts, received)

    def _task_simple(
        self, event: dict[str, Any], hostname: str, ts: float, received: float
    ) -> None:
        name, queue, _ = self.index.lookup(self._uuid(event))
        key = self._labels(name, self._worker_label(hostname), queue)
        self.counters[event["type"]][key] += 1

    def _task_rejected(
        self, event: dict[str, Any], hostname: str, ts: float, received: float
    ) -> None:
        if event.get("requeue"):  # delivered again on purpose: not a redelivery, not final
            uuid = self._uuid(event)
            slot = self.index.slot_of.get(uuid)
            if slot is not None:
                self._leaving(slot)
            self.index.forget_delivery(uuid)
            self._task_simple(event, hostname, ts, received)
        else:
            self._task_finished(event, hostname, ts, received)

    def _task_finished(
        self, event: dict[str, Any], hostname: str, ts: float, received: float
    ) -> None:
        key, _ = self._finish(event, hostname, event["type"])
        self.counters[event["type"]][key] += 1

    def _leaving(self, slot: int) -> None:
        """A task stops being scheduled or running here (finished, lost, evicted, retried,
        requeued or delivered again)."""
        uuid = self.index.uuids[slot]
        if uuid is not None:
            self.inflight.leave(uuid)

    # ----------------------------------------------------------------- worker events

    def _worker_event(
        self, event: dict[str, Any], hostname: str, ts: float, received: float
    ) -> None:
        host = self._worker_label(hostname)
        if host == OTHER:
            return
        kind = event["type"]
        worker = self.workers.get(host)
        if worker is None:
            worker = self.workers[host] = Worker(last_seen=received)
        elif kind == "worker-online":
            self._lose_tasks(host)  # a (re)started worker holds nothing: what it held is lost
        worker.last_seen = received
        worker.online = kind != "worker-offline"
        for name in worker.read_heartbeat(event):
            self.invalid_field(name)
        if worker.online:
            self._departed.pop(host, None)
            self._departing.pop(host, None)
        else:
            # A warm shutdown finishes what it started and hands reserved messages back.
            # Its last task events are buffered and may arrive after worker-offline, so the
            # started tasks still unfinished a moment later are the ones that did not finish.
            self._worker_states[host] = OFFLINE
            self._departed[host] = self._departing[host] = received

    def _lose_tasks(self, host: str, started_only: bool = False) -> int:
        """Count the tasks ``host`` held and will never finish as lost, once each."""
        index = self.index
        lost = 0
        for slot in list(index.held_by(host)):
            started = index.started_at[slot]
            if started_only and started != started:
                continue
            if index.retries[slot] == NOT_RECEIVED and started != started:
                continue
            key = self._labels(index.names[slot], host, index.queues[slot])
            self.counters[TASK_LOST][key] += 1
            index.flags[slot] |= LOST
            self._leaving(slot)
            lost += 1
        if lost:
            log.warning("tasks lost with their worker", hostname=host, tasks=lost)
        return lost

    def seed_inflight(self, tasks: Iterable[tuple[str, str, str]]) -> int:
        """Put tasks known to be in flight (from the broker) into the index; before ingest
        starts, so the one-writer rule holds."""
        n = 0
        for uuid, name, queue in tasks:
            self.index.sent(uuid, self.names.get(name), self.queues.get(queue), NAN, NAN)
            n += 1
        return n

    # ----------------------------------------------------------------- housekeeping

    def worker_states(self, now: float) -> dict[str, str]:
        """Every worker's state now (online / offline / lost / busy)."""
        running = running_per_worker(self.inflight.running)
        timeout, pools = self.options.worker_timeout, self.pools
        return {
            host: worker_state(worker, now, timeout, pools.get(host), running.get(host, 0))
            for host, worker in self.workers.items()
        }

    def check_workers(self, now: float) -> None:
        """On the event thread, about once a second: a worker that turns lost loses the
        tasks it held (counted once)."""
        states = self._worker_states
        for host, state in self.worker_states(now).items():
            if states.get(host) != state:
                states[host] = state
                if state == WORKER_LOST:
                    self._lose_tasks(host)
        for host in [h for h, left in self._departing.items() if now - left >= DEPARTURE_GRACE]:
            del self._departing[host]
            self._lose_tasks(host, started_only=True)

    def forget_workers(self, now: float) -> list[str]:
        """Drop workers silent for --worker-forget-after, with every series they labelled."""
        after = self.options.worker_forget_after
        if not after:
            return []
        gone = [host for host, w in self.workers.items() if now - w.last_seen > after]
        for host in gone:
            self._lose_tasks(host)  # a busy worker that never came back did not finish
            self._forget_worker(host)
        return gone

    def _forget_worker(self, host: str) -> None:
        del self.workers[host]
        self._worker_states.pop(host, None)
        self._departed.pop(host, None)
        self._departing.pop(host, None)
        self._queue_seen.pop(host, None)
        self.hosts.forget(host)
        self.series.drop(lambda key: key[1] == host)

    def forget_producers(self, now: float) -> list[str]:
        """Drop producers (task-sent hostnames) silent for --producer-forget-after."""
        after = self.options.producer_forget_after
        gone = [p for p, seen in self.producer_seen.items() if now - seen > after]
        for producer in gone:
            del self.producer_seen[producer]
            if producer in self.workers:  # a worker that also sends: its own lifecycle
                continue
            self.producers.forget(producer)
            self.series.drop(lambda key, p=producer: key[1] == p)
        return gone

    # ----------------------------------------------------------------- reading

    def snapshot(self, now: float | None = None) -> Snapshot:
        """Copy what a scrape renders. dict.copy() and list slicing are atomic under the GIL,
        so the copy never sees a dict mid-resize; histograms are copied bucket list first."""
        now = time.time() if now is None else now
        workers = {host: w.copy() for host, w in self.workers.copy().items()}
        running = self.inflight.running.copy()
        pools, timeout = self.pools, self.options.worker_timeout
        per_worker = running_per_worker(running)
        return Snapshot(
            now=now,
            counters={kind: counter.copy() for kind, counter in self.counters.items()},
            processed=self.processed.copy(),
            runtime={k: (h.counts[:], h.sum) for k, h in self.runtime.copy().items()},
            queue_wait={k: (h.counts[:], h.sum) for k, h in self.queue_wait.copy().items()},
            created=self.created.copy(),
            workers=workers,
            worker_states={
                h: worker_state(w, now, timeout, pools.get(h), per_worker.get(h, 0))
                for h, w in workers.items()
            },
            pools=pools,
            events=self.events.copy(),
            rejected=self.rejected.copy(),
            invalid_fields=self.invalid_fields.copy(),
            overflow={
                **{
                    guard.label: guard.overflow
                    for guard in (self.names, self.hosts, self.queues, self.exceptions)
                },
                "producer": self.producers.overflow,
                "series": self.series.budget.overflow,
            },
            tracked=len(self.index),
            evicted=self.index.evicted,
            newest_event=self.newest_event,
            last_sent=self.last_sent.copy(),
            scheduled=self.inflight.scheduled.copy(),
            oldest_running=oldest_running(running),
            queues_seen=list(self.queues.known.values()),
        )


def merge_pools(known: Mapping[str, Pool], fresh: Mapping[str, Pool]) -> dict[str, Pool]:
    """The pool table after an inspect: a busy solo worker does not answer inspect, and its
    pool must stay known (that is when it matters)."""
    return {**known, **fresh}

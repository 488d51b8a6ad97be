"""The collector: turns one scrape's snapshots into metric families.

``families(view)`` is the single place that maps state to the metric contract. Two
renderers read it: ``exposition.Renderer`` (what ``/metrics`` serves, in text and
OpenMetrics) and ``ObservatoryCollector`` below, a ``prometheus_client`` collector for
anyone embedding the exporter in their own registry and the renderer's reference in tests.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.core import (
    Metric as ClientMetric,
)
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar as ClientExemplar
from prometheus_client.samples import Sample as ClientSample

from exporter import metrics as m
from exporter.decode import DECODE_REJECT_REASONS
from exporter.inspector import InspectView
from exporter.poller import BrokerView
from exporter.state import (
    CHECKED_FIELDS,
    EVENT_REJECT_REASONS,
    TASK_LOST,
    TASK_REDELIVERED,
    Snapshot,
    State,
)
from exporter.workers import STATES

REJECT_REASONS = (*DECODE_REJECT_REASONS, *EVENT_REJECT_REASONS)
GUARDED_LABELS = ("name", "hostname", "producer", "queue_name", "exception", "series")

# (label values, value) for counters and gauges; (label values, cumulative bucket counts
# ending with +Inf, sum) for histograms.
Sample = tuple[tuple[str, ...], float]
HistogramSample = tuple[tuple[str, ...], list[int], float]


@dataclass(frozen=True)
class Exemplar:
    """An OpenMetrics exemplar: the labels (a trace id) of one observation behind a sample."""

    labels: Mapping[str, str]
    value: float
    timestamp: float | None = None


@dataclass(frozen=True)
class Family:
    """One metric and its samples; histogram samples carry cumulative bucket counts.

    ``created`` maps a sample's label values to the Unix time its series was created (the
    ``_created`` sample of counters and histograms); a label set missing from it has none.
    ``exemplars`` maps label values to {bucket index (0 for a counter): exemplar}; only
    OpenMetrics shows them. Nothing records exemplars yet: Celery events carry no trace id.
    """

    metric: m.Metric
    samples: Iterable[Sample] | Iterable[HistogramSample]
    bounds: tuple[float, ...] = ()
    created: Mapping[tuple[str, ...], float] | None = None
    exemplars: Mapping[tuple[str, ...], Mapping[int, Exemplar]] | None = None


@dataclass(frozen=True)
class SourceStatus:
    """The event source's health, read at scrape time."""

    subscribed: bool
    backlog_bytes: int
    dropped: int
    reconnects: Mapping[str, int] = field(default_factory=dict)  # reason -> count


@dataclass(frozen=True)
class ScrapeView:
    """Everything one scrape renders, gathered without touching the network."""

    state: Snapshot
    broker: BrokerView
    inspect: InspectView
    source: SourceStatus
    visibility_timeout: float
    admission_limits: Mapping[str, int]
    runtime_buckets: tuple[float, ...]
    queue_wait_buckets: tuple[float, ...]
    version: str
    celery_version: str
    started_at: float = 0.0
    http_rejected: Mapping[str, int] = field(default_factory=dict)

    def worker_up(self, host: str) -> bool:
        return self.state.worker_states[host] == "online"


class Always(Mapping[tuple[str, ...], float]):
    """A ``created`` mapping that gives one time for every label set (the exporter's own
    counters, which exist from the start). It lists no keys, so it is falsy: test it
    with ``is None``, never with ``or``."""

    def __init__(self, value: float) -> None:
        self.value = value

    def __getitem__(self, key: tuple[str, ...]) -> float:
        return self.value

    def __iter__(self) -> Iterator[tuple[str, ...]]:
        return iter(())

    def __len__(self) -> int:
        return 0

    def get(self, key: object, default: Any = None) -> float:  # type: ignore[override]
        return self.value


def gather(
    state: State,
    broker: BrokerView,
    inspect: InspectView,
    source: SourceStatus,
    visibility_timeout: float,
    version: str,
    celery_version: str,
    started_at: float = 0.0,
    http_rejected: Mapping[str, int] | None = None,
    admission_limits: Mapping[str, int] | None = None,
) -> ScrapeView:
    return ScrapeView(
        state=state.snapshot(),
        broker=broker,
        inspect=inspect,
        source=source,
        visibility_timeout=visibility_timeout,
        admission_limits=admission_limits or {},
        runtime_buckets=state.options.runtime_buckets,
        queue_wait_buckets=state.options.queue_wait_buckets,
        version=version,
        celery_version=celery_version,
        started_at=started_at,
        http_rejected=dict(http_rejected or {}),
    )


def _cumulative(table: dict[tuple[str, ...], tuple[list[int], float]]) -> Iterator[Any]:
    for key, (counts, total) in table.items():
        running = 0
        cumulative = []
        for count in counts:
            running += count
            cumulative.append(running)
        yield key, cumulative, total


def _task_families(view: ScrapeView) -> Iterator[Family]:
    snap = view.state
    created = snap.created
    for kind, metric in m.TASK_EVENT_COUNTERS.items():
        yield Family(metric, snap.counters[kind].items(), created=created)
    yield Family(m.TASK_LOST, snap.counters[TASK_LOST].items(), created=created)
    yield Family(m.TASK_REDELIVERED, snap.counters[TASK_REDELIVERED].items(), created=created)
    yield Family(m.TASK_PROCESSED, snap.processed.items(), created=created)
    yield Family(m.TASK_RUNTIME, _cumulative(snap.runtime), view.runtime_buckets, created=created)
    yield Family(
        m.TASK_QUEUE_WAIT, _cumulative(snap.queue_wait), view.queue_wait_buckets, created=created
    )
    now = snap.now
    yield Family(
        m.TASK_OLDEST_RUNNING_AGE,
        [(key, max(0.0, now - started)) for key, started in snap.oldest_running.items()],
    )
    yield Family(m.TASK_LAST_SENT, [((name,), ts) for name, ts in snap.last_sent.items()])


def _worker_families(view: ScrapeView) -> Iterator[Family]:
    snap = view.state
    workers, states = snap.workers, snap.worker_states
    yield Family(m.WORKER_UP, [((h,), int(states[h] == "online")) for h in workers])
    yield Family(
        m.WORKER_STATE,
        [((h, state), int(states[h] == state)) for h in workers for state in STATES],
    )
    # A worker that is not online runs nothing we can vouch for: its last count is stale.
    yield Family(
        m.WORKER_TASKS_ACTIVE,
        [((h,), w.active if states[h] == "online" else 0) for h, w in workers.items()],
    )
    yield Family(
        m.WORKER_POOL_SIZE,
        [((h,), snap.pools[h].size) for h in workers if h in snap.pools],
    )
    yield Family(m.WORKER_LAST_HEARTBEAT, [((h,), w.last_seen) for h, w in workers.items()])
    yield Family(m.WORKER_PROCESSED, [((h,), w.processed) for h, w in workers.items()])
    yield Family(
        m.WORKER_TASK_EVENTS,
        [((h,), int(w.sends_task_events)) for h, w in workers.items()],
    )


def _queue_families(view: ScrapeView) -> Iterator[Family]:
    broker, inspect = view.broker, view.inspect
    queues = sorted(set(broker.lengths) | set(inspect.workers))
    yield Family(m.QUEUE_LENGTH, [((q,), n) for q, n in broker.lengths.items()])
    yield Family(m.QUEUE_OLDEST_AGE, [((q,), a) for q, a in broker.oldest_age.items()])
    limits = view.admission_limits
    yield Family(m.QUEUE_ADMISSION_LIMIT, [((q,), n) for q, n in sorted(limits.items())])
    scheduled = view.state.scheduled
    yield Family(
        m.QUEUE_SCHEDULED,
        [((q,), scheduled.get(q, 0)) for q in sorted(set(broker.lengths) | set(scheduled))],
    )
    if broker.consumers:
        yield Family(m.QUEUE_CONSUMERS, [((q,), n) for q, n in broker.consumers.items()])
    elif inspect.at is not None:
        yield Family(m.QUEUE_CONSUMERS, [((q,), inspect.workers.get(q, 0)) for q in queues])
    if inspect.at is not None:
        yield Family(m.QUEUE_WORKERS, [((q,), inspect.workers.get(q, 0)) for q in queues])
        yield Family(m.QUEUE_PROCESSES, [((q,), inspect.processes.get(q, 0)) for q in queues])
    if broker.unacked is not None:
        yield Family(m.BROKER_UNACKED, [((), broker.unacked)])
        yield Family(m.BROKER_UNACKED_OLDEST_AGE, [((), broker.unacked_oldest_age or 0.0)])
    yield Family(m.BROKER_VISIBILITY_TIMEOUT, [((), view.visibility_timeout)])


def _exporter_families(view: ScrapeView) -> Iterator[Family]:
    snap, broker, source = view.state, view.broker, view.source
    since_start = Always(view.started_at)
    yield Family(
        m.EXPORTER_EVENTS, [((t,), n) for t, n in sorted(snap.events.items())], created=since_start
    )
    rejected = dict.fromkeys(REJECT_REASONS, 0) | snap.rejected
    yield Family(m.EXPORTER_REJECTED, [((r,), n) for r, n in rejected.items()], created=since_start)
    invalid = dict.fromkeys(CHECKED_FIELDS, 0) | snap.invalid_fields
    yield Family(
        m.EXPORTER_INVALID_FIELDS, [((f,), n) for f, n in invalid.items()], created=since_start
    )
    yield Family(m.EXPORTER_DROPPED, [((), source.dropped)], created=since_start)
    yield Family(m.EXPORTER_BACKLOG, [((), source.backlog_bytes)])
    if snap.newest_event is not None:
        yield Family(m.EXPORTER_LAG, [((), max(0.0, snap.now - snap.newest_event))])
    yield Family(m.EXPORTER_BROKER_UP, [((), int(broker.up and source.subscribed))])
    yield Family(m.EXPORTER_SOURCE_RECONNECTS, [((r,), n) for r, n in source.reconnects.items()])
    if broker.polled_at is not None:
        yield Family(m.EXPORTER_POLL_AGE, [((), max(0.0, snap.now - broker.polled_at))])
    yield Family(m.EXPORTER_TRACKED, [((), snap.tracked)])
    yield Family(m.EXPORTER_EVICTED, [((), snap.evicted)], created=since_start)
    overflow = dict.fromkeys(GUARDED_LABELS, 0) | snap.overflow
    yield Family(
        m.EXPORTER_OVERFLOW,
        [((label,), n) for label, n in overflow.items()],
        created=since_start,
    )
    http_rejected = dict.fromkeys(m.HTTP_REJECT_REASONS, 0) | dict(view.http_rejected)
    yield Family(
        m.EXPORTER_HTTP_REJECTED,
        [((r,), n) for r, n in http_rejected.items()],
        created=since_start,
    )
    yield Family(m.EXPORTER_BUILD, [((view.version, view.celery_version), 1)])


def families(view: ScrapeView) -> Iterator[Family]:
    """Every family of the contract, in the order of ``metrics.ALL``."""
    yield from _task_families(view)
    yield from _worker_families(view)
    yield from _queue_families(view)
    yield from _exporter_families(view)


def _client_exemplar(exemplar: Exemplar | None) -> ClientExemplar | None:
    if exemplar is None:
        return None
    return ClientExemplar(dict(exemplar.labels), exemplar.value, exemplar.timestamp)


def _client_family(
    family: Family, prefix: str = m.DEFAULT_PREFIX, static: Mapping[str, str] | None = None
) -> ClientMetric:
    """``family`` as prometheus_client builds it (the reference the renderer is tested on)."""
    metric, static = family.metric, dict(static or {})
    name = m.rename(metric.family, prefix)
    labels = [*metric.labels, *static]
    created = family.created if family.created is not None else {}  # Always() is empty
    exemplars = family.exemplars or {}
    if metric.kind == "histogram":
        hist = HistogramMetricFamily(name, metric.help, labels=labels, unit=metric.unit)
        les = [*(repr(float(b)) for b in family.bounds), "+Inf"]
        for values, cumulative, total in family.samples:
            marks = exemplars.get(values, {})
            buckets = [
                (le, n, _client_exemplar(marks.get(i)))
                for i, (le, n) in enumerate(zip(les, cumulative, strict=True))
            ]
            full = [*values, *static.values()]
            hist.add_metric(full, buckets, total)  # type: ignore[arg-type]
            if (ts := created.get(values)) is not None:
                label_dict = dict(zip(labels, full, strict=True))
                hist.samples.append(ClientSample(f"{hist.name}_created", label_dict, ts))
        return hist
    if metric.kind == "counter":
        counter = CounterMetricFamily(name, metric.help, labels=labels, unit=metric.unit)
        for values, value in family.samples:
            exemplar = _client_exemplar(exemplars.get(values, {}).get(0))
            full = [*values, *static.values()]
            counter.add_metric(full, value, created.get(values), exemplar=exemplar)
        return counter
    gauge = GaugeMetricFamily(name, metric.help, labels=labels, unit=metric.unit)
    for values, value in family.samples:
        gauge.add_metric([*values, *static.values()], value)
    return gauge


class ObservatoryCollector(Collector):
    """A ``prometheus_client`` collector over the same families, for anyone embedding the
    exporter in their own registry, and the reference the fast renderer is tested against."""

    def __init__(
        self,
        view_factory: Any,
        metric_prefix: str = m.DEFAULT_PREFIX,
        static_labels: Mapping[str, str] | None = None,
    ) -> None:
        self.view_factory = view_factory
        self.metric_prefix = metric_prefix
        self.static_labels = dict(static_labels or {})

    def collect(self) -> Iterator[ClientMetric]:
        for family in families(self.view_factory()):
            yield _client_family(family, self.metric_prefix, self.static_labels)

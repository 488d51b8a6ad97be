"""The broker poller: queue lengths, oldest-message age and unacked deliveries.

Every ``--broker-poll-interval`` one pipelined round trip reads, per watched queue, the
length and the head (oldest message) of each of kombu's priority sub-lists (``q``,
``q\\x06\\x163``, ``q\\x06\\x166``, ``q\\x06\\x169``), plus the size of the ``unacked`` hash and
the oldest entry of ``unacked_index``. The result is one immutable ``BrokerView`` that
scrapes read; nothing on the scrape path talks to the broker. When a poll fails, the last
good figures stay (with their age, ``celery_exporter_broker_poll_age_seconds``) and
``celery_exporter_broker_up`` goes to 0.

Queues watched: ``--queues``, every queue a worker declared (``_kombu.binding.*`` sets,
rescanned every ``DISCOVERY_INTERVAL``), queues seen in task-sent events and queues the
background inspect reports.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import orjson
import redis
import structlog
from kombu import Connection

from exporter.broker import BrokerIsCluster, cluster_message, is_cluster_error, refuse_cluster
from exporter.periodic import Periodic

log = structlog.get_logger(__name__)

PRIORITY_SEP = "\x06\x16"
PRIORITY_STEPS = (0, 3, 6, 9)
DISCOVERY_INTERVAL = 30.0
# Exchanges whose bindings are Celery's own plumbing, not task queues.
INTERNAL_EXCHANGES = ("celery.pidbox", "reply.celery.pidbox", "celeryev")


@dataclass(frozen=True)
class BrokerView:
    """What the last successful poll saw, and whether the latest poll succeeded."""

    up: bool = False
    polled_at: float | None = None  # Unix time of the last successful poll
    lengths: dict[str, int] = field(default_factory=dict)
    oldest_age: dict[str, float] = field(default_factory=dict)
    consumers: dict[str, int] = field(default_factory=dict)  # AMQP reports these natively
    unacked: int | None = None
    unacked_oldest_age: float | None = None


def priority_keys(queue: str, prefix: str = "") -> list[str]:
    """The Redis list names of one queue, highest priority first."""
    return [prefix + queue + (f"{PRIORITY_SEP}{step}" if step else "") for step in PRIORITY_STEPS]


def queues_from_bindings(members: Iterable[bytes]) -> set[str]:
    """Queue names from a ``_kombu.binding.<exchange>`` set (members ``rkey SEP pattern SEP q``)."""
    queues = set()
    for member in members:
        parts = member.decode("utf-8", "replace").split(PRIORITY_SEP)
        if len(parts) == 3 and parts[2]:
            queues.add(parts[2])
    return queues


def head_identity(message: bytes) -> tuple[str | None, str]:
    """(task id, delivery tag) of a kombu message, reading only its JSON envelope.

    The body (which may be in any serializer) is never decoded.
    """
    try:
        envelope = orjson.loads(message)
    except orjson.JSONDecodeError:
        return None, str(hash(message))
    if type(envelope) is not dict:
        return None, str(hash(message))
    headers = envelope.get("headers")
    properties = envelope.get("properties")
    task_id = headers.get("id") if type(headers) is dict else None
    tag = properties.get("delivery_tag") if type(properties) is dict else None
    task_id = task_id if isinstance(task_id, str) else None
    return task_id, str(tag) if tag is not None else str(hash(message))


class RedisBrokerPoller:
    """Reads queue figures from a Redis broker in one pipelined round trip."""

    def __init__(
        self,
        client: redis.Redis,
        sent_time: Callable[[str], float | None],
        global_keyprefix: str,
        max_queues: int,
        broker_url: str = "",
    ) -> None:
        self.client = client
        self.broker_url = broker_url
        self._cluster_checked = False
        self.sent_time = sent_time
        self.prefix = global_keyprefix
        self.max_queues = max_queues
        self.discovered: set[str] = set()
        self._discovered_at = float("-inf")
        # (queue, sub-list) -> (delivery tag at its head, when we first saw it there)
        self._heads: dict[str, tuple[str, float]] = {}

    def discover(self) -> set[str]:
        """Queues that workers declared, from kombu's binding sets."""
        binding = f"{self.prefix}_kombu.binding."
        internal = {binding + exchange for exchange in INTERNAL_EXCHANGES}
        queues: set[str] = set()
        for raw_key in self.client.scan_iter(match=binding + "*", count=1000):
            key = raw_key.decode("utf-8", "replace")
            if key not in internal:
                queues |= queues_from_bindings(self.client.smembers(raw_key))
        return queues

    def poll(self, queues: Iterable[str], now: float) -> BrokerView:
        try:
            return self._poll(queues, now)
        except redis.ResponseError as exc:
            # A cluster node answers key commands with MOVED/CROSSSLOT/CLUSTERDOWN; say what
            # that means instead of repeating the redirection (INFO may be denied by ACL).
            if is_cluster_error(exc):
                raise BrokerIsCluster(cluster_message(self.broker_url)) from None
            raise

    def _poll(self, queues: Iterable[str], now: float) -> BrokerView:
        if not self._cluster_checked:
            refuse_cluster(self.client, self.broker_url)
            self._cluster_checked = True
        if now - self._discovered_at >= DISCOVERY_INTERVAL:
            self.discovered = self.discover()
            self._discovered_at = now
        watched = sorted(set(queues) | self.discovered)[: self.max_queues]
        pipe = self.client.pipeline(transaction=False)
        for queue in watched:
            for key in priority_keys(queue, self.prefix):
                pipe.llen(key)
                pipe.lindex(key, -1)
        pipe.hlen(self.prefix + "unacked")
        pipe.zrange(self.prefix + "unacked_index", 0, 0, withscores=True)
        replies = pipe.execute()

        lengths: dict[str, int] = {}
        oldest: dict[str, float] = {}
        per_queue = 2 * len(PRIORITY_STEPS)
        heads_seen: dict[str, tuple[str, float]] = {}
        for i, queue in enumerate(watched):
            chunk = replies[i * per_queue : (i + 1) * per_queue]
            lengths[queue] = sum(chunk[0::2])
            ages = [
                self._head_age(f"{queue}/{step}", head, now, heads_seen)
                for step, head in zip(PRIORITY_STEPS, chunk[1::2], strict=True)
                if head is not None
            ]
            oldest[queue] = max(ages, default=0.0)
        self._heads = heads_seen
        unacked, first = replies[-2], replies[-1]
        return BrokerView(
            up=True,
            polled_at=now,
            lengths=lengths,
            oldest_age=oldest,
            unacked=unacked,
            unacked_oldest_age=max(0.0, now - first[0][1]) if first else 0.0,
        )

    def inflight_tasks(self, limit: int) -> list[tuple[str, str, str]]:
        """Tasks delivered but not acknowledged (``unacked``): what a restarted exporter
        needs to label the events of tasks already running. At most ``limit``."""
        tasks = []
        for _tag, value in self.client.hscan_iter(self.prefix + "unacked", count=1000):
            task = inflight_task(value)
            if task is not None:
                tasks.append(task)
                if len(tasks) >= limit:
                    break
        return tasks

    def _head_age(
        self, sublist: str, head: bytes, now: float, seen: dict[str, tuple[str, float]]
    ) -> float:
        task_id, tag = head_identity(head)
        sent = self.sent_time(task_id) if task_id else None
        previous = self._heads.get(sublist)
        first_seen = previous[1] if previous and previous[0] == tag else now
        seen[sublist] = (tag, first_seen)
        return max(0.0, now - (sent if sent is not None else first_seen))


def inflight_task(value: bytes) -> tuple[str, str, str] | None:
    """(task id, task name, queue) of an ``unacked`` hash value, reading only the envelope.

    kombu stores ``[message, exchange, routing_key]``; the body is never decoded.
    """
    try:
        message, _exchange, routing_key = orjson.loads(value)
        headers = message["headers"]
        task_id, name = headers["id"], headers["task"]
    except (orjson.JSONDecodeError, ValueError, TypeError, KeyError):
        return None
    if not all(isinstance(v, str) and v for v in (task_id, name, routing_key)):
        return None
    return task_id, name, routing_key


class AmqpBrokerPoller:
    """Queue lengths and consumer counts from RabbitMQ (passive queue_declare)."""

    def __init__(self, connection: Connection, max_queues: int) -> None:
        self.connection = connection
        self.max_queues = max_queues

    def poll(self, queues: Iterable[str], now: float) -> BrokerView:
        lengths: dict[str, int] = {}
        consumers: dict[str, int] = {}
        self.connection.ensure_connection(max_retries=1)
        channel = self.connection.default_channel
        for queue in sorted(set(queues))[: self.max_queues]:
            try:
                ok = channel.queue_declare(queue=queue, passive=True)
            except self.connection.channel_errors:
                # NOT_FOUND closes the channel: reopen it and report the queue as absent.
                channel = self.connection.default_channel
                continue
            lengths[queue] = ok.message_count
            consumers[queue] = ok.consumer_count
        return BrokerView(up=True, polled_at=now, lengths=lengths, consumers=consumers)


class PollerThread(Periodic):
    """Runs a poller every ``interval`` seconds and publishes its ``BrokerView``."""

    thread_name = "broker-poller"
    failure_message = "broker poll failed; keeping the last figures"
    recovery_message = "broker poll recovered"

    def __init__(
        self,
        poller: RedisBrokerPoller | AmqpBrokerPoller,
        interval: float,
        queues: Callable[[], Iterable[str]],
        on_fatal: Callable[[str], None] | None = None,
    ) -> None:
        # A short join: a poll stuck on an unanswering broker must not delay shutdown.
        super().__init__(interval, join_timeout=1.0)
        self.poller = poller
        self.queues = queues
        self.on_fatal = on_fatal
        self.view = BrokerView()

    def step(self) -> None:
        self.view = self.poller.poll(self.queues(), time.time())

    def failed(self, exc: Exception) -> None:
        self.view = dataclasses.replace(self.view, up=False)
        if isinstance(exc, BrokerIsCluster) and self.on_fatal is not None:
            self.on_fatal(str(exc))

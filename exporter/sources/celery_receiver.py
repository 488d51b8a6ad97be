"""The generic event source: Celery's own ``EventReceiver``, for brokers other than Redis.

It is slower than the Redis fast path (kombu decodes every message and Celery builds an
event object per event) but speaks every transport kombu does, RabbitMQ first. It accepts
JSON only. The receiving thread is the one thread that writes the state, and the only one
that writes ``subscribed``: it is set once kombu consumes from the event queue and one round
of ``drain_events`` raised nothing (see ``_Receiver.on_iteration``), not when a connection
object merely exists.

Timestamps stay what the worker sent: Unix time, which needs no time zone. Celery's
receiver "localizes" them by default (``event_from_message(localize=True)`` shifts each by
the difference between the sender's UTC offset and this process's), which would move event
lag and queue wait by hours for a worker in another time zone; the exporter asks for
``localize=False``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import structlog
from celery import Celery
from celery.events.receiver import EventReceiver

from exporter.broker import Outages
from exporter.sources.redis_pubsub import DEFAULT_BACKOFF_CAP, JOIN_SECONDS, Backoff
from exporter.state import State

log = structlog.get_logger(__name__)


class _Receiver(EventReceiver):
    """``EventReceiver`` that reports readiness, keeps timestamps in UTC and leaves
    reconnecting (and logging it) to the source's loop."""

    connect_max_retries = 1  # kombu would otherwise retry forever inside capture()

    def __init__(self, *args: Any, on_ready: Callable[[], None],
                 on_iteration: Callable[[], None], **kwargs: Any) -> None:  # fmt: skip
        super().__init__(*args, **kwargs)
        self._on_ready = on_ready
        self._on_iteration = on_iteration
        self._iterations = 0

    def on_consume_ready(self, connection: Any, channel: Any, consumers: Any, **kw: Any) -> None:
        super().on_consume_ready(connection, channel, consumers, **kw)
        self._iterations = 0

    def on_iteration(self) -> None:
        """Called before each ``drain_events`` (at least once a second). Consumers being
        declared is not yet a subscription: kombu's Redis transport sends PSUBSCRIBE in the
        first drain, and a refusal (NOPERM) surfaces there. So the second call, after one
        drain that raised nothing, is when events can flow."""
        self._iterations += 1
        if self._iterations == 2:
            self._on_ready()
        self._on_iteration()

    def on_connection_error(self, exc: Exception, interval: float) -> None:
        """Silent: the source logs a lost connection once, with its reason."""

    def event_from_message(self, body: Any, localize: bool = True, **kwargs: Any) -> Any:
        return super().event_from_message(body, localize=False, **kwargs)


class ReceiverEventSource:
    """Runs ``app.events.Receiver(...).capture()`` in a thread and reconnects forever."""

    def __init__(
        self,
        app: Celery,
        state: State,
        housekeeping: Callable[[], None] | None = None,
        retry_interval: float = 0.0,
    ) -> None:
        self.app = app
        self.state = state
        self.housekeeping = housekeeping
        # Written by the receiving thread only.
        self.subscribed = False
        self._outages = Outages()
        self.reconnects = self._outages.reconnects  # reason -> count, read at scrape time
        self.dropped = 0
        self.backlog_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._receiver: _Receiver | None = None
        self._backoff = Backoff(cap=retry_interval if retry_interval > 0 else DEFAULT_BACKOFF_CAP)
        self._next_housekeeping = 0.0

    def yield_to_requests(self, active: bool) -> None:
        """HTTP requests do not pause this (slower, kombu-driven) source."""

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="events-receiver", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._receiver is not None:
            self._receiver.should_stop = True  # checked at least once a second
        if self._thread is not None:
            self._thread.join(timeout=JOIN_SECONDS)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with self.app.connection_for_read() as connection:
                    connection.ensure_connection(max_retries=1)
                    self._receiver = _Receiver(
                        connection,
                        handlers={"*": self._on_event},
                        accept={"json"},
                        app=self.app,
                        on_ready=self._on_ready,
                        on_iteration=self._tick,
                    )
                    self._receiver.should_stop = self._stop.is_set()
                    self._receiver.capture(limit=None, timeout=None, wakeup=False)
            except Exception as exc:  # kombu raises many connection error types
                if self._stop.is_set():
                    break
                self._lost(exc)
                self._stop.wait(self._backoff.next_delay())
            finally:
                self.subscribed = False

    def _on_ready(self) -> None:
        self.subscribed = True
        self._backoff.reset()
        uri = self._receiver.connection.as_uri() if self._receiver is not None else ""
        if self._outages.subscribed():
            log.info("event subscription restored", broker=uri)
        else:
            log.info("receiving events", broker=uri)

    def _lost(self, exc: BaseException) -> None:
        logged = self._outages.lost(exc)
        if logged is None:
            return
        reason, was_subscribed = logged
        log.warning(
            "event receiver lost its connection; reconnecting"
            if was_subscribed
            else "cannot receive events; retrying",
            reason=reason,
            error=str(exc),
        )

    def _on_event(self, event: dict[str, Any]) -> None:
        try:
            self.state.apply((event,), time.time())
        except Exception:  # a bug must cost one event, never the exporter
            self.state.reject("internal_error")
            log.exception("failed to apply an event")

    def _tick(self) -> None:
        now = time.monotonic()
        if self.housekeeping is not None and now >= self._next_housekeeping:
            self._next_housekeeping = now + 1.0
            self.housekeeping()

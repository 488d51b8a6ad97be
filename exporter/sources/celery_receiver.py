"""The generic event source: Celery's own ``EventReceiver``, for brokers other than Redis.

It is slower than the Redis fast path (kombu decodes every message and Celery builds an
event object per event) but speaks every transport kombu does, RabbitMQ first. It accepts
JSON only. The receiving thread is the one thread that writes the state.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import structlog
from celery import Celery

from exporter.sources.redis_pubsub import Backoff
from exporter.state import State

log = structlog.get_logger(__name__)


class ReceiverEventSource:
    """Runs ``app.events.Receiver(...).capture()`` in a thread and reconnects forever."""

    def __init__(
        self,
        app: Celery,
        state: State,
        housekeeping: Callable[[], None] | None = None,
    ) -> None:
        self.app = app
        self.state = state
        self.housekeeping = housekeeping
        self.subscribed = False
        self.reconnects = 0
        self.dropped = 0
        self.backlog_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._receiver: Any = None
        self._next_housekeeping = 0.0

    def yield_to_requests(self, active: bool) -> None:
        """HTTP requests do not pause this (slower, kombu-driven) source."""

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="events-receiver", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._receiver is not None:
            self._receiver.should_stop = True
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        backoff = Backoff()
        while not self._stop.is_set():
            try:
                with self.app.connection_for_read() as connection:
                    self._receiver = self.app.events.Receiver(
                        connection, handlers={"*": self._on_event}, accept={"json"}
                    )
                    self.subscribed = True
                    backoff.reset()
                    log.info("receiving events", broker=connection.as_uri())
                    self._receiver.capture(limit=None, timeout=None, wakeup=False)
            except Exception as exc:  # kombu raises many connection error types
                if self._stop.is_set():
                    break
                if self.subscribed or self.reconnects == 0:
                    log.warning("event receiver lost its connection; reconnecting", error=str(exc))
                self.subscribed = False
                self.reconnects += 1
                self._stop.wait(backoff.next_delay())

    def _on_event(self, event: dict[str, Any]) -> None:
        try:
            self.state.apply((event,), time.time())
        except Exception:  # a bug must cost one event, never the exporter
            self.state.reject("internal_error")
            log.exception("failed to apply an event")
        self._tick()

    def _tick(self) -> None:
        now = time.monotonic()
        if self.housekeeping is not None and now >= self._next_housekeeping:
            self._next_housekeeping = now + 1.0
            self.housekeeping()

"""A background loop for the broker poller and the inspector: one step every ``interval``.

A run of failures is logged once (with the first error) and its end once, so a broker that
is down for an hour costs two log lines, not one per poll.
"""

from __future__ import annotations

import threading
import time

import structlog

log = structlog.get_logger(__name__)


class Periodic:
    """Subclasses implement ``step()``, and ``failed()`` to react to an error."""

    thread_name = "periodic"
    failure_message = "periodic step failed"
    recovery_message = "periodic step recovered"

    def __init__(self, interval: float, join_timeout: float = 5.0) -> None:
        self.interval = interval
        self.join_timeout = join_timeout
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def step(self) -> None:
        raise NotImplementedError

    def failed(self, exc: Exception) -> None:
        """Called on every failed step, before logging."""

    def run_once(self) -> None:
        try:
            self.step()
        except Exception as exc:  # any broker, network or protocol error: try again later
            self.failed(exc)
            if not self._failing:
                log.warning(self.failure_message, error=str(exc))
            self._failing = True
            return
        if self._failing:
            log.info(self.recovery_message)
        self._failing = False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.join_timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.run_once()
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

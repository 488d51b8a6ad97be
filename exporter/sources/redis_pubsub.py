"""The fast event source for Redis brokers: PSUBSCRIBE to Celery's event channels.

Why two threads. Redis disconnects a pub/sub subscriber whose output buffer passes
``client-output-buffer-limit pubsub`` (32 MB hard, 8 MB for 60 s by default) — that is how
other exporters lose events under load. So one thread does nothing but drain the socket
(recv releases the GIL; the thread holds it only to queue each chunk), and a second thread
parses the stream with hiredis, decodes the messages and applies them to the state. A burst
that outruns decoding waits in this process's memory, where it is measured
(``celery_exporter_event_backlog_bytes``, lag, a log line) and bounded
(``--max-backlog-bytes``; past it messages are only counted as dropped, which is cheap, never
silently lost), instead of in Redis, where the subscriber would be cut off.

redis-py makes the connection (URL parsing, AUTH/ACL user, SELECT, TLS, keepalive); only
the hot read loop is ours.
"""

from __future__ import annotations

import queue
import random
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import hiredis
import redis
import structlog

from exporter.decode import Rejected, decode_envelope
from exporter.state import State

log = structlog.get_logger(__name__)

RECV_BYTES = 1 << 20
BEHIND_BYTES = 32 * 1024 * 1024  # a few hundred ms of a heavy stream: worth a log line
NEW_CONNECTION = ("new-connection",)
MAX_SCRAPE_PAUSE_SECONDS = 0.5
GATHER_SECONDS = 0.005
TRICKLE_BYTES = 64 * 1024  # under this per read, the stream is a trickle (< ~1 MB/s)...
TRICKLE_SECONDS = 0.05  # ...worth 50 ms of latency to wake 10x less often
IDLE_PING_SECONDS = 10.0
DEAD_AFTER_SECONDS = 30.0


def event_pattern(db: int, global_keyprefix: str = "") -> str:
    """The channel pattern kombu publishes Celery events on (fanout over pub/sub)."""
    return f"{global_keyprefix}/{db}.celeryev/*"


class Backoff:
    """Capped exponential backoff with full jitter, for reconnect loops."""

    def __init__(self, base: float = 0.1, cap: float = 5.0) -> None:
        self.base, self.cap, self.attempt = base, cap, 0

    def next_delay(self) -> float:
        delay = min(self.cap, self.base * 2**self.attempt)
        self.attempt += 1
        return random.uniform(delay / 2, delay)

    def reset(self) -> None:
        self.attempt = 0


class RedisEventSource:
    """Subscribes, drains, decodes and applies events; reconnects forever."""

    def __init__(
        self,
        client: redis.Redis,
        state: State,
        pattern: str,
        max_backlog_bytes: int,
        housekeeping: Callable[[], None] | None = None,
    ) -> None:
        self.client = client
        self.state = state
        self.pattern = pattern
        self.max_backlog_bytes = max_backlog_bytes
        self.housekeeping = housekeeping
        self.subscribed = False
        self.reconnects = 0
        self.dropped = 0  # messages; written by the processor thread only
        self.bytes_in = 0  # written by the reader thread only
        self.bytes_done = 0  # written by the processor thread only
        self._batches: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._conn: redis.connection.AbstractConnection | None = None
        self._threads: list[threading.Thread] = []
        self._last_drop_log = 0.0
        self._last_behind_log = 0.0
        # Scrapes come first: while one is served, the processor parks (the reader keeps
        # draining the socket, so nothing is lost; the backlog absorbs the pause).
        self.scrape_waiting = False
        self._scrape_done = threading.Event()
        self._scrape_done.set()

    def yield_to_requests(self, active: bool) -> None:
        """Called by the HTTP server: park the processor while requests are in flight."""
        if active:
            self._scrape_done.clear()
            self.scrape_waiting = True
        else:
            self.scrape_waiting = False
            self._scrape_done.set()

    def _yield_to_scrape(self) -> None:
        # Bounded: a slow scraper may delay ingest by at most this, once per scrape.
        self._scrape_done.wait(MAX_SCRAPE_PAUSE_SECONDS)
        self.scrape_waiting = False

    @property
    def backlog_bytes(self) -> int:
        return max(0, self.bytes_in - self.bytes_done)

    def start(self) -> None:
        self._threads = [
            threading.Thread(target=self._read_forever, name="events-reader", daemon=True),
            threading.Thread(target=self._process_forever, name="events-processor", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._batches.put(None)
        self._disconnect()
        for thread in self._threads:
            thread.join(timeout=5)

    # ------------------------------------------------------------------ reader thread

    def _read_forever(self) -> None:
        backoff = Backoff()
        while not self._stop.is_set():
            try:
                sock = self._subscribe()
                backoff.reset()
                self._drain(sock)
            except Exception as exc:  # network, protocol, or a bug: never end the thread
                if self._stop.is_set():
                    break
                if not isinstance(exc, (OSError, redis.RedisError, hiredis.ProtocolError)):
                    log.exception("unexpected error in the event reader")
                self._lost(exc)
                self._stop.wait(backoff.next_delay())
            finally:
                self._disconnect()

    def _subscribe(self) -> socket.socket:
        conn = self.client.connection_pool.make_connection()
        self._conn = conn
        conn.connect()
        conn.send_command("PSUBSCRIBE", self.pattern)
        sock = conn._sock  # redis-py's connected (and, for rediss, TLS-wrapped) socket
        if sock is None:
            raise redis.ConnectionError("connection closed while subscribing")
        sock.settimeout(1.0)
        self._batches.put(NEW_CONNECTION)  # the processor starts a fresh RESP parser
        return sock

    def _drain(self, sock: socket.socket) -> None:
        """Read until the connection drops, handing raw chunks to the processor.

        Nothing but recv() happens here, so this thread needs the GIL only for an instant
        per megabyte and keeps Redis's output buffer empty even while decoding falls behind.
        """
        last_data = last_ping = time.monotonic()
        while not self._stop.is_set():
            try:
                chunk = sock.recv(RECV_BYTES)
            except TimeoutError:
                now = time.monotonic()
                if now - last_data > DEAD_AFTER_SECONDS:
                    raise redis.TimeoutError("no reply from Redis to PING") from None
                if now - last_ping > IDLE_PING_SECONDS:
                    sock.sendall(b"*1\r\n$4\r\nPING\r\n")
                    last_ping = now
                continue
            if not chunk:
                raise redis.ConnectionError("Redis closed the subscription")
            last_data = time.monotonic()
            if len(chunk) < RECV_BYTES:
                # Drained: let the stream gather in the kernel buffer rather than wake (and
                # take the GIL from decoding or a scrape) for every packet. A trickle waits
                # longer: its cost is wake-ups, not bytes (bench/RESULTS.md, overhead).
                time.sleep(GATHER_SECONDS if len(chunk) >= TRICKLE_BYTES else TRICKLE_SECONDS)
            # Past the cap a chunk is only parsed and counted, never decoded: memory stays
            # bounded by what the cheap path can clear.
            drop = self.backlog_bytes > self.max_backlog_bytes
            self.bytes_in += len(chunk)
            self._batches.put((time.time(), chunk, drop))

    def _lost(self, exc: BaseException) -> None:
        if self.subscribed or self.reconnects == 0:
            log.warning("event subscription lost; reconnecting", error=str(exc))
        self.subscribed = False
        self.reconnects += 1

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.disconnect()

    # ------------------------------------------------------------------ processor thread

    def _process_forever(self) -> None:
        parser = hiredis.Reader()
        next_housekeeping = time.monotonic() + 1.0
        while True:
            try:
                batch = self._batches.get(timeout=1.0)
            except queue.Empty:
                batch = ()
            if batch is None:
                return
            if batch is NEW_CONNECTION:
                parser = hiredis.Reader()
            elif batch:
                received, chunk, drop = batch
                try:
                    self._apply(parser, received, chunk, drop)
                except hiredis.ProtocolError:
                    log.error("unreadable reply stream from Redis; resubscribing")
                    parser = hiredis.Reader()
                    self._disconnect()  # the reader reconnects
                self.bytes_done += len(chunk)
                self.state.flush_pending()
                self._watch_backlog()
            if self.housekeeping is not None and time.monotonic() >= next_housekeeping:
                next_housekeeping = time.monotonic() + 1.0
                self.housekeeping()

    def _apply(self, parser: hiredis.Reader, received: float, chunk: bytes, drop: bool) -> None:
        state = self.state
        parser.feed(chunk)
        while (reply := parser.gets()) is not False:
            if type(reply) is not list or not reply:
                continue
            if self.scrape_waiting:
                self._yield_to_scrape()
            kind = reply[0]
            if kind == b"pmessage":
                if drop:
                    self._drop()
                    continue
                try:
                    events = decode_envelope(reply[3])
                except Rejected as exc:
                    state.reject(exc.reason)
                    continue
                try:
                    state.apply(events, received)
                except Exception:  # a bug must cost one message, never the exporter
                    state.reject("internal_error")
                    log.exception("failed to apply an event message")
            elif kind == b"psubscribe":
                self._subscribed()

    def _subscribed(self) -> None:
        if self.reconnects:
            log.info("event subscription restored", pattern=self.pattern)
        else:
            log.info("subscribed to events", pattern=self.pattern)
        self.subscribed = True

    def _drop(self) -> None:
        self.dropped += 1
        now = time.monotonic()
        if now - self._last_drop_log > 10:
            self._last_drop_log = now
            log.error(
                "event backlog over its cap: dropping messages (counted)",
                dropped_total=self.dropped,
                backlog_bytes=self.backlog_bytes,
                max_backlog_bytes=self.max_backlog_bytes,
            )

    def _watch_backlog(self) -> None:
        """Say so when decoding falls behind: never silently."""
        backlog = self.backlog_bytes
        now = time.monotonic()
        if backlog > min(BEHIND_BYTES, self.max_backlog_bytes // 2) and (
            now - self._last_behind_log > 10
        ):
            self._last_behind_log = now
            log.warning(
                "falling behind the event stream",
                backlog_bytes=backlog,
                max_backlog_bytes=self.max_backlog_bytes,
            )

"""The fast event source for Redis brokers: PSUBSCRIBE to Celery's event channels.

Why two threads. Redis disconnects a pub/sub subscriber whose output buffer passes
``client-output-buffer-limit pubsub`` (32 MB hard, 8 MB for 60 s by default) — that is how
other exporters lose events under load. So one thread does little but drain the socket
(recv releases the GIL; the thread holds it only to split each chunk into replies with
hiredis, in C, and queue the event payloads), and a second thread decodes the payloads and
applies them to the state. A burst that outruns decoding waits in this process's memory,
where it is measured (``celery_exporter_event_backlog_bytes``, lag, a log line) and bounded
(``--max-backlog-bytes``), instead of in Redis, where the subscriber would be cut off.

Who owns what. The reader thread owns the connection, its RESP parser and the subscription
state (``subscribed``, ``dropped``, ``reconnects``): it alone recognises the
subscription's own replies — the PSUBSCRIBE confirmation, PONG, an error such as
``-NOAUTH`` after a password rotation or ``-NOPERM`` after an ACL change — so whatever ends
a connection (an error reply, an unparseable stream, Redis closing it, no answer to PING)
is handled where the connection lives: close it, count the reason
(``celery_exporter_event_source_reconnects_total``), log it once, reconnect with capped
backoff and a fresh parser. Past the backlog cap the reader drops a chunk's messages
*before* queueing them (counted in ``celery_exporter_events_dropped_total``), so memory
stays bounded however slow decoding is. The processor thread only consumes: it never
touches the connection.

redis-py makes the connection (URL parsing, AUTH/ACL user, SELECT, TLS, Sentinel,
keepalive); only the hot read loop is ours.
"""

from __future__ import annotations

import queue
import random
import socket
import threading
import time
from collections.abc import Callable

import hiredis
import redis
import structlog

from exporter.broker import (
    Outages,
    SubscriptionClosed,
    SubscriptionRefused,
    event_pattern,
)
from exporter.decode import Rejected, decode_envelope
from exporter.state import State

__all__ = ["Backoff", "RedisEventSource", "event_pattern"]

log = structlog.get_logger(__name__)

RECV_BYTES = 1 << 20
# hiredis compacts its buffer (a memmove of everything unread) each time a reply leaves
# 1 KiB consumed behind it, so one 1 MiB feed costs ~1 GB of memmove: feed in slices.
FEED_BYTES = 16 * 1024
BEHIND_BYTES = 32 * 1024 * 1024  # a few hundred ms of a heavy stream: worth a log line
MAX_SCRAPE_PAUSE_SECONDS = 0.5
GATHER_SECONDS = 0.005
TRICKLE_BYTES = 64 * 1024  # under this per read, the stream is a trickle (< ~1 MB/s)...
TRICKLE_SECONDS = 0.05  # ...worth 50 ms of latency to wake 10x less often
READ_TIMEOUT_SECONDS = 1.0
IDLE_PING_SECONDS = 10.0
DEAD_AFTER_SECONDS = 30.0
DEFAULT_BACKOFF_CAP = 5.0
JOIN_SECONDS = 2.0
PMESSAGE = b"pmessage"
PSUBSCRIBE = b"psubscribe"
PING = b"*1\r\n$4\r\nPING\r\n"

# (received at, event payloads, bytes they took on the wire)
Batch = tuple[float, list[bytes], int]


class Backoff:
    """Capped exponential backoff with full jitter, for reconnect loops."""

    def __init__(self, base: float = 0.1, cap: float = DEFAULT_BACKOFF_CAP) -> None:
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
        retry_interval: float = 0.0,
    ) -> None:
        self.client = client
        self.state = state
        self.pattern = pattern
        self.max_backlog_bytes = max_backlog_bytes
        self.housekeeping = housekeeping
        # Written by the reader thread only (scrapes read them).
        self.subscribed = False
        self.dropped = 0  # messages dropped before queueing, past the backlog cap
        self._outages = Outages()
        self.reconnects = self._outages.reconnects  # reason -> count, read at scrape time
        self.bytes_queued = 0
        # Written by the processor thread only.
        self.bytes_done = 0
        self._batches: queue.SimpleQueue[Batch | None] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._backoff = Backoff(cap=retry_interval if retry_interval > 0 else DEFAULT_BACKOFF_CAP)
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
        return max(0, self.bytes_queued - self.bytes_done)

    def start(self) -> None:
        self._threads = [
            threading.Thread(target=self._read_forever, name="events-reader", daemon=True),
            threading.Thread(target=self._process_forever, name="events-processor", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Stop both threads promptly; a backlog is abandoned, not drained (the process is
        exiting, and a restarted exporter counts from zero anyway)."""
        self._stop.set()
        self._batches.put(None)  # wakes an idle processor
        deadline = time.monotonic() + JOIN_SECONDS
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))

    # ------------------------------------------------------------------ reader thread

    def _read_forever(self) -> None:
        while not self._stop.is_set():
            try:
                self._subscribe_and_drain()
            except Exception as exc:  # network, protocol, refusal, or a bug: never end
                if self._stop.is_set():
                    break
                self._lost(exc)
                self._stop.wait(self._backoff.next_delay())

    def _subscribe_and_drain(self) -> None:
        conn = self.client.connection_pool.make_connection()
        try:
            conn.connect()  # TCP/TLS, AUTH, SELECT; through Sentinel: finds the master first
            conn.send_command("PSUBSCRIBE", self.pattern)
            sock = conn._sock  # redis-py's connected (and, for rediss, TLS-wrapped) socket
            if sock is None:
                raise SubscriptionClosed("connection closed while subscribing")
            sock.settimeout(READ_TIMEOUT_SECONDS)
            self._drain(sock, hiredis.Reader())  # a fresh parser for every connection
        finally:
            self.subscribed = False
            conn.disconnect()

    def _drain(self, sock: socket.socket, parser: hiredis.Reader) -> None:
        """Read until the connection ends, queueing each chunk's event payloads.

        Per chunk this thread holds the GIL only to split it into replies (hiredis, in C)
        and queue the payloads, so it keeps Redis's output buffer empty even while decoding
        falls behind. Every other reply is the subscription's own business, handled here.
        """
        feed, gets = parser.feed, parser.gets
        last_data = last_ping = time.monotonic()
        while not self._stop.is_set():
            try:
                chunk = sock.recv(RECV_BYTES)
            except TimeoutError:
                now = time.monotonic()
                if now - last_data > DEAD_AFTER_SECONDS:
                    raise redis.TimeoutError(
                        f"no reply from Redis to PING in {DEAD_AFTER_SECONDS:g} s"
                    ) from None
                if now - last_ping > IDLE_PING_SECONDS:
                    sock.sendall(PING)
                    last_ping = now
                continue
            if not chunk:
                raise SubscriptionClosed("Redis closed the connection")
            last_data = time.monotonic()
            payloads: list[bytes] = []
            append = payloads.append
            size = len(chunk)
            try:
                for offset in range(0, size, FEED_BYTES):
                    feed(chunk, offset, min(FEED_BYTES, size - offset))
                    while (reply := gets()) is not False:
                        if reply.__class__ is list and reply[0] == PMESSAGE:
                            append(reply[3])
                        else:
                            self._control(reply)
            finally:  # the messages before an error reply or a corrupt byte are good
                if payloads:
                    self._queue(payloads, size)
            if size < RECV_BYTES:
                # Drained: let the stream gather in the kernel buffer rather than wake (and
                # take the GIL from decoding or a scrape) for every packet. A trickle waits
                # longer: its cost is wake-ups, not bytes (bench/RESULTS.md, overhead).
                time.sleep(GATHER_SECONDS if size >= TRICKLE_BYTES else TRICKLE_SECONDS)

    def _control(self, reply: object) -> None:
        """A reply that is not an event: the subscription's confirmation, PONG, or an error."""
        if isinstance(reply, hiredis.ReplyError):
            raise SubscriptionRefused(str(reply))
        if reply.__class__ is list and reply and reply[0] == PSUBSCRIBE:  # type: ignore[index]
            self._on_subscribed()
        # PONG (["pong", ""]) and anything else: the connection is alive; nothing to do.

    def _queue(self, payloads: list[bytes], size: int) -> None:
        """Hand payloads to the processor, or past the cap drop them here, uncopied."""
        if self.bytes_queued - self.bytes_done > self.max_backlog_bytes:
            self._drop(len(payloads))
            return
        self.bytes_queued += size
        self._batches.put((time.time(), payloads, size))

    def _on_subscribed(self) -> None:
        self.subscribed = True
        self._backoff.reset()
        if self._outages.subscribed():
            log.info("event subscription restored", pattern=self.pattern)
        else:
            log.info("subscribed to events", pattern=self.pattern)

    def _lost(self, exc: BaseException) -> None:
        """Count why the connection ended; log it once per outage and reason."""
        logged = self._outages.lost(exc)
        if logged is None:
            return
        reason, was_subscribed = logged
        if not isinstance(exc, (OSError, redis.RedisError, hiredis.ProtocolError)):
            log.error("unexpected error in the event reader; reconnecting", exc_info=exc)
            return
        log.warning(
            "event subscription lost; reconnecting"
            if was_subscribed
            else "cannot subscribe to events; retrying",
            reason=reason,
            error=str(exc),
            pattern=self.pattern,
        )

    def _drop(self, messages: int) -> None:
        self.dropped += messages
        now = time.monotonic()
        if now - self._last_drop_log > 10:
            self._last_drop_log = now
            log.error(
                "event backlog over its cap: dropping messages (counted)",
                dropped_total=self.dropped,
                backlog_bytes=self.backlog_bytes,
                max_backlog_bytes=self.max_backlog_bytes,
            )

    # ------------------------------------------------------------------ processor thread

    def _process_forever(self) -> None:
        next_housekeeping = time.monotonic() + 1.0
        while not self._stop.is_set():
            try:
                batch = self._batches.get(timeout=1.0)
            except queue.Empty:
                batch = None
            if batch is not None:
                try:
                    self._apply(batch)
                except Exception:  # a bug must cost one batch at most, never the thread
                    self.state.reject("internal_error")
                    log.exception("failed to process a batch of events")
                self.bytes_done += batch[2]
                self._watch_backlog()
            if self.housekeeping is not None and time.monotonic() >= next_housekeeping:
                next_housekeeping = time.monotonic() + 1.0
                try:
                    self.housekeeping()
                except Exception:
                    log.exception("event housekeeping failed")

    def _apply(self, batch: Batch) -> None:
        received, payloads, _size = batch
        state = self.state
        for payload in payloads:
            if self.scrape_waiting:
                self._yield_to_scrape()
            try:
                events = decode_envelope(payload)
            except Rejected as exc:
                state.reject(exc.reason)
                continue
            try:
                state.apply(events, received)
            except Exception:  # a bug must cost one message, never the exporter
                state.reject("internal_error")
                log.exception("failed to apply an event message")
        state.flush_pending()

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

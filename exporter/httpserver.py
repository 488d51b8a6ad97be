"""The HTTP server: one asyncio event loop holds every connection; a few threads do the work.

Why this shape, and not a ready-made server (README, "Dependencies and why"):

- ``http.server``/``wsgiref`` (what this was; prometheus_client uses it): a thread per
  connection and no deadline on the request head. 2,000 idle sockets were 2,000 threads,
  and at the file-descriptor limit its accept loop spun at 100% CPU.
- cheroot: a bounded pool, but a new connection goes straight to a worker thread that reads
  the request head itself, so N idle sockets hold N workers for the whole timeout and a
  scrape queues behind them; the timeout is per read (a byte every few seconds keeps a
  socket forever); the TLS handshake runs in the accept loop.
- waitress: the right shape (one loop reads requests, complete ones go to threads) but no
  TLS, and the exporter serves TLS with client certificates from the web config.

So asyncio (standard library) accepts, shakes hands and reads; h11 (a small, well-kept
HTTP/1.1 state machine, the one httpx and uvicorn use) parses and frames. A connection is a
coroutine, not a thread. Deadlines: TLS handshake and the whole request head within
``header_timeout`` of the accept (a client trickling one byte a second is cut); a keep-alive
connection idle for ``idle_timeout`` is closed; a response not taken within
``write_timeout`` is cut. Open connections are capped below the file-descriptor limit; past
the cap a new connection is closed at once, counted and logged (at most once a minute).
The TLS context is read from the web config at each accept, so a SIGHUP's certificates
apply to new connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import http
import resource
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import h11
import structlog

from exporter.http import TEXT_UTF8, ExporterApp, Request, RequestPriority, Response
from exporter.metrics import HTTP_REJECT_REASONS

log = structlog.get_logger(__name__)

HEADER_TIMEOUT_SECONDS = 10.0
IDLE_TIMEOUT_SECONDS = 60.0
WRITE_TIMEOUT_SECONDS = 60.0
CLOSE_TIMEOUT_SECONDS = 2.0  # TLS close_notify, then the socket is aborted
MAX_CONNECTIONS = 4096  # an idle connection costs a few kB; this bounds them
RESERVED_FDS = 64  # kept free under the fd limit: broker reconnects, /proc reads, logs
HANDLER_THREADS = 4  # rendering and status; renders take a lock anyway
MAX_HEAD_BYTES = 16 * 1024  # request line and headers; more gets 431
READ_BYTES = 64 * 1024
ACCEPT_BATCH = 64
LISTEN_BACKLOG = 1024
LIMIT_LOG_SECONDS = 60.0
FD_RETRY_SECONDS = 1.0
_OUT_OF_FDS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


@dataclass(frozen=True)
class Limits:
    max_connections: int = MAX_CONNECTIONS
    header_timeout: float = HEADER_TIMEOUT_SECONDS
    idle_timeout: float = IDLE_TIMEOUT_SECONDS
    write_timeout: float = WRITE_TIMEOUT_SECONDS
    handler_threads: int = HANDLER_THREADS


def connection_cap(requested: int) -> int:
    """``requested``, kept ``RESERVED_FDS`` below the soft file-descriptor limit: with the
    cap full, the exporter's own sockets and files must still open."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return requested
    return max(1, min(requested, soft - RESERVED_FDS))


def parse_listen_address(address: str) -> tuple[str, int]:
    """``:9808``, ``0.0.0.0:9808``, ``[::1]:9808`` -> (host, port); '' means all interfaces."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"invalid listen address {address!r}: expected [host]:port")
    return host.strip("[]"), int(port)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            # On the "all interfaces" socket accept IPv4 too, as Go exporters do.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def listen(address: str) -> socket.socket:
    """The listening socket; "all interfaces" is IPv6 and IPv4, or IPv4 without IPv6."""
    host, port = parse_listen_address(address)
    candidates = [host] if host else ["::", "0.0.0.0"]
    for i, candidate in enumerate(candidates):
        try:
            return _bind(candidate, port)
        except OSError as exc:
            # No IPv6 on this host: fall back to IPv4 for "all interfaces".
            if i == len(candidates) - 1 or exc.errno == errno.EADDRINUSE:
                raise
    raise AssertionError("unreachable")


def _request(event: h11.Request) -> Request:
    headers: dict[str, str] = {}
    for raw_name, raw_value in event.headers:
        name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    path = event.target.decode("latin-1").split("?", 1)[0]
    return Request(event.method.decode("latin-1"), path, headers)


class _Idle(Exception):
    """A keep-alive connection sent no new request in time: closed without a fuss."""


class HttpServer:
    """Serves an ``ExporterApp`` from a background thread running an event loop."""

    def __init__(self, app: ExporterApp, address: str, limits: Limits | None = None) -> None:
        self.app = app
        self.limits = limits or Limits()
        self.max_connections = connection_cap(self.limits.max_connections)
        self.socket = listen(address)
        self.port: int = self.socket.getsockname()[1]
        # Written on the loop thread only; scrapes read them (a dict copy is atomic).
        self.open_connections = 0
        self.rejected: dict[str, int] = dict.fromkeys(HTTP_REJECT_REASONS, 0)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="http", daemon=True)
        self._handlers = ThreadPoolExecutor(
            self.limits.handler_threads, thread_name_prefix="http-handler"
        )
        # bcrypt on a thread of its own: a password-guessing flood costs one core at most
        # and never delays a scrape whose credentials are cached.
        self._auth = ThreadPoolExecutor(1, thread_name_prefix="http-auth")
        self._connections: set[asyncio.Task[None]] = set()
        self._retry: asyncio.TimerHandle | None = None
        self._stopping = False
        self._last_limit_log = self._last_fd_log = -LIMIT_LOG_SECONDS
        self._refused_since_log = 0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            future = asyncio.run_coroutine_threadsafe(self._close(), self._loop)
            with contextlib.suppress(Exception):
                future.result(timeout=5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
        self.socket.close()
        self._handlers.shutdown(wait=False, cancel_futures=True)
        self._auth.shutdown(wait=False, cancel_futures=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.add_reader(self.socket.fileno(), self._accept)
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    async def _close(self) -> None:
        self._stopping = True  # connections are aborted, not closed politely: exit fast
        if self._retry is not None:
            self._retry.cancel()
        self._loop.remove_reader(self.socket.fileno())
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------------ accepting

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if exc.errno in _OUT_OF_FDS:
                    self._pause_accepting(exc)
                else:
                    log.warning("accept failed", error=str(exc))
                return
            if self.open_connections >= self.max_connections:
                conn.close()
                self._refuse()
                continue
            self.open_connections += 1
            task = self._loop.create_task(self._connection(conn))
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)

    def _refuse(self) -> None:
        self.rejected["limit"] += 1
        self._refused_since_log += 1
        now = time.monotonic()
        if now - self._last_limit_log >= LIMIT_LOG_SECONDS:
            log.warning(
                "HTTP connection limit reached: closing new connections until others end",
                limit=self.max_connections,
                refused=self._refused_since_log,
                counted_in='celery_exporter_http_connections_rejected_total{reason="limit"}',
            )
            self._last_limit_log = now
            self._refused_since_log = 0

    def _pause_accepting(self, exc: OSError) -> None:
        # Linux keeps reporting the listening socket readable while accept() fails: stop
        # watching it for a second instead of spinning (as asyncio's own servers do).
        fd = self.socket.fileno()
        self._loop.remove_reader(fd)
        self._retry = self._loop.call_later(
            FD_RETRY_SECONDS, self._loop.add_reader, fd, self._accept
        )
        now = time.monotonic()
        if now - self._last_fd_log >= LIMIT_LOG_SECONDS:
            self._last_fd_log = now
            log.warning(
                "out of file descriptors: not accepting HTTP connections for a second",
                error=str(exc),
                open_connections=self.open_connections,
            )

    # ------------------------------------------------------------------ one connection

    async def _connection(self, conn: socket.socket) -> None:
        deadline = self._loop.time() + self.limits.header_timeout
        context = self.app.web.ssl_context  # at accept: a SIGHUP applies to new connections
        writer: asyncio.StreamWriter | None = None
        try:
            try:
                async with asyncio.timeout_at(deadline):
                    reader, writer = await self._open(conn, context)
            except TimeoutError:
                self.rejected["timeout"] += 1
                return
            except ssl.SSLError as exc:  # plain HTTP, no or a wrong client certificate
                self.rejected["tls"] += 1
                log.debug("TLS handshake failed", error=str(exc))
                return
            except OSError:  # the client left before saying anything: nothing to count
                return
            await self._requests(reader, writer, deadline)
        except OSError as exc:  # reset by the peer, broken pipe, TLS alerts
            log.debug("HTTP connection lost", error=str(exc))
        except Exception:  # a bug must cost one connection, never the server
            log.exception("unexpected error on an HTTP connection")
        finally:
            await self._close_connection(conn, writer)
            self.open_connections -= 1

    async def _open(
        self, conn: socket.socket, context: ssl.SSLContext | None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader = asyncio.StreamReader(limit=MAX_HEAD_BYTES)
        protocol = asyncio.StreamReaderProtocol(reader)
        if context is None:
            transport, _ = await self._loop.connect_accepted_socket(lambda: protocol, conn)
        else:
            # The handshake is asyncio's, non-blocking: a slow or plain-HTTP client waits
            # on its own deadline and never stalls accepting (ours fires first).
            transport, _ = await self._loop.connect_accepted_socket(
                lambda: protocol,
                conn,
                ssl=context,
                ssl_handshake_timeout=self.limits.header_timeout + 1,
                ssl_shutdown_timeout=CLOSE_TIMEOUT_SECONDS,
            )
        return reader, asyncio.StreamWriter(transport, protocol, reader, self._loop)

    async def _close_connection(
        self, conn: socket.socket, writer: asyncio.StreamWriter | None
    ) -> None:
        if writer is None:
            conn.close()  # asyncio already dropped any transport it made for it
            return
        if self._stopping:
            writer.transport.abort()
            return
        writer.close()
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_SECONDS):
                await writer.wait_closed()
        except TimeoutError:
            writer.transport.abort()
        except Exception as exc:  # the peer reset it meanwhile
            log.debug("HTTP connection close", error=str(exc))

    async def _requests(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, deadline: float
    ) -> None:
        """Requests on one connection until it closes, errs or idles (keep-alive)."""
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        next_deadline: float | None = deadline
        while True:
            try:
                event = await self._next_event(conn, reader, next_deadline)
            except _Idle:
                return
            except TimeoutError:
                self.rejected["timeout"] += 1
                return
            except h11.RemoteProtocolError as exc:
                if not reader.at_eof():  # else the client gave up halfway: nobody to tell
                    self.rejected["malformed"] += 1
                    await self._send_error(conn, writer, exc.error_status_hint)
                return
            if not isinstance(event, h11.Request):
                return  # the client closed the connection
            request = _request(event)
            reusable = self._no_body(conn)
            response, priority = await self._dispatch(request)
            try:
                if not reusable:
                    response.headers.append(("Connection", "close"))
                self._write(conn, writer, request, response)
            finally:
                if priority is not None:
                    priority.end()
            try:
                async with asyncio.timeout(self.limits.write_timeout):
                    await writer.drain()  # the client reads at its pace, without priority
            except TimeoutError:
                log.debug("HTTP client did not take its response in time", path=request.path)
                return
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()
            next_deadline = None

    async def _next_event(
        self, conn: h11.Connection, reader: asyncio.StreamReader, deadline: float | None
    ) -> object:
        """The next h11 event; the request head must be complete by ``deadline`` (None:
        between keep-alive requests, wait ``idle_timeout`` for a first byte, then start one).
        """
        while (event := conn.next_event()) is h11.NEED_DATA:
            if deadline is None:
                try:
                    async with asyncio.timeout(self.limits.idle_timeout):
                        data = await reader.read(READ_BYTES)
                except TimeoutError:
                    raise _Idle from None
                deadline = self._loop.time() + self.limits.header_timeout
            else:
                async with asyncio.timeout_at(deadline):
                    data = await reader.read(READ_BYTES)
            conn.receive_data(data)
        return event

    @staticmethod
    def _no_body(conn: h11.Connection) -> bool:
        """True when the request ended with its head (GET, HEAD): the connection can be
        reused. A body is never read; the response then closes the connection."""
        try:
            return type(conn.next_event()) is h11.EndOfMessage
        except h11.RemoteProtocolError:
            return False

    async def _dispatch(self, request: Request) -> tuple[Response, RequestPriority | None]:
        """The response, and the priority it holds: end it once the response is written."""
        app = self.app
        try:
            response = app.early(request)
            if response is not None:
                return response, None
            allowed = app.cached_auth(request)
            if allowed is None:
                allowed = await self._loop.run_in_executor(self._auth, app.verify_auth, request)
            if not allowed:
                return app.unauthorized(request), None
            priority = app.prioritised(request)
            if priority is not None:
                priority.begin()
            try:
                response = await self._loop.run_in_executor(self._handlers, app.serve, request)
            except BaseException:
                if priority is not None:
                    priority.end()
                raise
            return response, priority
        except Exception:  # a bug answers 500 with no detail; the log has the traceback
            log.exception("error while answering an HTTP request", path=request.path)
            return Response(500, b"internal error\n"), None

    @staticmethod
    def _write(
        conn: h11.Connection, writer: asyncio.StreamWriter, request: Request, response: Response
    ) -> None:
        """Hand the response to the transport (the kernel takes what fits at once)."""
        headers = [
            ("Content-Type", response.content_type),
            ("Content-Length", str(len(response.body))),
            *response.headers,
        ]
        reason = http.HTTPStatus(response.status).phrase
        head = h11.Response(status_code=response.status, headers=headers, reason=reason)
        writer.write(conn.send(head))
        if request.method != "HEAD" and response.body:
            writer.writelines(conn.send_with_data_passthrough(h11.Data(data=response.body)))
        writer.write(conn.send(h11.EndOfMessage()))

    @staticmethod
    async def _send_error(conn: h11.Connection, writer: asyncio.StreamWriter, status: int) -> None:
        body = b"request header fields too large\n" if status == 431 else b"bad request\n"
        headers = [
            ("Content-Type", TEXT_UTF8),
            ("Content-Length", str(len(body))),
            ("Connection", "close"),
        ]
        try:
            writer.write(conn.send(h11.Response(status_code=status, headers=headers)))
            writer.write(conn.send(h11.Data(data=body)))
            writer.write(conn.send(h11.EndOfMessage()))
            async with asyncio.timeout(CLOSE_TIMEOUT_SECONDS):
                await writer.drain()
        except (h11.LocalProtocolError, OSError):  # TimeoutError is an OSError
            pass

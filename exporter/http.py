"""HTTP: ``/metrics``, ``/healthz``, ``/readyz``, ``/api/status`` and the ``/`` status page.

A small WSGI application served by the standard library's threaded WSGI server (the same
server prometheus_client uses), with optional basic auth and TLS from the web config file.
The TLS handshake runs in the request's thread, so a slow or plain-HTTP client cannot stall
the accept loop. ``/healthz`` stays open without credentials so liveness probes need none;
it reveals nothing but "the process runs".
"""

from __future__ import annotations

import base64
import binascii
import errno
import gzip
import socket
import ssl
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import orjson
import structlog

from exporter.webconfig import WebConfig

log = structlog.get_logger(__name__)

StartResponse = Callable[..., Any]
OPENMETRICS = "application/openmetrics-text"


@dataclass
class Endpoints:
    """What the routes serve; each callable is cheap and never touches the network."""

    metrics_text: Callable[[], str]
    metrics_openmetrics: Callable[[], bytes]
    openmetrics_content_type: str
    text_content_type: str
    status: Callable[[], dict[str, Any]]
    ready: Callable[[], tuple[bool, dict[str, Any]]]
    index_html: bytes


class ExporterApp:
    """The WSGI application."""

    def __init__(self, endpoints: Endpoints, web: WebConfig) -> None:
        self.endpoints = endpoints
        self.web = web
        self.routes: dict[str, Callable[[dict[str, Any]], tuple[str, str, bytes]]] = {
            "/metrics": self._metrics,
            "/healthz": lambda _: ("200 OK", "text/plain; charset=utf-8", b"ok\n"),
            "/readyz": self._readyz,
            "/api/status": self._status,
            "/": lambda _: ("200 OK", "text/html; charset=utf-8", endpoints.index_html),
        }

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        route = self.routes.get(path)
        if route is None:
            status, ctype, body = "404 Not Found", "text/plain; charset=utf-8", b"not found\n"
        elif environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
            status, ctype, body = "405 Method Not Allowed", "text/plain", b"GET or HEAD only\n"
        elif path != "/healthz" and not self._authorized(environ):
            return self._unauthorized(start_response)
        else:
            status, ctype, body = route(environ)
        return self._respond(environ, start_response, status, ctype, body)

    def _respond(
        self,
        environ: dict[str, Any],
        start_response: StartResponse,
        status: str,
        ctype: str,
        body: bytes,
    ) -> list[bytes]:
        headers = [("Content-Type", ctype), *self.web.headers.items()]
        if len(body) > 1024 and "gzip" in environ.get("HTTP_ACCEPT_ENCODING", ""):
            body = gzip.compress(body, compresslevel=1)
            headers.append(("Content-Encoding", "gzip"))
        headers.append(("Content-Length", str(len(body))))
        start_response(status, headers)
        return [b""] if environ.get("REQUEST_METHOD") == "HEAD" else [body]

    def _authorized(self, environ: dict[str, Any]) -> bool:
        auth = self.web.basic_auth
        if auth is None:
            return True
        header = environ.get("HTTP_AUTHORIZATION", "")
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, sep, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return bool(sep) and auth.check(user, password)

    @staticmethod
    def _unauthorized(start_response: StartResponse) -> Iterable[bytes]:
        body = b"unauthorized\n"
        start_response(
            "401 Unauthorized",
            [
                ("Content-Type", "text/plain; charset=utf-8"),
                ("WWW-Authenticate", 'Basic realm="celery-observatory-exporter"'),
                ("Content-Length", str(len(body))),
            ],
        )
        return [body]

    def _metrics(self, environ: dict[str, Any]) -> tuple[str, str, bytes]:
        endpoints = self.endpoints
        if OPENMETRICS in environ.get("HTTP_ACCEPT", ""):
            return "200 OK", endpoints.openmetrics_content_type, endpoints.metrics_openmetrics()
        return "200 OK", endpoints.text_content_type, endpoints.metrics_text().encode()

    def _readyz(self, _: dict[str, Any]) -> tuple[str, str, bytes]:
        ready, detail = self.endpoints.ready()
        status = "200 OK" if ready else "503 Service Unavailable"
        return status, "application/json", orjson.dumps({"ready": ready, **detail})

    def _status(self, _: dict[str, Any]) -> tuple[str, str, bytes]:
        return "200 OK", "application/json", orjson.dumps(self.endpoints.status())


class RequestPriority:
    """Counts requests in flight; ``on_change(True)`` when the first starts, ``False`` at the
    end of the last. The event source parks its processor meanwhile, so a scrape gets the
    GIL instead of sharing it with decoding (the socket reader keeps draining: no loss)."""

    def __init__(self, on_change: Callable[[bool], None]) -> None:
        self.on_change = on_change
        self._active = 0
        self._lock = threading.Lock()

    def begin(self) -> None:
        with self._lock:
            self._active += 1
            if self._active == 1:
                self.on_change(True)

    def end(self) -> None:
        with self._lock:
            self._active -= 1
            if self._active == 0:
                self.on_change(False)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http request", request=format % args)


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True
    ssl_context: ssl.SSLContext | None = None
    priority: RequestPriority | None = None

    def process_request(self, request: Any, client_address: Any) -> None:
        # From accept to the last byte written, event processing yields to the request.
        if self.priority is not None:
            self.priority.begin()
        try:
            super().process_request(request, client_address)
        except BaseException:
            if self.priority is not None:
                self.priority.end()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            if self.priority is not None:
                self.priority.end()

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.ssl_context is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(10)
        try:
            tls = self.ssl_context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            log.debug("TLS handshake failed", client=client_address[0], error=str(exc))
            return
        try:
            super().finish_request(tls, client_address)
        finally:
            tls.close()


class _ThreadingServer6(_ThreadingServer):
    address_family = socket.AF_INET6

    def server_bind(self) -> None:
        # On the "all interfaces" socket accept IPv4 too, as Go exporters do.
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def parse_listen_address(address: str) -> tuple[str, int]:
    """``:9808``, ``0.0.0.0:9808``, ``[::1]:9808`` -> (host, port); '' means all interfaces."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"invalid listen address {address!r}: expected [host]:port")
    return host.strip("[]"), int(port)


class HttpServer:
    """Serves an ``ExporterApp`` in a background thread."""

    def __init__(
        self,
        app: ExporterApp,
        address: str,
        ssl_context: ssl.SSLContext | None,
        priority: RequestPriority | None = None,
    ) -> None:
        host, port = parse_listen_address(address)
        candidates = [host] if host else ["::", "0.0.0.0"]
        for i, candidate in enumerate(candidates):
            server_class = _ThreadingServer6 if ":" in candidate else _ThreadingServer
            try:
                self.server = make_server(
                    candidate, port, app, server_class=server_class, handler_class=_QuietHandler
                )
                break
            except OSError as exc:
                # No IPv6 on this host: fall back to IPv4 for "all interfaces".
                if i == len(candidates) - 1 or exc.errno == errno.EADDRINUSE:
                    raise
        self.server.ssl_context = ssl_context
        self.server.priority = priority
        self.port: int = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

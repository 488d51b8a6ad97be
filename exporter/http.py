"""What the HTTP routes answer: ``/metrics``, ``/healthz``, ``/readyz``, ``/api/status``, ``/``.

The application is plain functions of a parsed request; the server (``exporter.httpserver``)
owns sockets, TLS and timeouts. A request passes three steps, so that the cheap ones never
wait behind the expensive ones:

1. ``early``: routing, methods and ``/healthz`` (open without credentials: probes need none,
   and it reveals nothing but "the process runs"), on the server's event loop;
2. ``cached_auth`` / ``verify_auth``: basic auth from the web config; a cache hit is a
   SHA-256 on the event loop, a miss is bcrypt on a thread of its own;
3. ``serve``: the response, on a handler thread.

Only an authorised ``/metrics`` asks the event source to yield (``RequestPriority``), from
the moment its credentials pass until its response is handed to the socket (the render and
the thread hand-offs around it, where a busy decoder would otherwise hold the GIL): an idle
connection, a 401 or a 404 never slows ingest, nor does a client that reads slowly.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog

from exporter.negotiate import choose_encoding, choose_format
from exporter.webconfig import WebConfig, WebConfigError, load_web_config

log = structlog.get_logger(__name__)

TEXT_UTF8 = "text/plain; charset=utf-8"
GZIP_MIN_BYTES = 1024  # smaller bodies are not worth compressing
REALM = 'Basic realm="celery-observatory-exporter"'


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # without the query string
    headers: Mapping[str, str]  # lower-case names; repeated headers joined with ", "

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = TEXT_UTF8
    headers: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Endpoints:
    """What the routes serve; each callable is cheap and never touches the network.

    ``metrics(fmt)`` renders the exposition in ``fmt``, ``"openmetrics"`` or ``"text"``
    (chosen here from Accept), and ``content_types[fmt]`` is its Content-Type.
    """

    metrics: Callable[[str], bytes]
    content_types: Mapping[str, str]
    status: Callable[[], dict[str, Any]]
    ready: Callable[[], tuple[bool, dict[str, Any]]]
    index_html: bytes


class RequestPriority:
    """Counts renders in flight; ``on_change(True)`` when the first starts, ``False`` at the
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


def _credentials(request: Request) -> tuple[str, str] | None:
    scheme, _, encoded = (request.header("authorization") or "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


class ExporterApp:
    """Routes, basic auth and content negotiation. ``web`` may be replaced at any time
    (SIGHUP): each request reads it once."""

    def __init__(
        self,
        endpoints: Endpoints,
        web: WebConfig,
        priority: RequestPriority | None = None,
    ) -> None:
        self.endpoints = endpoints
        self.web = web
        self.priority = priority
        self.routes: dict[str, Callable[[Request], Response]] = {
            "/metrics": self._metrics,
            "/readyz": self._readyz,
            "/api/status": self._status,
            "/": lambda _: Response(200, endpoints.index_html, "text/html; charset=utf-8"),
        }

    # ------------------------------------------------------------------ the three steps

    def early(self, request: Request) -> Response | None:
        """A response that needs neither credentials nor work, or None to go on."""
        if request.path != "/healthz" and request.path not in self.routes:
            return self._finish(request, Response(404, b"not found\n"))
        if request.method not in ("GET", "HEAD"):
            response = Response(405, b"GET or HEAD only\n", headers=[("Allow", "GET, HEAD")])
            return self._finish(request, response)
        if request.path == "/healthz":
            return self._finish(request, Response(200, b"ok\n"))
        return None

    def cached_auth(self, request: Request) -> bool | None:
        """True/False when known without bcrypt; None when ``verify_auth`` must decide."""
        auth = self.web.basic_auth
        if auth is None:
            return True
        credentials = _credentials(request)
        if credentials is None:
            return False
        return auth.cached(*credentials)

    def verify_auth(self, request: Request) -> bool:
        """The bcrypt check (slow on purpose); run it off the event loop."""
        auth = self.web.basic_auth
        credentials = _credentials(request)
        if auth is None or credentials is None:
            return auth is None
        return auth.verify(*credentials)

    def unauthorized(self, request: Request) -> Response:
        response = Response(401, b"unauthorized\n", headers=[("WWW-Authenticate", REALM)])
        return self._finish(request, response)

    def prioritised(self, request: Request) -> RequestPriority | None:
        """The priority an authorised request takes: only ``/metrics`` has one."""
        return self.priority if request.path == "/metrics" else None

    def serve(self, request: Request) -> Response:
        """The response of an authorised request to a known route."""
        return self._finish(request, self.routes[request.path](request))

    # ------------------------------------------------------------------ routes

    def _metrics(self, request: Request) -> Response:
        fmt = choose_format(request.header("accept"))
        if fmt is None:
            return Response(406, b"acceptable formats: OpenMetrics 1.0.0, text 0.0.4\n")
        response = Response(200, self.endpoints.metrics(fmt), self.endpoints.content_types[fmt])
        response.headers.append(("Vary", "Accept, Accept-Encoding"))
        return response

    def _readyz(self, _: Request) -> Response:
        ready, detail = self.endpoints.ready()
        body = orjson.dumps({"ready": ready, **detail})
        return Response(200 if ready else 503, body, "application/json")

    def _status(self, _: Request) -> Response:
        return Response(200, orjson.dumps(self.endpoints.status()), "application/json")

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _encode(request: Request, response: Response) -> Response:
        """gzip when Accept-Encoding accepts it (and it pays, or identity is refused)."""
        encoding = choose_encoding(request.header("accept-encoding"))
        big = len(response.body) > GZIP_MIN_BYTES
        if encoding.gzip and (big or not encoding.identity):
            response.body = gzip.compress(response.body, compresslevel=1)
            response.headers.append(("Content-Encoding", "gzip"))
        return response

    def _finish(self, request: Request, response: Response) -> Response:
        if response.status == 200 and response.body:
            response = self._encode(request, response)
        response.headers.extend(self.web.headers.items())
        return response


def reload_web_config(path: str | None, current: WebConfig) -> WebConfig:
    """SIGHUP: the web config file read anew, or ``current`` when it is invalid (or there
    is none). Always one log line saying which."""
    if not path:
        log.info("SIGHUP received; no --web.config-file to reload")
        return current
    try:
        web = load_web_config(path)
    except WebConfigError as exc:
        log.error("web config not reloaded: keeping the previous one", error=str(exc))
        return current
    log.info("web config reloaded", path=str(path), **web.summary())
    return web

"""The HTTP server on real sockets: content negotiation (Prometheus' Accept header, q-values,
gzip), connections that do not behave (idle, trickling, past the cap), and scrape priority
only for an authorised render."""

from __future__ import annotations

import base64
import contextlib
import gzip
import http.client
import json
import os
import select
import socket
import threading
import time
import urllib.request
from pathlib import Path

import bcrypt
import orjson
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om

from exporter.http import Endpoints, ExporterApp, RequestPriority
from exporter.httpserver import HEADER_TIMEOUT_SECONDS, RESERVED_FDS, HttpServer
from exporter.negotiate import PROMETHEUS_ACCEPT
from exporter.webconfig import BasicAuth, WebConfig
from tests.support.exporter import ExporterProcess, parse, publish_corpus
from tests.support.procs import wait_until

CORPUS = [
    json.loads(line)
    for line in (Path(__file__).parent / "corpus" / "celery-5.7-events.jsonl")
    .read_text()
    .splitlines()
]


def fetch(url: str, **headers: str) -> tuple[dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        return dict(response.headers), response.read()


def test_openmetrics_and_text_agree_and_gzip_is_honoured(procs, redis_server) -> None:  # type: ignore[no-untyped-def]
    exporter = ExporterProcess(procs, redis_server.url(0)).start()
    publish_corpus(redis_server.client(), CORPUS)
    text = exporter.wait_for(lambda s: s.total("celery_task_succeeded_total") == 3)

    headers, body = fetch(exporter.url(), Accept="application/openmetrics-text; version=1.0.0")
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert body.decode().endswith("# EOF\n")
    families = {f.name: f for f in parse_om(body.decode())}
    succeeded = {
        frozenset(s.labels.items()): s.value
        for s in families["celery_task_succeeded"].samples
        if s.name == "celery_task_succeeded_total"
    }
    assert succeeded == text.series("celery_task_succeeded_total")
    assert families["celery_task_runtime"].type == "histogram"

    headers, body = fetch(exporter.url(), **{"Accept-Encoding": "gzip"})
    assert headers["Content-Encoding"] == "gzip"
    unzipped = parse(gzip.decompress(body).decode())
    assert unzipped.series("celery_task_failed_total") == text.series("celery_task_failed_total")

    status, _ = exporter.get("/nope")
    assert status == 404


# --------------------------------------------------------------------------- negotiation


def request(port: int, method: str = "GET", path: str = "/metrics", **headers: str):  # type: ignore[no-untyped-def]
    """(status, headers, body) over a plain http.client connection (HEAD needs it)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, headers=headers)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def test_prometheus_accept_header_selects_openmetrics_and_q0_excludes(procs, redis_server) -> None:  # type: ignore[no-untyped-def]
    exporter = ExporterProcess(procs, redis_server.url(0)).start()
    port = exporter.port

    status, headers, body = request(port, Accept=PROMETHEUS_ACCEPT, **{"Accept-Encoding": "gzip"})
    assert status == 200
    assert headers["Content-Type"] == "application/openmetrics-text; version=1.0.0; charset=utf-8"
    assert headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(body).decode().endswith("# EOF\n")

    # Listed, but with q=0: not acceptable. A substring match would pick them.
    _, headers, body = request(
        port,
        Accept="application/openmetrics-text;q=0, text/plain;version=0.0.4",
        **{"Accept-Encoding": "gzip;q=0"},
    )
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert "Content-Encoding" not in headers
    assert parse(body.decode()).value("celery_exporter_broker_up") == 1
    assert request(port, Accept="text/plain;q=0")[0] == 406  # refuses the only fallback

    for accept in ("text/plain", "*/*", "application/json"):
        _, headers, _ = request(port, Accept=accept)
        assert headers["Content-Type"].startswith("text/plain; version=0.0.4"), accept
    _, headers, _ = request(port)  # no Accept at all
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")

    status, headers, body = request(port, "HEAD", Accept=PROMETHEUS_ACCEPT)
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 1000
    assert headers["Content-Type"].startswith("application/openmetrics-text")


# --------------------------------------------------------------------------- connections


def proc_status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def still_open(sock: socket.socket) -> bool:
    """The server has not closed it (no EOF or reset waiting), without blocking."""
    poller = select.poll()  # not select(): these fds go past 1024
    poller.register(sock, select.POLLIN)
    if not poller.poll(0):
        return True  # nothing to read: not even an EOF
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except OSError:
        return False


def test_idle_connections_hold_no_threads_and_a_scrape_still_answers(procs, redis_server) -> None:  # type: ignore[no-untyped-def]
    exporter = ExporterProcess(procs, redis_server.url(0)).start()
    pid = exporter.process.pid
    exporter.scrape()  # the handler threads a scrape needs exist from here on
    threads_before, fds_before = proc_status(pid, "Threads"), open_fds(pid)
    idle = []
    try:
        for _ in range(2000):
            idle.append(socket.create_connection(("127.0.0.1", exporter.port), timeout=5))
        wait_until(lambda: open_fds(pid) >= fds_before + 2000, timeout=20,
                   message="the exporter accepted 2,000 connections")  # fmt: skip
        threads = proc_status(pid, "Threads")
        # The old server had a thread per connection: 2,006 here.
        assert threads <= threads_before + 2, (threads_before, threads)
        assert exporter.scrape().value("celery_exporter_broker_up") == 1
        assert sum(still_open(s) for s in idle) == 2000  # answered while they were held
    finally:
        for sock in idle:
            sock.close()


def test_a_client_trickling_its_request_head_is_cut_at_the_deadline(procs, redis_server) -> None:  # type: ignore[no-untyped-def]
    exporter = ExporterProcess(procs, redis_server.url(0)).start()
    head = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-Slow: " + b"a" * 200
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", exporter.port), timeout=5) as slow:
        sent = 0
        # One byte every 0.2 s: a per-read timeout would never fire.
        while still_open(slow) and time.monotonic() - started < HEADER_TIMEOUT_SECONDS + 10:
            try:
                slow.send(head[sent % len(head) : sent % len(head) + 1])
            except OSError:
                break
            sent += 1
            time.sleep(0.2)
        cut_after = time.monotonic() - started
    assert sent > HEADER_TIMEOUT_SECONDS * 3  # it kept sending until it was cut
    assert HEADER_TIMEOUT_SECONDS - 1 < cut_after < HEADER_TIMEOUT_SECONDS + 5, cut_after
    scrape = exporter.scrape()
    assert scrape.value("celery_exporter_http_connections_rejected_total", reason="timeout") == 1


class FdLimitedExporter(ExporterProcess):
    """The exporter under ``ulimit -n``: its connection cap is that minus the reserve."""

    def __init__(self, *args, nofile: int, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.nofile = nofile

    def argv(self) -> list[str]:
        return ["bash", "-c", f'ulimit -n {self.nofile} && exec "$@"', "exporter", *super().argv()]


def test_the_connection_cap_logs_one_line_counts_and_recovers(procs, redis_server) -> None:  # type: ignore[no-untyped-def]
    nofile = 160
    cap = nofile - RESERVED_FDS
    exporter = FdLimitedExporter(procs, redis_server.url(0), nofile=nofile).start()
    pid = exporter.process.pid
    fds_before = open_fds(pid)
    held = []
    try:
        for _ in range(cap + 50):
            held.append(socket.create_connection(("127.0.0.1", exporter.port), timeout=5))
        wait_until(lambda: sum(not still_open(s) for s in held) == 50, timeout=20,
                   message="the 50 connections past the cap closed")  # fmt: skip
        with pytest.raises(OSError):  # ConnectionResetError, RemoteDisconnected
            request(exporter.port, path="/healthz")
    finally:
        for sock in held:
            sock.close()
    wait_until(lambda: open_fds(pid) <= fds_before, message="the held connections closed")
    scrape = exporter.scrape()  # works again
    assert scrape.value("celery_exporter_http_connections_rejected_total", reason="limit") == 51
    lines = [ln for ln in exporter.log_text().splitlines() if "connection limit reached" in ln]
    assert len(lines) == 1, lines  # one line, not one per connection
    assert f'"limit":{cap}' in lines[0]


def _served_keep_alive(port: int) -> http.client.HTTPConnection | None:
    """A connection that got an answer and stays open (keep-alive), or None if refused."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/healthz")
        response = conn.getresponse()
        response.read()
        return conn if response.status == 200 else None
    except (OSError, http.client.HTTPException):
        conn.close()
        return None


def test_the_max_connections_flag_sets_the_cap(procs, redis_server) -> None:  # type: ignore[no-untyped-def]
    # A header deadline longer than the wait below: an extra connection that was accepted
    # stays open through it rather than being cut for silence.
    args = ["--web.max-connections", "4", "--web.read-header-timeout", "60"]
    exporter = ExporterProcess(procs, redis_server.url(0), args=args).start()
    # Four connections served and kept alive hold the four slots. The readiness checks'
    # connections may still hold a slot for a moment (the server closes them after the
    # client), so a refused one is tried again.
    held = [
        wait_until(lambda: _served_keep_alive(exporter.port), message=f"keep-alive {i + 1}")
        for i in range(4)
    ]
    extra = [socket.create_connection(("127.0.0.1", exporter.port), timeout=5) for _ in range(2)]
    try:
        wait_until(lambda: not any(still_open(s) for s in extra), timeout=20,
                   message="the 2 connections past the cap of 4 closed")  # fmt: skip
        assert all(still_open(conn.sock) for conn in held)  # type: ignore[arg-type]
    finally:
        for sock in extra:
            sock.close()
        for conn in held:
            conn.close()
    # Once the server has seen the held connections close, scrapes get a slot again.
    scrape = wait_until(exporter.scrape, message="a scrape after the held connections closed")
    assert scrape.value("celery_exporter_http_connections_rejected_total", reason="limit") >= 2


# --------------------------------------------------------------------------- priority


class Recorder:
    def __init__(self) -> None:
        self.calls: list[bool] = []

    def __call__(self, active: bool) -> None:
        self.calls.append(active)


def test_only_an_authorised_metrics_render_takes_priority(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """An idle connection, a 401 and a 404 never park event processing; an authorised
    /metrics does, around its render, and lets go before the client has read the body."""
    recorder = Recorder()
    body = b"x" * (16 * 1024 * 1024)  # far more than the socket buffers hold
    during_render: list[list[bool]] = []

    def render(fmt: str) -> bytes:
        during_render.append(list(recorder.calls))
        return body

    endpoints = Endpoints(
        metrics=render,
        content_types={"text": "text/plain; version=0.0.4", "openmetrics": "x"},
        status=dict,
        ready=lambda: (True, {}),
        index_html=b"<html></html>",
    )
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4))
    web = WebConfig(basic_auth=BasicAuth({"prometheus": hashed}))
    server = HttpServer(ExporterApp(endpoints, web, RequestPriority(recorder)), "127.0.0.1:0")
    server.start()
    try:
        idle = socket.create_connection(("127.0.0.1", server.port))
        assert request(server.port)[0] == 401
        assert request(server.port, path="/nope")[0] == 404
        assert request(server.port, path="/healthz")[0] == 200
        assert request(server.port, path="/api/status")[0] == 401
        # Accepted before the requests above were answered (one listen queue), and idle.
        assert recorder.calls == []

        auth = base64.b64encode(b"prometheus:pw").decode()
        with socket.socket() as client:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            client.connect(("127.0.0.1", server.port))
            client.sendall(
                f"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            # Released while the client has not read a byte of the 16 MB body.
            wait_until(lambda: recorder.calls == [True, False], timeout=10,
                       message="priority taken and released")  # fmt: skip
            received = bytearray()
            while chunk := client.recv(1 << 20):
                received += chunk
        assert during_render == [[True]]
        assert received.endswith(body) and received.startswith(b"HTTP/1.1 200 OK")
        idle.close()
    finally:
        server.stop()


def test_connections_that_come_and_go_do_not_hold_up_ingest(procs, redis_server) -> None:  # type: ignore[no-untyped-def]
    """Connect-hold-close loops (a load balancer's probe, a port scanner) against the
    exporter while a heavy stream of events arrives: every event is counted in time.
    (The precise proof that such connections never park ingest is the test above.)"""
    exporter = ExporterProcess(procs, redis_server.url(0)).start()
    stop = threading.Event()

    def hold_and_close(hold: float) -> None:
        while not stop.is_set():
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", exporter.port), timeout=5),
            ):
                time.sleep(hold)

    holders = [threading.Thread(target=hold_and_close, args=(h,), daemon=True)
               for h in (0.05, 0.3)]  # fmt: skip
    for holder in holders:
        holder.start()
    try:
        client = redis_server.client()
        messages, batch = 2000, 50
        pipe = client.pipeline(transaction=False)
        for i in range(messages):
            pipe.publish("/0.celeryev/worker.multi", heartbeats(i * batch, batch))
            if i % 100 == 99:
                pipe.execute()
        pipe.execute()
        exporter.wait_for(
            lambda s: (
                s.value("celery_exporter_events_total", type="worker-heartbeat") == messages * batch
            ),
            timeout=60,
            message="every heartbeat counted while connections come and go",
        )
    finally:
        stop.set()
        for holder in holders:
            holder.join(timeout=10)


def heartbeats(first: int, count: int) -> bytes:
    """One envelope carrying ``count`` heartbeats (a list body, like task.multi)."""
    events = [{"type": "worker-heartbeat", "hostname": "probe@test", "timestamp": time.time(),
               "freq": 2.0, "active": 0, "processed": first + i} for i in range(count)]  # fmt: skip
    return orjson.dumps(
        {
            "body": base64.b64encode(orjson.dumps(events)).decode(),
            "content-type": "application/json",
            "content-encoding": "utf-8",
            "headers": {},
            "properties": {"body_encoding": "base64"},
        }
    )

"""The workload API (the real ``workload-api`` under gunicorn) on real Redis and a real worker.

Status mapping, every bad input (400/404/413/422 with a JSON error), the HTTP edges gunicorn
meets first (malformed chunked bodies, oversized lines and headers: JSON too), the URL policy
with every spelling of a loopback address, admission control (429 + Retry-After), a
hypothesis fuzz of request bodies that must never produce a 5xx, and 503 when Redis is lost.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.procs import CeleryWorker, ProcessTracker, RedisServer, wait_until
from tests.support.workload_servers import LocalHttpServer, Reply, png_bytes
from tests.support.workload_stack import base_env, client_app, start_api

RESULT_EXPIRES = 600


@dataclass
class Api:
    base: str
    env: dict[str, str]
    redis: RedisServer
    http: LocalHttpServer

    def post(self, path: str, body: Any = None, **kwargs: Any) -> requests.Response:
        if body is not None:
            kwargs["json"] = body
        return requests.post(self.base + path, timeout=10, **kwargs)

    def get(self, path: str) -> requests.Response:
        return requests.get(self.base + path, timeout=10)

    def submit(self, path: str, body: Any) -> str:
        response = self.post(path, body)
        assert response.status_code == 202, response.text
        return response.json()["job_id"]

    def status(self, job_id: str) -> dict[str, Any]:
        response = self.get(f"/status/{job_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def wait_status(self, job_id: str, wanted: str, timeout: float = 20) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            body = self.status(job_id)
            return body if body["status"] == wanted else None

        return wait_until(reached, timeout=timeout, interval=0.05, message=f"status {wanted}")


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Api]:
    tmp = tmp_path_factory.mktemp("workload-api")
    tracker = ProcessTracker(tmp / "logs")
    http = LocalHttpServer().start()
    failures_before = request.session.testsfailed
    try:
        server = RedisServer(tracker, tmp / "redis").start()
        env = base_env(
            server,
            tmp,
            # One exact second between a failure and its retry: "retrying" is observable.
            WORKLOAD_RETRY_BASE="1",
            WORKLOAD_RETRY_BACKOFF_MAX="1",
            WORKLOAD_RETRY_JITTER="false",
            WORKLOAD_RESULT_EXPIRES=str(RESULT_EXPIRES),
            WORKLOAD_REPORT_MAX_ROWS="5000",
            WORKLOAD_API_MAX_BODY_BYTES="4096",
        )
        # No consumer for "email": those jobs stay queued.
        worker = CeleryWorker(tracker, env, queues=["cpu", "io", "default", "dead_letter"])
        worker.start(wait=False)
        base = start_api(tracker, env)
        worker.wait_ready()
        yield Api(base, env, server, http)
    finally:
        if request.session.testsfailed > failures_before:
            print(tracker.logs())
        tracker.stop_all()
        http.stop()


# --- the happy paths and the status mapping -------------------------------------------------


def test_a_report_job_goes_from_submitted_to_succeeded_with_its_result(api: Api) -> None:
    response = api.post("/report", {"user_id": 5, "data": {"rows": [1, 2, 3]}})
    assert response.status_code == 202
    job_id = response.json()["job_id"]
    assert response.headers["Location"] == f"/status/{job_id}"
    body = api.wait_status(job_id, "succeeded")
    assert body["result"]["stats"]["sum"] == 6
    ttl = api.redis.client().ttl(f"workload:api:job:{job_id}")
    assert RESULT_EXPIRES - 30 < ttl <= RESULT_EXPIRES


def test_a_job_nobody_consumes_is_queued(api: Api) -> None:
    job_id = api.submit("/email", {"address": "queued@example.com"})
    assert api.status(job_id)["status"] == "queued"


def test_a_running_job_is_started(api: Api) -> None:
    gate = threading.Event()
    url = api.http.route("/held.png", Reply(200, png_bytes(32, 32), "image/png", gate=gate))
    job_id = api.submit("/thumb", {"url": url})
    try:
        api.wait_status(job_id, "started")
    finally:
        gate.set()
    assert api.wait_status(job_id, "succeeded")["result"]["size"] == [32, 32]


def test_a_job_between_attempts_is_retrying_with_the_last_error(api: Api) -> None:
    url = api.http.route("/retry.png", Reply(503), Reply(200, png_bytes(16, 16), "image/png"))
    job_id = api.submit("/thumb", {"url": url})
    body = api.wait_status(job_id, "retrying")
    assert body["error"]["type"] == "ImageTransientError"
    api.wait_status(job_id, "succeeded")


def test_a_failed_job_reports_its_error_and_dead_letter(api: Api) -> None:
    url = api.http.route("/absent.png", Reply(404))
    job_id = api.submit("/thumb", {"url": url})
    body = api.wait_status(job_id, "failed")
    assert body["error"]["type"] == "ImageDownloadError"
    assert "404" in body["error"]["message"]
    wait_until(lambda: api.status(job_id)["dead_letter"], timeout=10, message="dead letter")


# --- bad input ------------------------------------------------------------------------------

JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize(
    ("path", "kwargs", "status", "error"),
    [
        ("/report", {"data": "user_id=1"}, 400, "must be JSON"),
        ("/report", {"data": "{not json", "headers": JSON}, 400, "not valid JSON"),
        ("/report", {"data": b"\xff\xfe\xfa", "headers": JSON}, 400, "not valid JSON"),
        ("/report", {"data": "", "headers": JSON}, 400, "not valid JSON"),
        ("/report", {"data": "[" * 5000 + "]" * 5000, "headers": JSON}, 413, ""),
        ("/report", {"data": "[" * 2000 + "]" * 2000, "headers": JSON}, 400, "not valid JSON"),
        ("/report", {"json": [1, 2]}, 422, "JSON object"),
        ("/report", {"json": {}}, 422, "missing field(s): user_id"),
        ("/report", {"json": {"user_id": "7"}}, 422, "user_id must be a positive integer"),
        ("/report", {"json": {"user_id": True}}, 422, "user_id must be a positive integer"),
        ("/report", {"json": {"user_id": 0}}, 422, "user_id must be a positive integer"),
        ("/report", {"json": {"user_id": 1, "data": []}}, 422, "data must be a JSON object"),
        ("/report", {"json": {"user_id": 1, "data": {"rows": ["a"]}}}, 422, "finite numbers"),
        ("/report", {"json": {"user_id": 1, "data": {"size": 10**6}}}, 422, "data.size"),
        ("/report", {"json": {"user_id": 1, "extra": 1}}, 422, "unknown field(s): extra"),
        ("/email", {"json": {}}, 422, "missing field(s): address"),
        ("/email", {"json": {"address": 42}}, 422, "non-empty string"),
        ("/email", {"json": {"address": "no-at-sign"}}, 422, "invalid email address"),
        ("/email", {"json": {"address": "a@b@c.com"}}, 422, "invalid email address"),
        ("/email", {"json": {"address": "x" * 300 + "@example.com"}}, 422, "longer than"),
        ("/thumb", {"json": {"url": None}}, 422, "non-empty string"),
        ("/thumb", {"json": {"url": "ftp://127.0.0.1/a.png"}}, 422, "scheme 'ftp'"),
        ("/thumb", {"json": {"url": "javascript:alert(1)"}}, 422, "scheme 'javascript'"),
        ("/thumb", {"json": {"url": "http://example.com/a.png"}}, 422, "WORKLOAD_ALLOWED_HOSTS"),
        ("/thumb", {"json": {"url": "http://u:p@127.0.0.1/a.png"}}, 422, "credentials"),
        ("/thumb", {"json": {"url": "http://127.0.0.1:99999/"}}, 422, "malformed"),
        ("/thumb", {"json": {"url": "http://127.0.0.1/a b"}}, 422, "whitespace"),
        ("/thumb", {"json": {"url": "http:///nohost"}}, 422, "no host"),
    ],
)
def test_bad_input_gets_a_json_error(
    api: Api, path: str, kwargs: dict[str, Any], status: int, error: str
) -> None:
    response = api.post(path, **kwargs)
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    assert error in response.json()["error"]
    assert response.json()["status"] == status


@pytest.mark.parametrize(
    ("job_id", "status"),
    [
        ("not-a-uuid", 400),
        ("00000000-0000-0000-0000-00000000000g", 400),
        ("AAAAAAAA-0000-4000-8000-000000000000", 400),
        ("00000000-0000-4000-8000-000000000000", 404),
        # "$" would match before a final newline; the id check must not.
        ("00000000-0000-4000-8000-000000000000\n", 400),
        ("\n00000000-0000-4000-8000-000000000000", 400),
    ],
)
def test_status_of_a_malformed_or_unknown_id(api: Api, job_id: str, status: int) -> None:
    response = api.get(f"/status/{quote(job_id, safe='-')}")
    assert response.status_code == status
    assert "error" in response.json()


def test_a_job_id_with_a_trailing_newline_is_not_the_job(api: Api) -> None:
    job_id = api.submit("/email", {"address": "newline@example.com"})
    assert api.get(f"/status/{job_id}").status_code == 200
    response = api.get(f"/status/{job_id}%0A")
    assert response.status_code == 400, response.text
    assert "malformed job id" in response.json()["error"]


def test_unknown_routes_and_methods_answer_json(api: Api) -> None:
    assert api.get("/nowhere").status_code == 404
    assert api.get("/nowhere").json()["status"] == 404
    response = requests.delete(api.base + "/report", timeout=10)
    assert response.status_code == 405
    assert response.json()["status"] == 405
    assert api.get("/healthz").json() == {"status": "ok"}
    assert api.get("/readyz").status_code == 200


def test_the_api_logs_one_json_line_per_request(api: Api, tmp_path: Path) -> None:
    api.get("/status/00000000-0000-4000-8000-00000000abcd")
    logs = Path(api.redis.tracker.log_dir).glob("api-*.log")
    lines = [json.loads(x) for f in logs for x in f.read_text().splitlines() if x.startswith("{")]
    wanted = [e for e in lines if e.get("path") == "/status/00000000-0000-4000-8000-00000000abcd"]
    assert wanted and wanted[-1]["status"] == 404
    assert wanted[-1]["event"] == "request" and wanted[-1]["method"] == "GET"
    assert isinstance(wanted[-1]["duration"], float)


# --- HTTP edges: what gunicorn parses before the app -------------------------------------------


def raw_exchange(base: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes, read until the server closes; returns (status, headers, body)."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    length = int(headers.get("Content-Length", len(body)))
    return int(lines[0].split()[1]), headers, body[:length]


def chunked(body: bytes, size: int = 8192) -> Iterator[bytes]:
    """A generator body: requests sends it with Transfer-Encoding: chunked."""
    for start in range(0, len(body), size):
        yield body[start : start + size]


def test_a_malformed_chunked_body_is_a_400_json_without_a_traceback(api: Api) -> None:
    request = (
        b"POST /report HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"
    )
    status, headers, body = raw_exchange(api.base, request)
    assert status == 400, body
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body)["status"] == 400
    assert "chunk" in json.loads(body)["error"].lower()
    logs = "".join(p.read_text() for p in Path(api.redis.tracker.log_dir).glob("api-*.log"))
    assert "Traceback" not in logs
    assert api.get("/healthz").status_code == 200


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),  # not a request line
        (b"GET /healthz HTTP/9.9\r\nHost: test\r\n\r\n", 400),  # unknown HTTP version
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: test\r\n\r\n", 414),  # line too long
        (b"GET /healthz HTTP/1.1\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n", 431),  # header
        (b"GET /healthz HTTP/1.1\r\nBad Header: x\r\n\r\n", 400),  # invalid header name
    ],
)
def test_gunicorns_own_error_pages_are_json(api: Api, request_bytes: bytes, status: int) -> None:
    got, headers, body = raw_exchange(api.base, request_bytes)
    assert got == status, body
    assert headers["Content-Type"] == "application/json"
    payload = json.loads(body)
    assert payload["status"] == status and payload["error"]


# --- fuzz -----------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
bodies = st.one_of(
    json_values,
    st.fixed_dictionaries({"user_id": json_values}, optional={"data": json_values}),
    st.fixed_dictionaries(
        {"user_id": st.integers(1, 10**9)},
        optional={
            "data": st.fixed_dictionaries(
                {},
                optional={
                    "rows": json_values,
                    "size": json_values,
                    "title": json_values,
                    "fail_times": json_values,
                },
            )
        },
    ),
    st.fixed_dictionaries({"address": st.one_of(st.text(max_size=40), st.emails(), json_values)}),
    st.fixed_dictionaries(
        {"url": st.one_of(st.text(max_size=60), st.from_regex(r"\Ahttps?://[^/]{0,30}/\S{0,20}\Z"))}
    ),
)


@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    path=st.sampled_from(["/report", "/email", "/thumb"]),
    body=bodies,
    raw=st.one_of(st.none(), st.binary(max_size=64)),
)
def test_fuzzed_bodies_never_get_a_server_error(
    api: Api, path: str, body: Any, raw: bytes | None
) -> None:
    if raw is None:
        response = api.post(path, data=json.dumps(body), headers=JSON)
    else:
        response = api.post(path, data=raw, headers=JSON)
    assert response.status_code in {202, 400, 413, 422}, response.text
    payload = response.json()
    assert ("job_id" in payload) if response.status_code == 202 else ("error" in payload)


@settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(job_id=st.text(min_size=1, max_size=60))
def test_fuzzed_job_ids_never_get_a_server_error(api: Api, job_id: str) -> None:
    response = api.get("/status/" + quote(job_id, safe=""))
    assert response.status_code in {400, 404}, response.text
    assert "error" in response.json()


# --- the default URL policy and body cap, admission, Redis lost (own Redis and API) -----------


def start_plain_api(tracker: ProcessTracker, redis_server: RedisServer) -> str:
    """The API with the defaults: no host allow-list, no private networks, 64 KB bodies."""
    env = {
        "CELERY_BROKER_URL": redis_server.url(0),
        "CELERY_RESULT_BACKEND": redis_server.url(1),
        "WORKLOAD_REDIS_CONNECT_TIMEOUT": "1",
        "WORKLOAD_REDIS_SOCKET_TIMEOUT": "3",
    }
    return start_api(tracker, env)


@pytest.fixture(scope="module")
def plain_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, RedisServer]]:
    """One such API for the read-only checks of this module (started once: it takes seconds)."""
    tmp = tmp_path_factory.mktemp("workload-plain-api")
    tracker = ProcessTracker(tmp / "logs")
    try:
        server = RedisServer(tracker, tmp / "redis").start()
        yield start_plain_api(tracker, server), server
    finally:
        tracker.stop_all()


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/a.png",
        "http://localhost:8080/a.png",
        "http://10.1.2.3/a.png",
        "http://192.168.0.1/a.png",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/a.png",
        "http://[::ffff:127.0.0.1]/a.png",
        "http://0.0.0.0/a.png",
        # Other spellings of loopback, which the resolver (and so the worker's HTTP client)
        # reads as 127.0.0.1 or ::1.
        "http://2130706433/a.png",
        "http://0x7f.1/a.png",
        "http://127.1/a.png",
        "http://0177.0.0.1/a.png",
        "http://0/a.png",
        "http://\uff11\uff12\uff17.\uff10.\uff10.\uff11/a.png",  # fullwidth digits
        "http://[::ffff:7f00:1]/a.png",
        "http://[0:0:0:0:0:0:0:1]/a.png",
        "http://[::127.0.0.1]/a.png",
        "http://[64:ff9b::7f00:1]/a.png",
        "http://[2002:7f00:1::1]/a.png",
    ],
)
def test_private_addresses_are_refused_by_default(
    plain_api: tuple[str, RedisServer], url: str
) -> None:
    base, _ = plain_api
    response = requests.post(f"{base}/thumb", json={"url": url}, timeout=10)
    assert response.status_code == 422, response.text
    assert "WORKLOAD_ALLOW_PRIVATE_NETWORKS" in response.json()["error"]
    accepted = requests.post(f"{base}/thumb", json={"url": "https://example.com/a.png"}, timeout=10)
    assert accepted.status_code == 202


def test_a_host_no_client_could_encode_is_refused(plain_api: tuple[str, RedisServer]) -> None:
    base, _ = plain_api
    url = "http://\u0661\u0662\u0667.\u0660.\u0660.\u0661/a.png"  # Arabic-Indic digits
    response = requests.post(f"{base}/thumb", json={"url": url}, timeout=10)
    assert response.status_code == 422, response.text
    assert "not a valid host name" in response.json()["error"]


def test_chunked_bodies_are_held_to_the_default_64_kb_cap(
    plain_api: tuple[str, RedisServer],
) -> None:
    base, _ = plain_api
    big = json.dumps({"user_id": 1, "data": {"title": "x" * 200_000}}).encode()
    response = requests.post(f"{base}/report", data=chunked(big), headers=JSON, timeout=20)
    assert response.status_code == 413, response.text
    assert "65536 bytes" in response.json()["error"]
    small = json.dumps({"user_id": 1, "data": {"rows": [1] * 15_000}}).encode()
    assert 40_000 < len(small) < 65_536
    response = requests.post(f"{base}/report", data=chunked(small), headers=JSON, timeout=20)
    assert response.status_code == 202, response.text


def test_a_full_queue_gets_429_with_retry_after_until_it_drains(
    procs: ProcessTracker, redis_server: RedisServer, tmp_path: Path
) -> None:
    env = base_env(
        redis_server,
        tmp_path,
        WORKLOAD_API_BACKLOG_LIMITS="cpu=3",
        WORKLOAD_API_RETRY_AFTER="7",
        WORKLOAD_API_BACKLOG_CACHE_MS="0",  # exact: every request reads the length
    )
    base = start_api(procs, env)
    stats = requests.get(f"{base}/stats", timeout=10).json()
    assert stats["queues"]["cpu"]["limit"] == 3
    assert stats["queues"]["email"]["limit"] == 10_000  # the default

    # No cpu worker yet: two jobs from the API and one at priority 9 (another Redis list).
    for _ in range(2):
        assert requests.post(f"{base}/report", json={"user_id": 1}, timeout=10).status_code == 202
    client_app(env).send_task(
        "workload.tasks.generate_report", args=[1, {}], queue="cpu", priority=9
    )
    broker = redis_server.client()
    assert broker.llen("cpu") == 2 and broker.llen("cpu\x06\x169") == 1

    refused = requests.post(f"{base}/report", json={"user_id": 1}, timeout=10)
    assert refused.status_code == 429, refused.text
    assert refused.headers["Retry-After"] == "7"
    assert refused.headers["Content-Type"] == "application/json"
    assert "queue 'cpu' is full (3 waiting, limit 3)" in refused.json()["error"]
    assert broker.llen("cpu") == 2  # nothing published for the refused request
    # Other queues are not held back by cpu's backlog.
    email = requests.post(f"{base}/email", json={"address": "a@example.com"}, timeout=10)
    assert email.status_code == 202

    CeleryWorker(procs, env, queues=["cpu"]).start()
    wait_until(
        lambda: requests.post(f"{base}/report", json={"user_id": 1}, timeout=10).status_code == 202,
        timeout=30,
        message="the API to admit jobs again once the worker drained cpu",
    )


def test_redis_lost_during_requests_gives_503_json_then_recovers(
    procs: ProcessTracker, redis_server: RedisServer
) -> None:
    base = start_plain_api(procs, redis_server)
    submitted = requests.post(f"{base}/report", json={"user_id": 1}, timeout=10)
    assert submitted.status_code == 202
    job_id = submitted.json()["job_id"]

    redis_server.kill()
    for method, path, body in [
        ("POST", "/report", {"user_id": 1}),
        ("POST", "/email", {"address": "a@example.com"}),
        ("GET", f"/status/{job_id}", None),
        ("GET", "/readyz", None),
    ]:
        started = time.monotonic()
        response = requests.request(method, base + path, json=body, timeout=20)
        assert response.status_code == 503, (path, response.text)
        assert "unavailable" in response.json()["error"]
        assert time.monotonic() - started < 10
    assert requests.get(f"{base}/healthz", timeout=10).status_code == 200

    redis_server.restart()
    wait_until(
        lambda: requests.post(f"{base}/report", json={"user_id": 1}, timeout=10).status_code == 202,
        timeout=20,
        message="the API to recover with Redis",
    )

"""Least privilege and hostile input: basic auth, TLS (client certificates too), the web
config's checks and its reload on SIGHUP, masked secrets, no pickle, Redis ACL."""

from __future__ import annotations

import base64
import hashlib
import http.client
import pickle
import shlex
import signal
import socket
import ssl
import time
import urllib.request
from pathlib import Path

import bcrypt
import orjson
import pytest
import redis

from tests.support.acl_redis import adapt_to_local_redis, redis_version
from tests.support.exporter import ExporterProcess, http_get, parse
from tests.support.procs import CeleryWorker, RedisServer, celery_env, wait_until
from tests.support.tls import Issued, TestCA
from tests.test_exporter_cli import one_line, run_exporter

ROOT = Path(__file__).resolve().parents[1]


def _https_get(url: str, ca: Path, auth: tuple[str, str] | None = None) -> tuple[int, str]:
    context = ssl.create_default_context(cafile=str(ca))
    headers = {}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(auth).encode()).decode()
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5, context=context) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_tls_and_basic_auth_from_the_web_config(procs, tmp_path) -> None:  # type: ignore[no-untyped-def]
    ca = TestCA(tmp_path / "pki")
    server = ca.issue("exporter")
    hashed = bcrypt.hashpw(b"s3cret-scrape", bcrypt.gensalt(rounds=10)).decode()
    web = tmp_path / "web.yml"
    web.write_text(
        f"tls_server_config:\n  cert_file: {server.cert}\n  key_file: {server.key}\n"
        f"basic_auth_users:\n  prometheus: '{hashed.replace('$2b$', '$2y$')}'\n"
    )
    broker = RedisServer(procs, tmp_path / "redis", password="brokerpw").start()
    exporter = ExporterProcess(
        procs, broker.url(0), args=["--web.config-file", str(web)], ca=ca.cert_path
    )
    exporter.start(wait_ready=False)  # /readyz needs credentials now
    base = f"https://127.0.0.1:{exporter.port}"

    status, body = _https_get(base + "/metrics", ca.cert_path, ("prometheus", "s3cret-scrape"))
    assert status == 200 and "celery_exporter_build_info" in body
    assert parse(body).value("celery_exporter_broker_up") in (0, 1)
    assert _https_get(base + "/metrics", ca.cert_path, ("prometheus", "wrong"))[0] == 401
    assert _https_get(base + "/metrics", ca.cert_path, ("mallory", "s3cret-scrape"))[0] == 401
    assert _https_get(base + "/metrics", ca.cert_path)[0] == 401
    assert _https_get(base + "/api/status", ca.cert_path)[0] == 401
    assert _https_get(base + "/healthz", ca.cert_path)[0] == 200  # probes need no password
    wait_until(
        lambda: (
            _https_get(base + "/readyz", ca.cert_path, ("prometheus", "s3cret-scrape"))[0] == 200
        ),
        message="ready over TLS with credentials",
    )
    # Plain HTTP to the TLS port gets no metrics.
    with pytest.raises((ConnectionError, OSError, urllib.error.URLError)):
        http_get(f"http://127.0.0.1:{exporter.port}/metrics", timeout=3)
    log = exporter.log_text()
    assert "s3cret-scrape" not in log and "brokerpw" not in log
    assert ":****@" in log  # the broker URL is logged, masked


def _pickle_bomb(sentinel: Path) -> bytes:
    class Bomb:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (sentinel.write_text, ("unpickled!",))

    return pickle.dumps(Bomb())


def test_pickle_events_and_task_messages_are_never_deserialized(
    procs, redis_server, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    sentinel = tmp_path / "pwned"
    bomb = base64.b64encode(_pickle_bomb(sentinel)).decode()
    exporter = ExporterProcess(procs, redis_server.url(0), args=["--queues", "default"]).start()
    client = redis_server.client()
    event = {"body": bomb, "content-type": "application/x-python-serialize",
             "content-encoding": "binary", "headers": {},
             "properties": {"body_encoding": "base64"}}  # fmt: skip
    client.publish("/0.celeryev/task.multi", orjson.dumps(event))
    task_message = {"body": bomb, "content-type": "application/x-python-serialize",
                    "content-encoding": "binary",
                    "headers": {"id": "p1", "task": "workload.tasks.dummy_task"},
                    "properties": {"body_encoding": "base64", "delivery_tag": "d1"}}  # fmt: skip
    client.lpush("default", orjson.dumps(task_message))
    scrape = exporter.wait_for(
        lambda s: (
            s.value("celery_exporter_events_rejected_total", reason="content_type") == 1
            and s.value("celery_queue_length", queue_name="default") == 1
        ),
        message="pickle event rejected, pickle task message counted",
    )
    assert scrape.value("celery_queue_oldest_message_age_seconds", queue_name="default") >= 0
    assert not sentinel.exists()


def _exporter_acl_rule(password: str) -> list[str]:
    """The shipped ACL line for the exporter user (compose/redis/users.acl), password filled."""
    acl = (ROOT / "compose" / "redis" / "users.acl").read_text()
    line = next(ln for ln in acl.splitlines() if ln.startswith("user exporter "))
    digest = hashlib.sha256(password.encode()).hexdigest()
    line = adapt_to_local_redis(line, redis_version())  # Debian's 7.0 lacks CLIENT SETINFO
    return shlex.split(line.replace("@REDIS_EXPORTER_PASSWORD@", digest))[2:]


@pytest.mark.slow
def test_rediss_with_the_least_privilege_acl_user(procs, tmp_path) -> None:  # type: ignore[no-untyped-def]
    ca = TestCA(tmp_path / "pki")
    server = ca.issue("redis")
    tls = RedisServer(procs, tmp_path / "redis", password="adminpw",
                      tls=(server.cert, server.key, ca.cert_path)).start()  # fmt: skip
    admin = tls.client()
    admin.execute_command("ACL", "SETUSER", "exporter", *_exporter_acl_rule("exporterpw"))

    exporter_url = tls.url(0, username="exporter", password="exporterpw")
    assert exporter_url.startswith("rediss://")
    exporter = ExporterProcess(procs, exporter_url, args=["--queues", "email"]).start()

    env = celery_env(tls)
    CeleryWorker(procs, env, queues=["default"], nodename="tls@test").start()
    worker_view = exporter.wait_for(lambda s: s.value("celery_worker_up", hostname="tls@test") == 1)
    assert worker_view.value("celery_exporter_broker_up") == 1
    # A message nobody consumes (the worker serves "default", not "email").
    admin.lpush("email", b'{"headers": {"id": "waiting"}, "properties": {}}')
    exporter.wait_for(lambda s: s.value("celery_queue_length", queue_name="email") == 1,
                      message="queue read through the ACL user")  # fmt: skip

    limited = tls.client(username="exporter", password="exporterpw")
    assert limited.llen("email") == 1
    admin.set("secret-key", "x")
    for forbidden in (
        lambda: limited.get("secret-key"),  # another key: no read
        lambda: limited.set("anything", "x"),  # no write
        lambda: limited.lpush("default", "x"),  # not even on a queue
        lambda: limited.publish("/0.celeryev/task.sent", "x"),  # no publish
        lambda: limited.delete("default"),
        lambda: limited.flushall(),
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            forbidden()
    assert "exporterpw" not in exporter.log_text()


# --------------------------------------------------------------------------- basic auth


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_long_passwords_and_junk_credentials_get_401_never_a_traceback(
    procs, redis_server, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    password = "p" * 72
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    web = tmp_path / "web.yml"
    web.write_text(f"basic_auth_users:\n  prometheus: '{hashed}'\n")
    exporter = ExporterProcess(procs, redis_server.url(0), args=["--web.config-file", str(web)])
    exporter.start(wait_ready=False)

    assert exporter.get("/metrics", headers=_basic("prometheus", password))[0] == 200
    for user, attempt in [
        ("prometheus", password + "p"),  # bcrypt 4.x would read only the first 72 bytes
        ("prometheus", password + "x" * 500),
        ("prometheus", "é" * 40),  # 80 bytes in UTF-8
        ("prometheus", "pw\0"),
        ("nobody", "x" * 100),
    ]:
        assert exporter.get("/metrics", headers=_basic(user, attempt))[0] == 401, attempt[:10]
    for header in ("Basic !!!notbase64", "Basic " + base64.b64encode(b"\xff\xfe").decode(),
                   "Bearer abc", "Basic"):  # fmt: skip
        assert exporter.get("/metrics", headers={"Authorization": header})[0] == 401, header
    log = exporter.log_text()
    assert "Traceback" not in log and '"level":"error"' not in log
    assert password not in log


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ("basic_auth_users:\n  alice: '$2b$10$short'\n",
         "basic_auth_users.alice: not a valid bcrypt hash"),
        ("http_server_config:\n  headers:\n    X-Frame-Options: \"deny\\r\\nSet-Cookie: x=1\"\n",
         "http_server_config.headers.X-Frame-Options: the value contains CR, LF"),
    ],
)  # fmt: skip
def test_a_malformed_hash_or_header_is_a_start_up_error(tmp_path, config: str, needle: str) -> None:  # type: ignore[no-untyped-def]
    web = tmp_path / "web.yml"
    web.write_text(config)
    result = run_exporter("--web.config-file", str(web))
    assert result.returncode == 2
    assert needle in one_line(result.stderr)


# --------------------------------------------------------------------------- TLS


def _tls_client(ca: Path, cert: Issued | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        context.load_cert_chain(cert.cert, cert.key)
    return context


def _https_status(port: int, context: ssl.SSLContext, path: str = "/metrics") -> int:
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=context)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


def test_client_certificates_and_clients_that_stall_the_handshake(
    procs, redis_server, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    ca = TestCA(tmp_path / "pki")
    server, client = ca.issue("exporter"), ca.issue("prometheus", client=True)
    stranger = TestCA(tmp_path / "other").issue("mallory", client=True)
    web = tmp_path / "web.yml"
    web.write_text(
        f"tls_server_config:\n  cert_file: {server.cert}\n  key_file: {server.key}\n"
        f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {ca.cert_path}\n"
    )
    exporter = ExporterProcess(
        procs, redis_server.url(0), args=["--web.config-file", str(web)], ca=ca.cert_path
    )
    exporter.process = procs.start(exporter.argv(), f"exporter-{exporter.port}")
    wait_until(lambda: _https_status(exporter.port, _tls_client(ca.cert_path, client)) == 200,
               timeout=20, message="exporter over TLS with a client certificate")  # fmt: skip

    # Clients that connect and never start (or finish) the handshake do not hold up others:
    # the handshake is not done by the thread that accepts.
    stalled = [socket.create_connection(("127.0.0.1", exporter.port)) for _ in range(20)]
    try:
        started = time.monotonic()
        assert _https_status(exporter.port, _tls_client(ca.cert_path, client)) == 200
        assert time.monotonic() - started < 3
    finally:
        for sock in stalled:
            sock.close()
    for context in (_tls_client(ca.cert_path), _tls_client(ca.cert_path, stranger)):
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            _https_status(exporter.port, context)
    with pytest.raises(OSError):  # plain HTTP to the TLS port gets nothing
        http_get(f"http://127.0.0.1:{exporter.port}/healthz", timeout=3)
    scrape = parse_https(exporter.port, _tls_client(ca.cert_path, client))
    assert scrape.value("celery_exporter_http_connections_rejected_total", reason="tls") == 3


def parse_https(port: int, context: ssl.SSLContext):  # type: ignore[no-untyped-def]
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=context)
    try:
        conn.request("GET", "/metrics")
        return parse(conn.getresponse().read().decode())
    finally:
        conn.close()


# --------------------------------------------------------------------------- SIGHUP


def _log_lines(exporter: ExporterProcess, needle: str) -> list[str]:
    return [line for line in exporter.log_text().splitlines() if needle in line]


def test_sighup_reloads_the_web_config_and_keeps_it_when_the_new_one_is_invalid(
    procs, redis_server, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    alice = bcrypt.hashpw(b"alice-pw", bcrypt.gensalt(rounds=4)).decode()
    bob = bcrypt.hashpw(b"bob-pw", bcrypt.gensalt(rounds=4)).decode()
    web = tmp_path / "web.yml"
    web.write_text(f"basic_auth_users:\n  alice: '{alice}'\n")
    exporter = ExporterProcess(procs, redis_server.url(0), args=["--web.config-file", str(web)])
    exporter.start(wait_ready=False)
    assert exporter.get("/metrics", headers=_basic("alice", "alice-pw"))[0] == 200

    # A valid file: new users, TLS, a header; new connections use it.
    ca = TestCA(tmp_path / "pki")
    cert = ca.issue("exporter")
    web.write_text(
        f"tls_server_config:\n  cert_file: {cert.cert}\n  key_file: {cert.key}\n"
        f"basic_auth_users:\n  bob: '{bob}'\n"
        "http_server_config:\n  headers:\n    X-Frame-Options: deny\n"
    )
    exporter.process.signal_group(signal.SIGHUP)
    wait_until(lambda: _log_lines(exporter, "web config reloaded"), message="reload logged")
    with pytest.raises(OSError):
        http_get(exporter.url("/healthz"), timeout=3)  # plain HTTP: no longer
    https = f"https://127.0.0.1:{exporter.port}"
    status, _ = http_get(https + "/metrics", headers=_basic("bob", "bob-pw"), ca=ca.cert_path)
    assert status == 200
    assert http_get(https + "/metrics", headers=_basic("alice", "alice-pw"),
                    ca=ca.cert_path)[0] == 401  # fmt: skip
    request = urllib.request.Request(https + "/healthz")
    with urllib.request.urlopen(request, context=_tls_client(ca.cert_path)) as response:
        assert response.headers["X-Frame-Options"] == "deny"

    # An invalid file: one error line, the running config stays.
    web.write_text("basic_auth_users:\n  carol: '$2b$10$not-a-hash'\n")
    exporter.process.signal_group(signal.SIGHUP)
    wait_until(lambda: _log_lines(exporter, "web config not reloaded"), message="error logged")
    assert exporter.process.alive()
    status, _ = http_get(https + "/metrics", headers=_basic("bob", "bob-pw"), ca=ca.cert_path)
    assert status == 200
    (error,) = _log_lines(exporter, "web config not reloaded")
    assert '"level":"error"' in error and "basic_auth_users.carol" in error
    assert len(_log_lines(exporter, "web config reloaded")) == 1
    assert "Traceback" not in exporter.log_text()


def test_sighup_without_a_web_config_is_logged_and_harmless(procs, redis_server) -> None:  # type: ignore[no-untyped-def]
    exporter = ExporterProcess(procs, redis_server.url(0)).start()
    exporter.process.signal_group(signal.SIGHUP)
    wait_until(lambda: _log_lines(exporter, "no --web.config-file"), message="SIGHUP logged")
    assert exporter.process.alive() and exporter.get("/readyz")[0] == 200

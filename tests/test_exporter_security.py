"""Least privilege and hostile input: basic auth, TLS, masked secrets, no pickle, Redis ACL."""

from __future__ import annotations

import base64
import hashlib
import pickle
import shlex
import ssl
import urllib.request
from pathlib import Path

import bcrypt
import orjson
import pytest
import redis

from tests.support.acl_redis import adapt_to_local_redis, redis_version
from tests.support.exporter import ExporterProcess, http_get, parse
from tests.support.procs import CeleryWorker, RedisServer, celery_env, wait_until
from tests.support.tls import TestCA

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

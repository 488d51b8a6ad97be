"""Brokers beyond one plain Redis (issue 12 §4): Sentinel with a failover, Redis Cluster
refused, and TLS options for rediss:// on both the fast path and the Celery app.
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
import redis

from exporter.broker import redis_client
from tests.support.events import HEARTBEAT_CHANNEL, heartbeat
from tests.support.exporter import ExporterProcess
from tests.support.procs import (
    PYTHON,
    CeleryWorker,
    ProcessTracker,
    RedisServer,
    free_port,
    wait_until,
)
from tests.support.sentinel import MASTER_NAME, SentinelSetup
from tests.support.sentinel_app import make_app
from tests.support.tls import Issued, TestCA

ECHO = "sentinel.echo"


@pytest.mark.slow
def test_sentinel_fast_path_follows_the_master_through_a_failover(procs, tmp_path) -> None:  # type: ignore[no-untyped-def]
    setup = SentinelSetup(procs, tmp_path).start()
    url = setup.url(0)
    exporter = ExporterProcess(
        procs,
        url,
        args=["--broker-transport-option", f"master_name={MASTER_NAME}", "--queues", "parked"],
    ).start()
    # A real worker and producer through Sentinel, configured as Celery documents it.
    env = {"SENTINEL_BROKER_URL": url, "SENTINEL_MASTER": MASTER_NAME, "PYTHONUNBUFFERED": "1"}
    CeleryWorker(procs, env, queues=["default"], nodename="sentinel@test",
                 app="tests.support.sentinel_app", concurrency=1).start()  # fmt: skip
    producer = make_app(url, MASTER_NAME)
    labels = {"name": ECHO, "hostname": "sentinel@test", "queue_name": "default"}
    for i in range(3):
        producer.send_task(ECHO, (i,), queue="default")
    first_master = setup.master
    first_master.client().lpush("parked", b'{"headers": {"id": "p1"}, "properties": {}}')
    exporter.wait_for(
        lambda s: (
            s.value("celery_task_succeeded_total", **labels) == 3
            and s.value("celery_queue_length", queue_name="parked") == 1
        ),
        timeout=60,
        message="events and queue figures through the master",
    )

    first_master.kill()  # the master dies; the sentinels promote the replica
    wait_until(lambda: setup.master_port() == setup.replica.port, timeout=60,
               message="failover to the replica")  # fmt: skip
    new_master = setup.replica.client()
    new_master.lpush("parked", b'{"headers": {"id": "p2"}, "properties": {}}')

    def following() -> bool:
        # Pub/sub keeps nothing for a subscriber that is still reconnecting: publish until
        # the exporter, subscribed to the new master, counts one.
        new_master.publish(HEARTBEAT_CHANNEL, heartbeat("direct@test"))
        s = exporter.scrape()
        return (
            s.value("celery_worker_up", hostname="direct@test") == 1
            and s.value("celery_queue_length", queue_name="parked") == 2
            and s.value("celery_exporter_broker_up") == 1
        )

    wait_until(
        following, timeout=60, interval=0.5, message="subscribed to and polling the new master"
    )
    # The worker and the producer (kombu) find the new master through Sentinel too.
    for i in range(3, 6):
        producer.send_task(ECHO, (i,), queue="default")
    scrape = exporter.wait_for(
        lambda s: s.value("celery_task_succeeded_total", **labels) == 6,
        timeout=90,
        message="the worker's events after the failover counted",
    )
    assert scrape.value("celery_task_received_total", **labels) == 6  # nothing counted twice
    lost = scrape.value("celery_exporter_event_source_reconnects_total", reason="closed")
    assert lost is not None and lost >= 1


# ---------------------------------------------------------------------------- Cluster


def cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free and valid too."""
    while True:
        port = free_port()
        if port <= 55535:
            with contextlib.suppress(OSError), socket.socket() as bus:
                bus.bind(("127.0.0.1", port + 10000))
                return port


@pytest.fixture
def cluster_node(procs, tmp_path) -> RedisServer:  # type: ignore[no-untyped-def]
    nodes = tmp_path / "cluster" / "nodes.conf"
    args = ["--cluster-enabled", "yes", "--cluster-config-file", str(nodes)]
    return RedisServer(procs, tmp_path / "cluster", port=cluster_port(), extra_args=args).start()


def test_a_cluster_node_is_refused_at_the_start_up_check(cluster_node: RedisServer) -> None:
    result = subprocess.run(
        [PYTHON, "-m", "exporter", "--broker-url", cluster_node.url(0), "--no-wait-for-broker"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "is a Redis Cluster node" in lines[0] and "does not support Redis Cluster" in lines[0]


def test_a_cluster_node_found_after_start_ends_the_exporter_with_one_line(
    procs, cluster_node: RedisServer
) -> None:  # type: ignore[no-untyped-def]
    exporter = ExporterProcess(procs, cluster_node.url(0))
    exporter.process = procs.start(exporter.argv(), "exporter-cluster")
    proc = exporter.process.proc
    assert proc is not None
    assert proc.wait(timeout=30) == 1
    errors = [
        json.loads(line)
        for line in exporter.log_text().splitlines()
        if line.startswith("{") and json.loads(line)["level"] == "error"
    ]
    assert len(errors) == 1, exporter.log_text()
    assert "is a Redis Cluster node" in errors[0]["event"]
    for noise in ("CROSSSLOT", "CLUSTERDOWN", "MOVED", "Traceback"):
        assert noise not in exporter.log_text()


@pytest.mark.parametrize("scheme", ["redis+cluster", "rediss+cluster", "redis-cluster"])
def test_a_cluster_url_is_a_configuration_error(scheme: str) -> None:
    result = subprocess.run(
        [PYTHON, "-m", "exporter", "--broker-url", f"{scheme}://:pw@127.0.0.1:7000"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "does not support Redis Cluster" in result.stderr and ":pw@" not in result.stderr


# ---------------------------------------------------------------------------- TLS options


class MutualTlsRedis(RedisServer):
    """A TLS redis-server that also requires a client certificate (tls-auth-clients yes)."""

    def __init__(self, tracker: ProcessTracker, data_dir: Path, ca: TestCA, client: Issued) -> None:
        server = ca.issue("redis")
        super().__init__(tracker, data_dir, password="adminpw",
                         tls=(server.cert, server.key, ca.cert_path),
                         extra_args=["--tls-auth-clients", "yes"])  # fmt: skip
        self.client_cert = client

    def client(self, db: int = 0, **kwargs: Any) -> redis.Redis:
        kwargs.setdefault("ssl_certfile", str(self.client_cert.cert))
        kwargs.setdefault("ssl_keyfile", str(self.client_cert.key))
        return super().client(db, **kwargs)


def test_broker_ssl_options_reach_the_fast_path_and_the_celery_app(procs, tmp_path) -> None:  # type: ignore[no-untyped-def]
    ca = TestCA(tmp_path / "pki")
    client_cert = ca.issue("exporter", client=True)
    server = MutualTlsRedis(procs, tmp_path / "redis", ca, client_cert).start()
    url = f"rediss://:adminpw@127.0.0.1:{server.port}/0"  # no TLS settings in the URL
    ssl_args = [
        "--broker-ssl-option", f"ssl_ca_certs={ca.cert_path}",
        "--broker-ssl-option", f"ssl_certfile={client_cert.cert}",
        "--broker-ssl-option", f"ssl_keyfile={client_cert.key}",
        "--broker-ssl-option", "ssl_cert_reqs=required",
    ]  # fmt: skip
    # Without its client certificate the exporter is refused by this server...
    refused = subprocess.run(
        [PYTHON, "-m", "exporter", "--broker-url", url, "--no-wait-for-broker",
         "--broker-ssl-option", f"ssl_ca_certs={ca.cert_path}"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert refused.returncode == 1 and "cannot reach broker" in refused.stderr
    assert "adminpw" not in refused.stderr

    admin = server.client()
    control = admin.pubsub()
    control.psubscribe("/0.celery.pidbox*")  # where Celery broadcasts enable_events
    # ...with the options, the poller, the event source and Celery's own app all connect.
    exporter = ExporterProcess(
        procs, url, args=[*ssl_args, "--enable-events", "--enable-events-interval", "1"]
    ).start()
    admin.publish(HEARTBEAT_CHANNEL, heartbeat("tls@test"))
    exporter.wait_for(lambda s: s.value("celery_worker_up", hostname="tls@test") == 1)

    def broadcast_seen() -> bool:
        message = control.get_message(timeout=1)
        if not message or message["type"] != "pmessage":
            return False
        return b"enable_events" in base64.b64decode(json.loads(message["data"])["body"])

    wait_until(broadcast_seen, timeout=30, message="enable_events broadcast over TLS")
    assert "could not broadcast" not in exporter.log_text()
    assert "adminpw" not in exporter.log_text()


def test_sentinel_client_is_built_as_kombu_builds_it() -> None:
    """The URL's user, password and database are the master's; sentinel_kwargs (a JSON
    --broker-transport-option) are for the sentinels, as in kombu's SentinelChannel."""
    client = redis_client(
        "sentinel://app:m%40ster@s1:26380/3;sentinel://s2",
        {"master_name": "obs", "sentinel_kwargs": {"password": "sentinel-pw"}},
    )
    pool = client.connection_pool
    assert pool.service_name == "obs"
    master = pool.connection_kwargs
    assert (master["username"], master["password"], master["db"]) == ("app", "m@ster", 3)
    sentinels = [s.connection_pool.connection_kwargs for s in pool.sentinel_manager.sentinels]
    assert [(s["host"], s["port"]) for s in sentinels] == [("s1", 26380), ("s2", 26379)]
    assert all(s["password"] == "sentinel-pw" for s in sentinels)

"""The Redis event source on the paths real deployments take (issue 11 §3 and §4 "Signals").

A password rotation and an ACL change that make Redis refuse the subscription, a corrupted
reply stream, a flood past the backlog cap, and SIGTERM with a large backlog: each against
a real redis-server and the real exporter process.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.events import HEARTBEAT_CHANNEL, heartbeat, publish_heartbeats
from tests.support.exporter import ExporterProcess, Scrape
from tests.support.faultproxy import FaultProxy
from tests.support.procs import RedisServer, wait_until

RECONNECTS = "celery_exporter_event_source_reconnects_total"
REASONS = ("closed", "auth", "permission", "protocol", "timeout", "error")


def reconnects(scrape: Scrape, reason: str) -> float:
    return scrape.value(RECONNECTS, reason=reason) or 0


def log_lines(exporter: ExporterProcess) -> list[dict]:
    lines = []
    for line in exporter.log_text().splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def reason_lines(exporter: ExporterProcess, reason: str) -> list[dict]:
    return [line for line in log_lines(exporter) if line.get("reason") == reason]


def numpat(redis_server: RedisServer, **auth: str) -> int:
    return int(redis_server.client(**auth).execute_command("PUBSUB", "NUMPAT"))


def unbuffered_redis(procs, tmp_path: Path) -> RedisServer:  # type: ignore[no-untyped-def]
    """A Redis that buffers pub/sub output without limit: only the exporter drops."""
    args = ["--client-output-buffer-limit", "pubsub 0 0 0"]
    return RedisServer(procs, tmp_path / "redis", extra_args=args).start()


def pmessage(channel: str, data: bytes, pattern: str = "/0.celeryev/*") -> bytes:
    """One pub/sub message as Redis frames it for a PSUBSCRIBE (RESP2)."""
    parts = [b"pmessage", pattern.encode(), channel.encode(), data]
    return b"*4\r\n" + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


def test_every_reason_is_exported_at_zero_from_the_start(procs, redis_server) -> None:  # type: ignore[no-untyped-def]
    scrape = ExporterProcess(procs, redis_server.url(0)).start().scrape()
    assert {reason: scrape.value(RECONNECTS, reason=reason) for reason in REASONS} == dict.fromkeys(
        REASONS, 0
    )
    assert scrape.types["celery_exporter_event_source_reconnects"] == "counter"


def test_resubscribes_after_a_password_rotation_refused_it(procs, redis_server) -> None:  # type: ignore[no-untyped-def]
    exporter = ExporterProcess(procs, redis_server.url(0)).start()
    redis_server.client().config_set("requirepass", "rotated")
    admin = redis_server.client(password="rotated")
    admin.client_kill_filter(_type="pubsub")  # as a restart or a failover would
    # Redis answers the new PSUBSCRIBE with -NOAUTH; the exporter backs off and tries again.
    exporter.wait_for(
        lambda s: reconnects(s, "auth") >= 2, timeout=30, message="refused twice (NOAUTH)"
    )
    assert numpat(redis_server, password="rotated") == 0
    admin.config_set("requirepass", "")  # the rotation is rolled back (or the secret updated)

    wait_until(lambda: numpat(redis_server) == 1, timeout=20, message="PSUBSCRIBE again")
    redis_server.client().publish(HEARTBEAT_CHANNEL, heartbeat("rotated@test"))
    scrape = exporter.wait_for(
        lambda s: (
            s.value("celery_worker_up", hostname="rotated@test") == 1
            and s.value("celery_exporter_broker_up") == 1
        ),
        message="events counted again and broker_up 1",
    )
    assert reconnects(scrape, "closed") == 1
    assert reconnects(scrape, "permission") == reconnects(scrape, "protocol") == 0
    # One line says why, however many attempts were refused; one says it is over.
    auth = reason_lines(exporter, "auth")
    assert len(auth) == 1, auth
    assert "NOAUTH" in auth[0]["error"]
    assert len(reason_lines(exporter, "closed")) == 1
    restored = [ln for ln in log_lines(exporter) if ln["event"] == "event subscription restored"]
    assert len(restored) == 1


def test_resubscribes_after_an_acl_change_refused_the_channels(procs, redis_server) -> None:  # type: ignore[no-untyped-def]
    admin = redis_server.client()
    admin.execute_command("ACL", "SETUSER", "exporter", "on", ">exporterpw", "+@all", "~*", "&*")
    url = redis_server.url(0, username="exporter", password="exporterpw")
    exporter = ExporterProcess(procs, url).start()
    # Revoking the channel rights disconnects the user's subscriber (Redis >= 7.0); the
    # PSUBSCRIBE that follows gets -NOPERM.
    admin.execute_command("ACL", "SETUSER", "exporter", "resetchannels")
    scrape = exporter.wait_for(
        lambda s: reconnects(s, "permission") >= 2,
        timeout=30,
        message="refused twice (NOPERM)",
    )
    assert scrape.value("celery_exporter_broker_up") == 0
    admin.execute_command("ACL", "SETUSER", "exporter", "&*")

    wait_until(lambda: numpat(redis_server) == 1, timeout=20, message="PSUBSCRIBE again")
    admin.publish(HEARTBEAT_CHANNEL, heartbeat("acl@test"))
    exporter.wait_for(
        lambda s: (
            s.value("celery_worker_up", hostname="acl@test") == 1
            and s.value("celery_exporter_broker_up") == 1
        ),
        message="events counted again",
    )
    permission = reason_lines(exporter, "permission")
    assert len(permission) == 1 and "NOPERM" in permission[0]["error"], permission
    assert "exporterpw" not in exporter.log_text()


def test_a_corrupted_reply_stream_costs_one_reconnect_and_nothing_after_it_is_read(
    procs, redis_server, request
) -> None:  # type: ignore[no-untyped-def]
    proxy = FaultProxy(redis_server.port)
    request.addfinalizer(proxy.close)
    exporter = ExporterProcess(procs, proxy.url(0)).start()
    client = redis_server.client()
    for i in range(5):
        client.publish(HEARTBEAT_CHANNEL, heartbeat("before@test", i))
    exporter.wait_for(
        lambda s: s.value("celery_exporter_events_total", type="worker-heartbeat") == 5
    )
    # A byte Redis would never send, then a frame that is valid on its own: what follows a
    # protocol error on a connection is not to be trusted, so it must not be counted, and
    # a fresh connection must start with a fresh parser (no cascade of errors).
    assert proxy.inject(b"?" + pmessage("/0.celeryev/worker.heartbeat", heartbeat("stale@x"))) == 1
    exporter.wait_for(
        lambda s: reconnects(s, "protocol") == 1 and s.value("celery_exporter_broker_up") == 1,
        message="one protocol reconnect, subscribed again",
    )
    wait_until(lambda: proxy.subscribers() == 1 and numpat(redis_server) == 1, timeout=10)
    for i in range(5):
        client.publish(HEARTBEAT_CHANNEL, heartbeat("after@test", i))
    scrape = exporter.wait_for(
        lambda s: s.value("celery_exporter_events_total", type="worker-heartbeat") == 10,
        message="the new connection's events counted",
    )
    assert scrape.value("celery_worker_up", hostname="stale@x") is None
    assert {r: reconnects(scrape, r) for r in REASONS} == {**dict.fromkeys(REASONS, 0),
                                                          "protocol": 1}  # fmt: skip
    assert len(reason_lines(exporter, "protocol")) == 1


def _peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/<pid>/status")


@pytest.mark.slow
def test_past_the_backlog_cap_memory_stays_bounded_and_drops_are_counted(procs, tmp_path) -> None:  # type: ignore[no-untyped-def]
    server = unbuffered_redis(procs, tmp_path)
    cap = 4 * 1024 * 1024
    exporter = ExporterProcess(procs, server.url(0), args=["--max-backlog-bytes", str(cap)])
    exporter.start()
    assert exporter.process is not None
    before = _peak_rss_bytes(exporter.process.pid)
    # ~87 MB of heartbeats, buffered by Redis while the exporter is paused, then delivered
    # at socket speed: many times the cap, far faster than it can be decoded.
    total = 300_000
    exporter.process.pause()
    assert publish_heartbeats(server.client(), total) == total
    exporter.process.resume()

    def accounted(s: Scrape) -> bool:
        counted = s.value("celery_exporter_events_total", type="worker-heartbeat") or 0
        return counted + s.value("celery_exporter_events_dropped_total") == total

    scrape = exporter.wait_for(accounted, timeout=120, message="every message counted or dropped")
    assert scrape.value("celery_exporter_events_dropped_total") > total / 4
    growth = _peak_rss_bytes(exporter.process.pid) - before
    # The cap, plus one 1 MiB read in flight, plus the allocator's slack: far below the
    # flood (87 MB) that queueing dropped messages used to keep in memory.
    assert growth < cap + 24 * 1024 * 1024, f"peak RSS grew by {growth / 2**20:.0f} MiB"
    assert reconnects(scrape, "closed") == 0  # never cut off by Redis


@pytest.mark.slow
def test_sigterm_with_a_large_backlog_exits_0_within_5_seconds(procs, tmp_path) -> None:  # type: ignore[no-untyped-def]
    server = unbuffered_redis(procs, tmp_path)
    exporter = ExporterProcess(procs, server.url(0)).start()
    assert exporter.process is not None and exporter.process.proc is not None
    exporter.process.pause()  # Redis buffers the flood; on SIGCONT it arrives all at once
    total = 300_000
    assert publish_heartbeats(server.client(), total) == total
    exporter.process.resume()
    scrape = exporter.wait_for(
        lambda s: s.value("celery_exporter_event_backlog_bytes") > 40 * 1024 * 1024,
        message="a backlog of several seconds of decoding",
    )
    assert (scrape.value("celery_exporter_events_total", type="worker-heartbeat") or 0) < total
    started = time.monotonic()
    exporter.process.proc.send_signal(signal.SIGTERM)
    try:
        code = exporter.process.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        code = None
    elapsed = time.monotonic() - started
    assert code == 0, exporter.log_text()[-2000:]
    assert elapsed < 5.0, f"took {elapsed:.1f} s to exit"
    assert "exporter stopped" in exporter.log_text()

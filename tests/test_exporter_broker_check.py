"""What the exporter says when the broker says no (issue 14 §2): one line naming the cause.

``--no-wait-for-broker`` makes the exporter try the broker once at start, as it will use it
(PING, then a PSUBSCRIBE on the event channels), and exit 1 with a line a user can act on:
a password is needed or wrong, the ACL user lacks a right, the server is a Redis Cluster.
A URL that cannot work (a port that is not a number) is a configuration error: exit 2.
"""

from __future__ import annotations

import subprocess

import hiredis
import pytest
import redis

from exporter.broker import Outages, SubscriptionClosed, SubscriptionRefused, reason_of
from tests.support.procs import PYTHON, RedisServer, wait_until


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "exporter", *args], capture_output=True, text=True, timeout=60
    )


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.fixture
def locked(procs, tmp_path) -> RedisServer:  # type: ignore[no-untyped-def]
    return RedisServer(procs, tmp_path / "redis", password="t0p-secret").start()


def test_no_password_says_the_broker_needs_one(locked: RedisServer) -> None:
    result = run("--broker-url", f"redis://127.0.0.1:{locked.port}/0", "--no-wait-for-broker")
    assert result.returncode == 1
    line = one_line(result)
    assert "the broker needs a password (or the password is wrong)" in line
    assert f"redis://127.0.0.1:{locked.port}/0" in line
    assert "HELLO" not in line


def test_a_wrong_password_says_so_and_is_masked(locked: RedisServer) -> None:
    url = f"redis://:not-it@127.0.0.1:{locked.port}/0"
    result = run("--broker-url", url, "--no-wait-for-broker")
    assert result.returncode == 1
    line = one_line(result)
    assert "the broker needs a password (or the password is wrong)" in line
    assert f"redis://:****@127.0.0.1:{locked.port}/0" in line and "not-it" not in line


@pytest.mark.parametrize(
    ("rules", "denied"),
    [
        (["+@all", "-ping", "~*", "&*"], "PING"),
        (["+@all", "~*", "resetchannels"], "PSUBSCRIBE /0.celeryev/*"),
    ],
)
def test_an_acl_user_without_a_right_is_told_which(locked: RedisServer, rules, denied) -> None:  # type: ignore[no-untyped-def]
    locked.client().execute_command("ACL", "SETUSER", "exporter", "on", ">pw", *rules)
    url = f"redis://exporter:pw@127.0.0.1:{locked.port}/0"
    result = run("--broker-url", url, "--no-wait-for-broker")
    assert result.returncode == 1
    line = one_line(result)
    assert f"the broker user lacks permission for {denied}" in line, line
    assert f"redis://exporter:****@127.0.0.1:{locked.port}/0" in line


def test_the_right_password_passes_the_check(procs, locked: RedisServer) -> None:  # type: ignore[no-untyped-def]
    # The check lets a good configuration through (the exporter then runs; stop it).
    proc = procs.start(
        [PYTHON, "-m", "exporter", "--broker-url", locked.url(0), "--no-wait-for-broker",
         "--web.listen-address", "127.0.0.1:0", "--inspect-interval", "0"],
        "exporter-checked",
    )  # fmt: skip
    wait_until(lambda: "exporter started" in proc.log_text(), timeout=30)
    assert proc.alive()


@pytest.mark.parametrize(
    ("url", "echoed"),
    [
        ("redis://:pw@127.0.0.1:63a79/0", "redis://:****@127.0.0.1:63a79/0"),
        ("redis://127.0.0.1:99999/0", "redis://127.0.0.1:99999/0"),
        ("rediss://u:p@host:port/1", "rediss://u:****@host:port/1"),
    ],
)
def test_a_malformed_port_is_a_configuration_error_echoed_as_given(url: str, echoed: str) -> None:
    result = run("--broker-url", url, "--no-wait-for-broker")
    assert result.returncode == 2
    line = one_line(result)
    assert "invalid port" in line and "cannot reach" not in line
    assert echoed in line  # masked, the port as given (not dropped)


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (SubscriptionRefused("NOAUTH Authentication required."), "auth"),
        (SubscriptionRefused("WRONGPASS invalid username-password pair"), "auth"),
        (
            SubscriptionRefused(
                "NOPERM this user has no permissions to run the 'psubscribe' command"
            ),
            "permission",
        ),
        (SubscriptionRefused("ERR unknown command"), "error"),
        (hiredis.ProtocolError("Protocol error, got '?' as reply type byte"), "protocol"),
        (redis.TimeoutError("no reply from Redis to PING in 30 s"), "timeout"),
        (SubscriptionClosed("Redis closed the connection"), "closed"),
        (ConnectionResetError(104, "Connection reset by peer"), "closed"),
        (
            redis.ConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused."),
            "error",
        ),
        (redis.AuthenticationError("invalid username-password pair"), "auth"),
    ],
)
def test_each_broker_error_has_its_reconnect_reason(exc: BaseException, reason: str) -> None:
    assert reason_of(exc) == reason


def test_an_outage_logs_each_reason_once_and_counts_every_retry() -> None:
    outages = Outages()
    refused = redis.AuthenticationError("invalid username-password pair")
    assert outages.lost(refused) == ("auth", False)  # never subscribed yet: "cannot subscribe"
    assert outages.lost(refused) is None  # the same outage, the same reason: no new line
    assert outages.lost(ConnectionResetError()) == ("closed", False)  # a new reason is news
    assert outages.subscribed() is False  # the first subscription, not a restoration
    assert outages.lost(ConnectionResetError()) == ("closed", True)  # a live one ended
    assert outages.subscribed() is True
    assert outages.reconnects["auth"] == 2 and outages.reconnects["closed"] == 2

"""Fixtures every suite shares: a process tracker, a private Redis, the workload environment.

The servers run as local binaries, or as containers with OBSERVATORY_TEST_BACKEND=docker
(tests/support/backends.py, docs/testing.md); the fixtures are the same objects either way.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import backends
from tests.support.procs import ProcessTracker, RedisServer, celery_env


def pytest_configure(config: pytest.Config) -> None:
    """Select the backend once, before any test: a docker backend without an engine is a
    usage error that says why, not hundreds of failures."""
    try:
        backends.backend()
    except backends.BackendUnavailable as exc:
        raise pytest.UsageError(str(exc)) from None


def pytest_report_header(config: pytest.Config) -> str:
    return backends.describe()


@pytest.fixture
def procs(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ProcessTracker]:
    """Every process started through this tracker is stopped at teardown, pass or fail.

    When the test failed, the tail of each process's log is printed to help diagnose it.
    """
    tracker = ProcessTracker(tmp_path / "logs")
    yield tracker
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        print(tracker.logs())
    tracker.stop_all()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
def redis_server(procs: ProcessTracker, tmp_path: Path) -> RedisServer:
    """A fresh redis-server on a free port, owned by this test (it may kill or pause it)."""
    return RedisServer(procs, tmp_path / "redis").start()


@pytest.fixture
def workload_env(redis_server: RedisServer) -> dict[str, str]:
    """Environment variables that point the workload and its workers at ``redis_server``."""
    return celery_env(redis_server)


@pytest.fixture(scope="session")
def rabbitmq_url() -> Iterator[str]:
    """An AMQP broker: a RabbitMQ container on the docker backend; on the local backend the
    broker on 127.0.0.1:5672, and tests that need it skip with the reason when there is none."""
    with backends.rabbitmq() as url:
        yield url

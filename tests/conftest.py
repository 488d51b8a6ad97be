"""Fixtures every suite shares: a process tracker, a private Redis, the workload environment."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.procs import ProcessTracker, RedisServer, celery_env


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

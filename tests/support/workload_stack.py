"""A running reference workload for tests: private Redis, real workers, the real API and CLIs.

Built on tests/support/procs.py. A test module that needs a long-lived stack creates one in
a module-scoped fixture (starting workers costs seconds); tests that kill or pause things
build their own from the function-scoped ``procs`` fixture.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from unittest import mock

import requests
from celery import Celery
from celery.result import AsyncResult

from tests.support.procs import (
    CeleryWorker,
    ManagedProcess,
    ProcessTracker,
    RedisServer,
    celery_env,
    free_port,
    wait_until,
)

BIN = Path(sys.executable).parent
ALL_QUEUES = ("cpu", "email", "io", "default")


def settings_for(env: dict[str, str]) -> Any:
    """The workload's Settings as a process with ``env`` would read them."""
    from workload import config

    with mock.patch.dict(os.environ, env):
        return config.load()


def client_app(env: dict[str, str]) -> Celery:
    """A Celery client configured exactly like the workload, pointed at the test's Redis."""
    from workload.app import celery_config

    app = Celery("workload-test-client", set_as_current=False)
    app.conf.update(celery_config(settings_for(env)))
    return app


def outcome(result: AsyncResult, timeout: float = 30.0) -> tuple[str, Any]:
    """Wait for a final state; returns (state, value or exception) without raising."""
    wait_until(lambda: result.ready(), timeout=timeout, message=f"task {result.id} to finish")
    return result.state, result.result


def start_worker(
    tracker: ProcessTracker,
    env: dict[str, str],
    queues: Sequence[str],
    concurrency: int = 2,
    pool: str = "prefork",
) -> CeleryWorker:
    return CeleryWorker(tracker, env, queues=queues, concurrency=concurrency, pool=pool).start()


def start_api(tracker: ProcessTracker, env: dict[str, str]) -> str:
    """Run the real ``workload-api`` console script (gunicorn); returns its base URL."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process = tracker.start(
        [str(BIN / "workload-api"), "--bind", f"127.0.0.1:{port}", "--workers", "1"],
        f"api-{port}",
        env=env,
    )

    def healthy() -> bool:
        if not process.alive():
            raise RuntimeError(f"API exited:\n{process.log_text()[-3000:]}")
        return requests.get(f"{base}/healthz", timeout=2).status_code == 200

    wait_until(healthy, timeout=30, message="workload API healthy")
    return base


def run_dlq(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run the real ``workload-dlq`` console script."""
    return subprocess.run(
        [str(BIN / "workload-dlq"), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def dlq_json(env: dict[str, str], *args: str) -> Any:
    done = run_dlq(env, *args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def json_log_lines(process: ManagedProcess) -> list[dict[str, Any]]:
    """The JSON objects a process logged (non-JSON lines such as the banner are skipped)."""
    lines = []
    for line in process.log_text().splitlines():
        if line.startswith("{"):
            try:
                lines.append(json.loads(line))
            except ValueError:
                continue
    return lines


def base_env(redis: RedisServer, tmp: Path, **extra: str) -> dict[str, str]:
    """Fast retries, local servers allowed, files in the test's directory."""
    defaults = {
        "WORKLOAD_RETRY_BASE": "0.05",
        "WORKLOAD_RETRY_BACKOFF_MAX": "0.2",
        "WORKLOAD_ALLOWED_HOSTS": "127.0.0.1",
        "WORKLOAD_ALLOW_PRIVATE_NETWORKS": "true",
        "WORKLOAD_REPORT_DIR": str(tmp / "reports"),
        "WORKLOAD_THUMBNAIL_DIR": str(tmp / "thumbs"),
        "WORKLOAD_REPORT_WORK_ROUNDS": "5",
        "WORKLOAD_HTTP_TIMEOUT": "20",
    }
    return celery_env(redis, **{**defaults, **extra})

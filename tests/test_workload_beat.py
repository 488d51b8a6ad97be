"""The workload's beat schedule with a real ``celery beat`` and a real worker on private Redis.

Intervals shortened through their settings; the schedule state goes to WORKLOAD_STATE_DIR,
never to the working directory (here: the repository itself, as a checkout would be).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import requests

from tests.support.procs import PYTHON, ROOT, CeleryWorker, ProcessTracker, RedisServer, wait_until
from tests.support.workload_stack import base_env, json_log_lines, start_api

REFRESH = "workload.tasks.refresh_stats"
PURGE = "workload.tasks.purge_expired_reports"


def seed(tmp_path: Path, redis_server: RedisServer) -> dict[str, Any]:
    """An expired and a fresh report file, an expired and a fresh dead letter."""
    reports = tmp_path / "reports"
    reports.mkdir()
    old_report, new_report = reports / "report-1-old.csv", reports / "report-1-new.csv"
    for path in (old_report, new_report):
        path.write_text("# report\n")
    two_hours_ago = time.time() - 7200
    os.utime(old_report, (two_hours_ago, two_hours_ago))
    data = redis_server.client()
    for letter_id, failed_at in (("old-letter", two_hours_ago), ("new-letter", time.time())):
        letter = {"id": letter_id, "name": "workload.tasks.dummy_task", "failed_at": failed_at}
        data.hset("workload:dlq:letters", letter_id, json.dumps(letter))
        data.zadd("workload:dlq:index", {letter_id: failed_at})
    return {"old": old_report, "new": new_report}


def test_beat_runs_both_periodic_tasks_on_the_default_queue(
    procs: ProcessTracker, redis_server: RedisServer, tmp_path: Path
) -> None:
    files = seed(tmp_path, redis_server)
    state = tmp_path / "state"
    env = base_env(
        redis_server,
        tmp_path,
        WORKLOAD_STATE_DIR=str(state),
        WORKLOAD_BEAT_REFRESH_STATS_SECONDS="1",
        WORKLOAD_BEAT_PURGE_SECONDS="1.5",
        WORKLOAD_REPORT_RETENTION="3600",
        WORKLOAD_DLQ_RETENTION="3600",
    )
    before = set(ROOT.glob("celerybeat-schedule*"))
    worker = CeleryWorker(procs, env, queues=["default"]).start()
    beat = procs.start(
        [PYTHON, "-m", "celery", "-A", "workload.app", "beat", "-l", "INFO"], "beat", env=env
    )
    data = redis_server.client(decode_responses=True)

    def refreshed() -> float:
        if not beat.alive():
            raise RuntimeError(f"beat exited:\n{beat.log_text()[-3000:]}")
        return float(data.hget("workload:stats", "refreshed_at") or 0)

    first = wait_until(refreshed, timeout=30, message="refresh_stats to run")
    wait_until(lambda: refreshed() > first, timeout=30, message="refresh_stats to run again")
    stats = data.hgetall("workload:stats")
    assert stats["dead_letters"] in {"1", "2"} and "queue:cpu" in stats
    assert 0 < data.ttl("workload:stats") <= 3  # three refresh intervals, then stale is gone

    wait_until(lambda: not files["old"].exists(), timeout=30, message="expired report purged")
    assert files["new"].exists()
    assert data.hexists("workload:dlq:letters", "new-letter")
    assert not data.hexists("workload:dlq:letters", "old-letter")
    assert data.zrange("workload:dlq:index", 0, -1) == ["new-letter"]

    assert worker.process is not None
    finished = [e for e in json_log_lines(worker.process) if e.get("event") == "task finished"]
    for name in (REFRESH, PURGE):
        runs = [e for e in finished if e["task_name"] == name]
        assert runs and all(e["queue"] == "default" and e["state"] == "SUCCESS" for e in runs)

    # The schedule state is under WORKLOAD_STATE_DIR; beat ran from the repository and left
    # nothing there.
    assert list(state.glob("celerybeat-schedule*"))
    assert set(ROOT.glob("celerybeat-schedule*")) == before

    # The snapshot is what GET /stats serves, next to the admission limits.
    body = requests.get(f"{start_api(procs, env)}/stats", timeout=10).json()
    assert body["refreshed_at"] >= first
    assert body["queues"]["cpu"] == {"length": 0, "limit": 10_000}
    assert body["dead_letters"] == 1

"""``workload-traffic`` against the real API and workers: a realistic mix, then a clean Ctrl-C."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

from tests.support.procs import CeleryWorker, ProcessTracker, RedisServer, wait_until
from tests.support.workload_stack import ALL_QUEUES, BIN, base_env, start_api


def summary_of(output: str) -> dict[str, object]:
    return json.loads(output.strip().splitlines()[-1])


def test_traffic_sends_the_mix_at_the_rate_and_stops_on_ctrl_c(
    procs: ProcessTracker, redis_server: RedisServer, tmp_path: Path
) -> None:
    env = base_env(redis_server, tmp_path, WORKLOAD_IMAGE_MAX_RETRIES="1")
    worker = CeleryWorker(procs, env, queues=[*ALL_QUEUES, "dead_letter"], concurrency=2)
    worker.start(wait=False)
    api = start_api(procs, env)
    worker.wait_ready()

    done = subprocess.run(
        [str(BIN / "workload-traffic"), "--api-url", api, "--rate", "20", "--duration", "3",
         "--seed", "7", "--failure-ratio", "0.5", "--status-every", "0.5"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = summary_of(done.stdout)
    assert 55 <= summary["sent"] <= 61, summary
    assert summary["errors"] == 0 and summary["unexpected_4xx"] == 0, summary
    assert summary["throttled"] == 0, summary  # far below the default backlog limits
    assert summary["accepted"] > 20 and summary["rejected_as_expected"] > 0, summary
    assert set(summary["by_kind"]) == {"report", "email", "thumb", "status", "invalid"}
    assert done.stderr.count("traffic:") >= 5  # progress lines

    # Failing thumbnails and reports end up as dead letters; good ones as thumbnails.
    data = redis_server.client()
    wait_until(lambda: data.hlen("workload:dlq:letters") > 0, timeout=30, message="dead letters")
    wait_until(lambda: list((tmp_path / "thumbs").glob("*.png")), timeout=30, message="thumbs")

    # Forever (--duration 0) until Ctrl-C: exits cleanly with a summary.
    forever = procs.start(
        [str(BIN / "workload-traffic"), "--api-url", api, "--rate", "10", "--status-every", "0.2"],
        "traffic",
    )
    wait_until(lambda: "sent=5" in forever.log_text(), timeout=20, message="traffic running")
    assert forever.proc is not None
    forever.proc.send_signal(signal.SIGINT)
    assert forever.proc.wait(timeout=15) == 0
    assert summary_of(forever.log_text())["sent"] >= 5
    assert "Traceback" not in forever.log_text()


def test_traffic_says_clearly_when_the_api_is_not_there(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(BIN / "workload-traffic"), "--api-url", "http://127.0.0.1:9", "--rate", "20",
         "--duration", "0.5", "--timeout", "1"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1
    assert "never answered" in done.stderr
    assert "Traceback" not in done.stderr


def test_traffic_rejects_a_bad_mix() -> None:
    done = subprocess.run(
        [str(BIN / "workload-traffic"), "--mix", "report=2,lunch=1"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "unknown kind 'lunch'" in done.stderr

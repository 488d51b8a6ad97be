"""The README's main command: the whole stack comes up, runs a job, and leaves nothing behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.support.exporter import http_get, parse
from tests.support.procs import ROOT, free_port, wait_until

PORTS = ("redis", "api", "exporter", "prometheus", "alertmanager", "smtp", "images", "webhook")


def processes_of(stack_id: str) -> list[int]:
    """Pids whose environment carries the stack's id (every child the stack started)."""
    marker = f"CELERY_OBSERVATORY_STACK={stack_id}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:  # gone, or not ours to read
                continue
    return found


def post_json(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, json.loads(response.read())


@pytest.mark.e2e
@pytest.mark.slow
def test_stack_runs_a_job_end_to_end_and_stops_cleanly(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ports = {name: free_port() for name in PORTS}
    stack_id = f"test-{uuid.uuid4().hex[:8]}"
    argv = [str(ROOT / "scripts" / "stack"), "--state-dir", str(tmp_path / "state"), "--rate", "1"]
    for name, port in ports.items():
        argv += [f"--{name}-port", str(port)]
    log = tmp_path / "stack.log"
    with open(log, "wb") as out:
        stack = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "CELERY_OBSERVATORY_STACK": stack_id},
        )
    api = f"http://127.0.0.1:{ports['api']}"
    exporter = f"http://127.0.0.1:{ports['exporter']}"
    prometheus = f"http://127.0.0.1:{ports['prometheus']}"
    try:
        wait_until(
            lambda: "Ctrl-C stops everything" in log.read_text(),
            timeout=120,
            interval=0.5,
            message="the stack to start",
        )
        status, job = post_json(f"{api}/report", {"user_id": 7, "data": {"size": 50}})
        assert status == 202
        wait_until(
            lambda: (
                json.loads(http_get(f"{api}/status/{job['job_id']}")[1])["status"] == "succeeded"
            ),
            timeout=60,
            message="the report job to succeed",
        )
        wait_until(
            lambda: (
                parse(http_get(f"{exporter}/metrics")[1]).total(
                    "celery_task_succeeded_total", name="workload.tasks.generate_report"
                )
                >= 1
            ),
            timeout=30,
            message="the exporter to count the success",
        )
        query = urllib.parse.urlencode({"query": 'up{job="celery-exporter"}'})

        def scraped() -> bool:
            result = json.loads(http_get(f"{prometheus}/api/v1/query?{query}")[1])["data"]
            return any(r["value"][1] == "1" for r in result["result"])

        wait_until(scraped, timeout=60, interval=1, message="Prometheus to scrape the exporter")
        wait_until(
            lambda: "workers 5/5 up" in log.read_text(), timeout=30, message="the status line"
        )
        assert len(processes_of(stack_id)) >= 10
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- stack output:\n{log.read_text()[-4000:]}") from None
    finally:
        stack.send_signal(signal.SIGINT)
        try:
            code = stack.wait(timeout=60)
        except subprocess.TimeoutExpired:
            stack.kill()
            raise
        leftovers = processes_of(stack_id)
        for pid in leftovers:  # never leak into the next test, even on failure
            os.kill(pid, signal.SIGKILL)
    assert code == 0, log.read_text()[-3000:]
    assert leftovers == [], f"processes left behind: {leftovers}"
    assert "nothing left running" in log.read_text()


def test_missing_binary_is_named_with_how_to_install_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = {**os.environ, "PATH": f"{Path(os.sys.executable).parent}:/nonexistent"}
    result = subprocess.run(
        [os.sys.executable, str(ROOT / "scripts" / "stack.py"), "--state-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 1
    assert "redis-server is not installed: sudo apt-get install redis-server" in result.stderr

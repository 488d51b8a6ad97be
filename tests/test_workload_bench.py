"""The article's benchmark script runs end to end (small N) and writes its JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support.procs import ROOT


def test_article_benchmark_runs_with_its_own_redis_and_worker(tmp_path: Path) -> None:
    out = tmp_path / "article.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "article.py"), "-n", "300", "--redis-server",
         "--worker", "-P solo", "--out", str(out), "--timeout", "60"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["tasks"] == 300
    assert record["tasks_per_second"] > 0
    assert "-P solo" in record["worker_commands"][0]
    assert "tasks/s" in done.stdout


# The guarantees the stock baseline must share with the workload, or the comparison is unfair.
GUARANTEES = (
    "task_serializer", "result_serializer", "accept_content", "result_accept_content",
    "task_acks_late", "worker_prefetch_multiplier", "task_track_started",
    "worker_send_task_events", "task_send_sent_event", "result_expires", "task_default_queue",
)  # fmt: skip


def test_the_stock_baseline_has_the_workloads_guarantees_and_none_of_its_code() -> None:
    probe = (
        "import json, sys; from {module} import app; c = app.conf; "
        f"print(json.dumps([[c[k] for k in {GUARANTEES!r}], "
        "c.broker_transport_options['visibility_timeout'], "
        "sorted(m for m in sys.modules if m.startswith('workload'))]))"
    )

    def conf(module: str) -> list[object]:
        done = subprocess.run(
            [sys.executable, "-c", probe.format(module=module)],
            cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        return json.loads(done.stdout)

    stock, workload = conf("bench.stockapp"), conf("workload.app")
    assert stock[:2] == workload[:2]
    assert stock[2] == []  # stock imports nothing of the workload
    assert workload[0][GUARANTEES.index("task_acks_late")] is True


def test_a_stock_trial_runs_its_own_workers_and_joins_every_result(tmp_path: Path) -> None:
    from dataclasses import asdict

    from bench.workload import SETTINGS

    stock = SETTINGS["stock"]
    assert stock.app_module == "bench.stockapp"
    out = tmp_path / "trial.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "workload.py"), "trial",
         "--setting", json.dumps(asdict(stock)), "-n", "200", "--timeout", "60",
         "--out", str(out)],
        capture_output=True, text=True, timeout=180, cwd=ROOT,
    )  # fmt: skip
    record = json.loads(out.read_text())
    assert "error" not in record, (record, done.stderr[-2000:])
    assert record["tasks"] == 200 and record["tasks_per_second"] > 0
    assert "-A bench.stockapp worker" in record["worker_commands"][0]
    assert record["results_stored"] >= 200  # every result stored, as the workload does

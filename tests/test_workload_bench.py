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

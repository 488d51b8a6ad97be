"""The benchmarks' own logic: e2e's accounting and the workload settings (no timing here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from bench.e2e import BUFFER_KILL, account, metric_sums, subscribers
from bench.workload import SETTINGS
from tests.support.procs import ROOT

N = 1000


def page(succeeded: int = N, dropped: int = 0, failed: int = 0) -> str:
    """A /metrics page as the exporter writes it, split over two workers."""
    lines = []
    for kind, total in (("sent", N), ("received", N), ("started", N), ("succeeded", succeeded)):
        lines += [
            f"# TYPE celery_task_{kind}_total counter",
            f'celery_task_{kind}_total{{name="t",hostname="a@h",queue_name="default"}} '
            f"{total - total // 3}",
            f'celery_task_{kind}_total{{name="t",hostname="b@h",queue_name="default"}} '
            f"{total // 3}",
            f'celery_task_{kind}_created{{name="t",hostname="a@h",queue_name="default"}} 1.7e9',
        ]
    lines += [
        "# TYPE celery_task_failed_total counter",
        f'celery_task_failed_total{{name="t",hostname="a@h",queue_name="default",'
        f'exception=""}} {failed}',
        "# TYPE celery_exporter_events_dropped_total counter",
        f"celery_exporter_events_dropped_total {dropped}",
    ]
    return "\n".join(lines) + "\n"


def failing(checks: list) -> list[str]:
    return [c.what for c in checks if not c.ok]


def test_an_exact_run_passes_every_check() -> None:
    sums = metric_sums(page())
    assert sums["celery_task_succeeded_total"] == N  # summed over label sets, not _created
    assert failing(account(N, sums, N, [5], [5, 9], "")) == []


def test_each_kind_of_loss_fails_its_own_check() -> None:
    assert failing(account(N, metric_sums(page(succeeded=N - 1)), N, [5], [5], "")) == [
        "celery_task_succeeded_total"
    ]
    assert failing(account(N, metric_sums(page(dropped=3)), N, [5], [5], "")) == [
        "celery_exporter_events_dropped_total"
    ]
    assert failing(account(N, metric_sums(page(failed=1)), N, [5], [5], "")) == [
        "celery_task_failed_total"
    ]
    assert failing(account(N, metric_sums(page()), N + 1, [5], [5], "")) == [
        "tasks the workers ran (inspect stats)",
        *(f"celery_task_{kind}_total" for kind in ("received", "started", "succeeded")),
    ]


def test_a_reconnected_subscriber_is_caught() -> None:
    sums = metric_sums(page())
    assert failing(account(N, sums, N, [5], [12], "")) == [
        "exporter's subscriber CLIENT ID after == before"
    ]
    killed = (
        f"Client id=5 addr=127.0.0.1:1 scheduled to be closed ASAP for overcoming of {BUFFER_KILL}."
    )
    assert failing(account(N, sums, N, [5], [5], killed)) == [
        "output-buffer kills in the Redis log"
    ]
    assert "pattern subscribers before the run" in failing(account(N, sums, N, [], [], ""))


def test_subscribers_are_the_clients_with_a_pattern_subscription() -> None:
    clients = [
        {"id": "3", "psub": "0", "cmd": "llen"},
        {"id": "5", "psub": "1", "cmd": "psubscribe"},
        {"id": "8", "psub": "1", "cmd": "ping"},  # an idle subscriber still counts
    ]
    assert subscribers(clients) == [5, 8]


def test_settings_use_the_workload_app_unless_a_guarantee_is_dropped() -> None:
    assert SETTINGS["default"].app_module == "workload.app"
    assert SETTINGS["prefetch-4"].env()["WORKLOAD_PREFETCH_MULTIPLIER"] == "4"
    assert SETTINGS["events-off"].env()["WORKLOAD_TASK_EVENTS"] == "false"
    assert SETTINGS["results-off"].app_module == "bench.benchapp"
    assert SETTINGS["fast"].env()["BENCH_ACK_EMULATION"] == "false"


def test_benchapp_applies_the_overrides_and_leaves_the_workload_alone() -> None:
    probe = (
        "import json; from {module} import app; c = app.conf; "
        "print(json.dumps([c.task_acks_late, c.task_ignore_result, c.task_track_started, "
        "c.broker_transport_options.get('ack_emulation', True)]))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), **SETTINGS["fast"].env()}

    def conf(module: str) -> list[bool]:
        done = subprocess.run(
            [sys.executable, "-c", probe.format(module=module)],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        return json.loads(done.stdout)

    assert conf("bench.benchapp") == [False, True, False, False]
    assert conf("workload.app") == [True, False, True, True]


def test_the_scrape_bench_times_prometheus_openmetrics_beside_text(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A tiny run of bench/scrape.py: both requests, both phases, and the "prometheus" one
    really served OpenMetrics (the path Prometheus takes), the "text" one text."""
    argv = [sys.executable, "bench/scrape.py", "--series", "100", "--consumers", "exporter"]
    argv += ["--scrapes", "3", "--ingest-rate", "2000"]
    env = {**os.environ, "BENCH_OUT": str(tmp_path)}
    subprocess.run(argv, cwd=ROOT, env=env, check=True, timeout=120, capture_output=True)
    results = json.loads((tmp_path / "scrape.json").read_text())["results"]
    served = {(r["phase"], r["request"]): r["served"] for r in results}
    assert served == {
        ("idle", "prometheus"): "application/openmetrics-text",
        ("idle", "text"): "text/plain",
        ("ingest", "prometheus"): "application/openmetrics-text",
        ("ingest", "text"): "text/plain",
    }
    assert all(r["series"] >= 100 and r["p50_ms"] > 0 for r in results)

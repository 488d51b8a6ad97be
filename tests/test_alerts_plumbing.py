"""Prometheus -> rules -> Alertmanager -> webhook, with a static /metrics page standing in for
the exporter: proves the generated configs and the fast rules work with the real binaries,
and that an alert arrives within the time its rule promises (and resolves)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from alerts.settings import duration_seconds, fast
from tests.support.catalog import committed_alerts
from tests.support.procs import ProcessTracker, wait_until
from tests.support.prom import Alertmanager, Prometheus, WebhookReceiver

pytestmark = pytest.mark.e2e

SETTINGS = fast()
SCRAPE_SECONDS = 1.0


class StaticMetrics:
    """Serves whatever text ``body`` holds at /metrics."""

    def __init__(self) -> None:
        self.body = ""
        page = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                data = page.body.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.target = f"127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


HOST = 'hostname="cpu@static"'


def worker_page(state: str) -> str:
    """One worker in ``state`` (online, offline, busy, lost), as the exporter serves it."""
    lines = ["# TYPE celery_worker_state gauge"]
    for name in ("online", "offline", "busy", "lost"):
        value = int(name == state)
        lines.append(f'celery_worker_state{{{HOST},state="{name}"}} {value}')
    up = int(state == "online")
    return "\n".join(
        [
            *lines,
            "# TYPE celery_worker_up gauge",
            f"celery_worker_up{{{HOST}}} {up}",
            "# TYPE celery_worker_last_heartbeat_timestamp_seconds gauge",
            f"celery_worker_last_heartbeat_timestamp_seconds{{{HOST}}} {time.time()}",
            "",
        ]
    )


@pytest.fixture
def metrics_page() -> Iterator[StaticMetrics]:
    page = StaticMetrics()
    page.body = worker_page("online")
    yield page
    page.close()


def promised_seconds(for_: str) -> float:
    """What a rule promises: its for:, plus one scrape and one evaluation on each side of it,
    plus a second for Alertmanager (group_wait 0s) and the webhook."""
    evaluation = duration_seconds(SETTINGS.evaluation_interval)
    return duration_seconds(for_) + 2 * (SCRAPE_SECONDS + evaluation) + 1.0


def test_alert_travels_from_rule_to_webhook_in_time_and_resolves(
    procs: ProcessTracker, tmp_path: Path, metrics_page: StaticMetrics
) -> None:
    with WebhookReceiver() as webhook:
        manager = Alertmanager(procs, tmp_path / "am", webhook.url).start()
        prometheus = Prometheus(
            procs, tmp_path / "prom", [metrics_page.target], SETTINGS, manager.url
        ).start()
        wait_until(prometheus.targets_up, timeout=15, message="static target scraped")
        wait_until(
            lambda: prometheus.query('celery_worker_up{hostname="cpu@static"} == 1'),
            timeout=10,
            message="worker up in Prometheus",
        )
        health = prometheus.rule_health()
        assert health and all(state != "err" for _, state, _ in health), health

        # A graceful departure (worker-offline) is not an outage: the shipped expression
        # leaves it out, and for the whole time the rule would take to fire, nothing does.
        metrics_page.body = worker_page("offline")
        wait_until(
            lambda: prometheus.query('celery_worker_state{state="offline"} == 1'),
            timeout=10,
            message="the offline worker in Prometheus",
        )
        (rule,) = [r for r in committed_alerts() if r["alert"] == "CeleryWorkerDown"]
        assert not prometheus.query(rule["expr"])
        watch_until = time.monotonic() + promised_seconds(SETTINGS.worker_down_for)
        while time.monotonic() < watch_until:  # an observation window, polled
            assert not prometheus.alert_states("CeleryWorkerDown")
            assert not webhook.alerts("CeleryWorkerDown")
            time.sleep(0.5)

        metrics_page.body = worker_page("lost")
        fault_at = time.monotonic()
        arrived_at, alert = webhook.wait_for("CeleryWorkerDown", timeout=30, hostname="cpu@static")
        took, limit = arrived_at - fault_at, promised_seconds(SETTINGS.worker_down_for)
        assert took <= limit, f"CeleryWorkerDown took {took:.1f}s > {limit:.1f}s"
        assert alert["labels"]["severity"] == "warning"
        assert alert["labels"]["job"] == "celery-exporter"
        assert alert["annotations"]["runbook_url"].endswith("/CeleryWorkerDown.md")
        assert "last heard" in alert["annotations"]["description"]

        metrics_page.body = worker_page("online")
        webhook.wait_for("CeleryWorkerDown", timeout=30, status="resolved")

        # The exporter itself disappearing is an alert too.
        metrics_page.close()
        stopped_at = time.monotonic()
        arrived_at, alert = webhook.wait_for("CeleryExporterDown", timeout=30)
        took, limit = arrived_at - stopped_at, promised_seconds(SETTINGS.exporter_down_for)
        assert took <= limit, f"CeleryExporterDown took {took:.1f}s > {limit:.1f}s"
        # One alert for the job (no replica answers), naming the target that fails.
        assert alert["labels"]["job"] == "celery-exporter"
        assert metrics_page.target in alert["annotations"]["description"]
        assert alert["annotations"]["runbook_url"].startswith("https://")

"""A running stack as the faults and the control socket see it: its parts and its URLs."""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from alerts.settings import AlertSettings
from stack.alerting import AlertConfig, Timing
from stack.components import Options
from stack.ports import HOST
from stack.servers import AlertLog
from stack.supervisor import Supervisor


@dataclass
class Runtime:
    opts: Options
    supervisor: Supervisor
    alert_log: AlertLog
    alerts: AlertConfig
    settings: AlertSettings
    timing: Timing
    fast: bool
    # Where the web UIs are: Debian's prometheus has only the classic UI under /classic, and
    # Debian's alertmanager no UI at all (its API still answers). Set by detect_uis().
    prometheus_ui: str | None = ""
    alertmanager_ui: bool = True

    def url(self, port: str, path: str = "") -> str:
        return f"http://{HOST}:{getattr(self.opts.ports, port)}{path}"

    def detect_uis(self) -> None:
        """Find out which web UIs this machine's Prometheus and Alertmanager serve."""
        if _answers(self.url("prometheus", "/alerts")):
            self.prometheus_ui = ""
        elif _answers(self.url("prometheus", "/classic/alerts")):
            self.prometheus_ui = "/classic"
        else:
            self.prometheus_ui = None
        root = " ".join(_body(self.url("alertmanager", "/")).split())
        self.alertmanager_ui = "does not include a web application" not in root

    def graph_url(self, query: str) -> str:
        """Prometheus' graph of ``query`` over the last 15 minutes (or its API's answer)."""
        if self.prometheus_ui is None:
            return self.url(
                "prometheus", "/api/v1/query?" + urllib.parse.urlencode({"query": query})
            )
        params = urllib.parse.urlencode({"g0.expr": query, "g0.tab": "0", "g0.range_input": "15m"})
        return self.url("prometheus", f"{self.prometheus_ui}/graph?{params}")

    def prometheus_alerts_url(self) -> str:
        if self.prometheus_ui is None:
            return self.url("prometheus", "/api/v1/alerts")
        return self.url("prometheus", f"{self.prometheus_ui}/alerts")

    def alertmanager_url(self, alert: str | None = None) -> str:
        """Alertmanager's alerts (of one name), in its UI or else from its API."""
        if self.alertmanager_ui:
            query = "?filter=" + urllib.parse.quote(f'{{alertname="{alert}"}}') if alert else ""
            return self.url("alertmanager", f"/#/alerts{query}")
        query = "?" + urllib.parse.urlencode({"filter": f'alertname="{alert}"'}) if alert else ""
        return self.url("alertmanager", f"/api/v2/alerts{query}")

    def runbook_url(self, alert: str) -> str:
        return self.url("webhook", f"/runbooks/{alert}.md")

    def status(self) -> dict[str, Any]:
        """What ``scripts/stack status`` shows (and the tests read)."""
        return {
            "stack_id": self.opts.stack_id,
            "state_dir": str(self.opts.state),
            "fast": self.fast,
            "components": self.supervisor.snapshot(),
            "alerts": self.alert_log.as_json(),
            "urls": {
                "api": self.url("api"),
                "status_page": self.url("exporter", "/"),
                "prometheus": self.prometheus_alerts_url(),
                "alertmanager": self.alertmanager_url(),
                "runbooks": self.url("webhook", "/runbooks/"),
                "images": self.url("images", "/images/"),
            },
        }


def _body(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - our own URLs
            return response.read(65536).decode(errors="replace")
    except (OSError, urllib.error.URLError):
        return ""


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - our own URLs
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False

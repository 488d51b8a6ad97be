"""The stack's in-process HTTP servers.

- On ``--webhook-port``: Alertmanager's webhook receiver (``POST /alerts``), which records
  every notification for the status line, ``scripts/stack status`` and the faults, and the
  runbooks (``GET /runbooks/<Alert>.md``), which the stack's alert rules link to.
- On ``--images-port``: sample images for thumbnails (``GET /images/<W>x<H>.png``, any other
  name is 320x240, plus the traffic generator's scripted failures), served by the traffic
  generator's own :class:`workload.traffic.ImageServer`; here so that the docs' ``/thumb``
  example works with or without traffic.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from stack.ports import HOST

RUNBOOKS = Path(__file__).resolve().parents[1] / "alerts" / "runbooks"
RUNBOOK_NAME = re.compile(r"^[A-Za-z0-9_-]+\.md$")
MAX_BODY = 1 << 20
MAX_NOTIFICATIONS = 2000


@dataclass(frozen=True)
class Notification:
    """One alert in one webhook notification."""

    alertname: str
    status: str  # firing or resolved
    labels: dict[str, str]
    summary: str
    received: float  # time.monotonic()
    received_at: float  # time.time()


class AlertLog:
    """What Alertmanager's webhook delivered: every notification, and which alerts fire now."""

    def __init__(self, on_change: Callable[[Notification], None]) -> None:
        self.on_change = on_change
        self.lock = threading.Lock()
        # The most recent ones: Alertmanager repeats firing alerts, a stack may run for weeks.
        self.notifications: deque[Notification] = deque(maxlen=MAX_NOTIFICATIONS)
        self.firing: dict[str, Notification] = {}  # by Alertmanager's fingerprint

    def record(self, payload: dict[str, Any]) -> None:
        for alert in payload.get("alerts", []):
            labels = {str(k): str(v) for k, v in alert.get("labels", {}).items()}
            note = Notification(
                alertname=labels.get("alertname", "?"),
                status=str(alert.get("status", "?")),
                labels=labels,
                summary=str(alert.get("annotations", {}).get("summary", "")),
                received=time.monotonic(),
                received_at=time.time(),
            )
            key = str(alert.get("fingerprint") or sorted(labels.items()))
            with self.lock:
                was_firing = key in self.firing
                self.notifications.append(note)
                if note.status == "firing":
                    self.firing[key] = note
                else:
                    self.firing.pop(key, None)
            if (note.status == "firing") != was_firing:
                self.on_change(note)

    def delivered(self, alertname: str, since: float, **labels: str) -> bool:
        """Whether ``alertname`` (with these labels) was delivered firing after ``since``."""
        with self.lock:
            return any(
                n.alertname == alertname
                and n.status == "firing"
                and n.received >= since
                and all(n.labels.get(k) == v for k, v in labels.items())
                for n in self.notifications
            )

    def firing_names(self) -> list[str]:
        with self.lock:
            return sorted({n.alertname for n in self.firing.values()})

    def as_json(self) -> dict[str, Any]:
        with self.lock:
            return {
                "firing": sorted({n.alertname for n in self.firing.values()}),
                "notifications": [
                    {
                        "alertname": n.alertname,
                        "status": n.status,
                        "labels": n.labels,
                        "summary": n.summary,
                        "received_at": n.received_at,
                    }
                    for n in self.notifications
                ],
            }


def stack_server(port: int, alert_log: AlertLog) -> ThreadingHTTPServer:
    """Alertmanager's webhook and the runbooks, on 127.0.0.1:``port``, in a daemon thread."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if self.path.rstrip("/") != "/alerts" or not 0 < length <= MAX_BODY:
                self._reply(404 if self.path.rstrip("/") != "/alerts" else 400, "text/plain", b"")
                return
            try:
                payload = json.loads(self.rfile.read(length))
            except ValueError:
                self._reply(400, "text/plain", b"not JSON\n")
                return
            if isinstance(payload, dict):
                alert_log.record(payload)
            self._reply(200, "text/plain", b"ok\n")

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            name = path.rsplit("/", 1)[-1]
            if path.rstrip("/") == "/runbooks":
                listing = "".join(
                    f"{runbook.name}\n" for runbook in sorted(RUNBOOKS.glob("Celery*.md"))
                )
                self._reply(200, "text/plain; charset=utf-8", listing.encode())
            elif path.startswith("/runbooks/") and RUNBOOK_NAME.match(name):
                runbook = RUNBOOKS / name
                if runbook.is_file():
                    self._reply(200, "text/plain; charset=utf-8", runbook.read_bytes())
                else:
                    self._reply(404, "text/plain", f"no runbook {name}\n".encode())
            else:
                self._reply(404, "text/plain", b"POST /alerts (webhook), GET /runbooks/\n")

        def _reply(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((HOST, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="stack-server", daemon=True).start()
    return server


def image_server(port: int) -> Any:
    """The traffic generator's image server on 127.0.0.1:``port`` (started; ``.stop()``)."""
    from workload.traffic import ImageServer  # Pillow: only imported when the stack runs

    return ImageServer(HOST, port).start()

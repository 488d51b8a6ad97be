"""What the user sees while the stack runs: one live status line, with events printed above it.

On a terminal the status line is redrawn in place and each event (a restart, a fault, an alert
reaching Alertmanager's receiver) is a line of its own above it. Piped to a file, both are
plain lines, so logs and tests can read them.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
import urllib.request
from typing import Any, TextIO

from stack.supervisor import Supervisor


class Console:
    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.lock = threading.Lock()
        self.line = ""

    def event(self, text: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        with self.lock:
            if self.tty:
                self._write(f"\r\x1b[K{stamp} {text}\n{self.line}")
            else:
                self._write(f"{stamp} {text}\n")

    def status(self, line: str) -> None:
        with self.lock:
            self.line = line
            self._write(f"\r\x1b[K{line}" if self.tty else f"{line}\n")

    def say(self, text: str) -> None:
        """A plain line, below the status line (which it ends)."""
        with self.lock:
            if self.tty and self.line:
                self._write("\n")
            self.line = ""
            self._write(f"{text}\n")

    def _write(self, text: str) -> None:
        # A closed terminal (SIGHUP) must not stop the shutdown that follows.
        with contextlib.suppress(OSError, ValueError):
            self.stream.write(text)
            self.stream.flush()


def status_line(
    exporter_url: str, supervisor: Supervisor, firing: list[str], previous: dict[str, Any]
) -> str:
    """Workers, queues, task rates, components down or restarted, and firing alerts."""
    parts = [_tasks(exporter_url, previous)]
    components = supervisor.snapshot()
    held = [f"{c['name']} ({c['held_by']})" for c in components if c["state"] == "held"]
    restarting = [c["name"] for c in components if c["state"] == "restarting"]
    restarted = [f"{c['name']} x{c['restarts']}" for c in components if c["restarts"]]
    if held:
        parts.append("down on purpose: " + ", ".join(held))
    if restarting:
        parts.append("restarting: " + ", ".join(restarting))
    if restarted:
        parts.append("restarts: " + ", ".join(restarted))
    parts.append("alerts: " + (", ".join(firing) or "none"))
    return " | ".join(parts)


def _tasks(exporter_url: str, previous: dict[str, Any]) -> str:
    try:
        with urllib.request.urlopen(f"{exporter_url}/api/status", timeout=2) as response:  # noqa: S310 - our own exporter
            status = json.loads(response.read())
    except (OSError, ValueError) as exc:
        return f"exporter unreachable ({exc})"
    totals = status["totals"]
    rates = ""
    if previous:
        elapsed = max(0.001, status["now"] - previous["now"])
        ok = (totals["succeeded"] - previous["totals"]["succeeded"]) / elapsed
        failed = (totals["failed"] - previous["totals"]["failed"]) / elapsed
        rates = f" ({ok:.1f} ok/s {failed:.1f} failed/s)"
    previous.clear()
    previous.update(status)
    waiting = sum(q["length"] for q in status["queues"])
    up = sum(1 for w in status["workers"] if w["up"])
    broker = "" if status.get("broker_up", True) else "broker DOWN | "
    return (
        f"{broker}workers {up}/{len(status['workers'])} up | {waiting} waiting"
        f" | {totals['succeeded']} succeeded {totals['failed']} failed{rates}"
    )

"""One alerting rule as the generator builds it."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class Alert:
    """One alerting rule; ``summary`` and ``description`` are Go templates.

    Several rules may share a name (one per task with its own threshold, say): Prometheus
    allows it, and they share one runbook.
    """

    name: str
    expr: str
    for_: str
    severity: str
    summary: str
    description: str

    def to_rule(self, runbook_base_url: str) -> dict[str, Any]:
        return {
            "alert": self.name,
            "expr": self.expr,
            "for": self.for_,
            "labels": {"severity": self.severity},
            "annotations": {
                "summary": self.summary,
                "description": self.description,
                "runbook_url": runbook_url(runbook_base_url, self.name),
            },
        }


def runbook_url(base_url: str, alert: str) -> str:
    """``<base>/<Alert>.md``: where the runbook of ``alert`` opens."""
    return f"{base_url.rstrip('/')}/{alert}.md"


def pct(ratio: float) -> str:
    """0.05 -> ``5%``; 0.999 -> ``99.9%``."""
    return f"{round(ratio * 100, 6):g}%"

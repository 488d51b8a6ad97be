"""Generate the Grafana dashboards (JSON committed next to this file) with grafanalib.

    python dashboards/generate.py            # rewrite the JSON files
    python dashboards/generate.py --check    # exit 1 if a committed file differs

The dashboards read the recording rules of alerts/celery-observatory.rules.yml by name and
draw the alert thresholds of alerts/settings.py, so both stay in step with the rules.
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grafanalib._gen import write_dashboard
from grafanalib.core import Dashboard

from alerts.generated import write_or_check
from dashboards import exporter_health, overview, task_detail

HERE = Path(__file__).resolve().parent
DASHBOARDS: dict[str, Callable[[], Dashboard]] = {
    "celery-overview.json": overview.build,
    "celery-task-detail.json": task_detail.build,
    "celery-exporter-health.json": exporter_health.build,
}


def render(build: Callable[[], Dashboard]) -> str:
    """The dashboard as Grafana JSON (sorted keys, 2-space indent, trailing newline)."""
    out = io.StringIO()
    write_dashboard(build(), out)
    return out.getvalue()


def generated_files() -> dict[str, str]:
    return {name: render(build) for name, build in DASHBOARDS.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if the JSON is out of date")
    parser.add_argument("--out-dir", type=Path, default=HERE, help="where the JSON files live")
    args = parser.parse_args(argv)
    files = generated_files()
    return write_or_check(files, args.out_dir, args.check, "python dashboards/generate.py")


if __name__ == "__main__":
    sys.exit(main())

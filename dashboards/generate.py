"""Generate the Grafana dashboards (JSON committed next to this file) with grafanalib.

    python dashboards/generate.py            # rewrite the JSON files
    python dashboards/generate.py --check    # exit 1 if a committed file differs

The dashboards read the recording rules of alerts/celery-observatory.rules.yml by name and
draw the alert thresholds of alerts/settings.py, so both stay in step with the rules.
"""

from __future__ import annotations

import argparse
import difflib
import io
import sys
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grafanalib._gen import write_dashboard
from grafanalib.core import Dashboard

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


def _check(files: dict[str, str], out_dir: Path) -> int:
    stale = []
    for name, content in files.items():
        path = out_dir / name
        current = path.read_text() if path.exists() else ""
        if current != content:
            stale.append(name)
            diff = difflib.unified_diff(
                current.splitlines(keepends=True),
                content.splitlines(keepends=True),
                fromfile=f"{path} (committed)",
                tofile=f"{path} (generated)",
                n=1,
            )
            sys.stdout.writelines(list(diff)[:200])
    if stale:
        print(
            f"out of date: {', '.join(stale)}; run python dashboards/generate.py",
            file=sys.stderr,
        )
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if the JSON is out of date")
    parser.add_argument("--out-dir", type=Path, default=HERE, help="where the JSON files live")
    args = parser.parse_args(argv)
    files = generated_files()
    if args.check:
        return _check(files, args.out_dir)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (args.out_dir / name).write_text(content)
        print(f"wrote {args.out_dir / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

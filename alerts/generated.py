"""Write generated files, or check that the committed ones are up to date (``--check``).

Shared by alerts/generate.py and dashboards/generate.py: on a difference it prints a
unified diff (at most ``MAX_DIFF_LINES`` lines) and names the stale files on stderr.
"""

from __future__ import annotations

import difflib
import sys
from pathlib import Path

MAX_DIFF_LINES = 200


def write_or_check(files: dict[str, str], out_dir: Path, check: bool, command: str) -> int:
    """Exit status: 0 when written (or up to date), 1 when ``check`` finds stale files."""
    if not check:
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, content in files.items():
            (out_dir / name).write_text(content)
            print(f"wrote {out_dir / name}")
        return 0
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
            )
            sys.stdout.writelines(list(diff)[:MAX_DIFF_LINES])
    if stale:
        print(f"out of date: {', '.join(stale)}; run {command}", file=sys.stderr)
        return 1
    return 0

"""Regenerate the README's reference sections from their single sources of truth.

    python scripts/gen_docs.py           # rewrite README.md in place
    python scripts/gen_docs.py --check   # exit 1 if README.md is out of date (run by the tests)

Sections between ``<!-- BEGIN GENERATED: name -->`` and ``<!-- END GENERATED: name -->``:
``metrics`` from exporter/metrics.py and ``flags`` from the exporter's click command.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from exporter.cli import flags_table  # noqa: E402
from exporter.metrics import markdown_table  # noqa: E402

README = ROOT / "README.md"
SECTIONS: dict[str, Callable[[], str]] = {"metrics": markdown_table, "flags": flags_table}


def render(text: str) -> str:
    for name, make in SECTIONS.items():
        pattern = re.compile(
            rf"(<!-- BEGIN GENERATED: {name} -->\n).*?(<!-- END GENERATED: {name} -->)", re.S
        )
        if not pattern.search(text):
            raise SystemExit(f"README.md has no generated section {name!r}")
        text = pattern.sub(lambda m, make=make: m.group(1) + make() + m.group(2), text)
    return text


def main() -> int:
    current = README.read_text()
    wanted = render(current)
    if "--check" in sys.argv[1:]:
        if wanted != current:
            print("README.md is out of date: run python scripts/gen_docs.py", file=sys.stderr)
            return 1
        return 0
    README.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())

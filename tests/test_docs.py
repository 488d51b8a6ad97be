"""The README's generated reference and its two commands stay true."""

from __future__ import annotations

import subprocess

from exporter import metrics
from tests.support.procs import PYTHON, ROOT


def test_generated_flag_and_metric_tables_are_up_to_date() -> None:
    result = subprocess.run([PYTHON, str(ROOT / "scripts" / "gen_docs.py"), "--check"],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_readme_documents_every_metric_and_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    for metric in metrics.ALL:
        assert f"`{metric.name}`" in readme, metric.name
    assert "scripts/stack" in readme and "scripts/test" in readme
    # CI runs exactly the README's test command.
    assert (ROOT / ".ci" / "run").read_text().rstrip().endswith("exec scripts/test")

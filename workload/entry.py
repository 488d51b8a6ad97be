"""Console scripts that need the ``workload`` extra (Flask, gunicorn, requests, Pillow, ...).

A plain ``pip install celery-observatory`` installs the exporter's dependencies only. These
entry points import their command lazily, so that without the extra they stop with one line
that names it and exit status 1, instead of a ModuleNotFoundError traceback.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

INSTALL_HINT = "pip install 'celery-observatory[workload]'"
# Top-level modules the workload extra brings (pyproject.toml, [project.optional-dependencies]).
EXTRA_MODULES = frozenset(
    {"flask", "werkzeug", "gunicorn", "requests", "PIL", "email_validator", "idna"}
)


def _command(module: str, script: str) -> Callable[[], None]:
    try:
        command = importlib.import_module(module).main
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").partition(".")[0]
        if missing not in EXTRA_MODULES:
            raise
        sys.stderr.write(
            f"{script}: the '{missing}' module is missing; install the workload extra: "
            f"{INSTALL_HINT}\n"
        )
        sys.exit(1)
    return command


def api() -> None:
    """``workload-api``."""
    _command("workload.api", "workload-api")()


def traffic() -> None:
    """``workload-traffic``."""
    _command("workload.traffic", "workload-traffic")()

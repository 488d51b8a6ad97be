"""Checks shared by the compose and Kubernetes tests: do the commands they run exist?

A container command is only as good as the program and module it names. These helpers answer
that from the repository itself (pyproject.toml's console scripts, the workload's modules),
so a renamed script or module fails the deployment tests, not a user's `up`.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

from tests.support.procs import ROOT

# Programs the image gets from the project's dependencies rather than from [project.scripts].
DEPENDENCY_PROGRAMS = {"celery", "gunicorn"}

# The project's queues and the Celery node name each worker uses (docs/workload.md).
QUEUE_NODES = {
    "cpu": "cpu",
    "io": "io",
    "email": "email",
    "default": "default",
    "dead_letter": "dlq",
}
# Pools the contract fixes; queues not listed use Celery's default (prefork).
QUEUE_POOLS = {"cpu": "prefork", "io": "threads"}


def console_scripts() -> dict[str, str]:
    """[project.scripts] of pyproject.toml: script name -> 'module:function'."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return dict(data["project"]["scripts"])


def module_path(module: str) -> Path | None:
    """The source file of a project module (``workload.app``), or None if there is none."""
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def defines(path: Path, name: str) -> bool:
    """Whether the module at ``path`` defines a top-level function, class or variable ``name``."""
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            if node.name == name:
                return True
        elif isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == name for target in node.targets
        ):
            return True
    return False


def option_value(argv: list[str], *names: str) -> str | None:
    """The value of the first of ``names`` in ``argv`` (``-Q cpu`` or ``--queues=cpu``)."""
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                return argv[i + 1]
            if name.startswith("--") and arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def command_problems(argv: list[str]) -> list[str]:
    """Why ``argv`` would fail to start in the project's image (empty when it is fine)."""
    if not argv:
        return ["empty command"]
    program, scripts = argv[0], console_scripts()
    problems = []
    if program not in scripts and program not in DEPENDENCY_PROGRAMS:
        problems.append(f"{program!r} is neither a console script of pyproject.toml nor celery")
    if program in scripts:
        module, _, function = scripts[program].partition(":")
        path = module_path(module)
        if path is None or not defines(path, function):
            problems.append(f"console script {program} -> {scripts[program]} does not exist")
    if program == "celery":
        app = option_value(argv, "-A", "--app")
        if app is None or module_path(app) is None:
            problems.append(f"celery -A {app!r}: no such module in the repository")
        elif not defines(module_path(app), "app"):  # type: ignore[arg-type]
            problems.append(f"celery -A {app}: the module defines no `app`")
    if program == "gunicorn":
        spec = argv[-1]
        module, _, factory = spec.partition(":")
        path = module_path(module)
        if path is None or not defines(path, factory.removesuffix("()")):
            problems.append(f"gunicorn app {spec!r} does not exist")
    return problems


def worker_problems(argv: list[str]) -> list[str]:
    """Contract checks of a ``celery worker`` command: queue, node name, pool, events."""
    problems = command_problems(argv)
    queue = option_value(argv, "-Q", "--queues")
    if "worker" not in argv or queue not in QUEUE_NODES:
        return [*problems, f"not a worker of one of the project's queues: {argv}"]
    node = option_value(argv, "-n", "--hostname")
    if node != f"{QUEUE_NODES[queue]}@%h":
        problems.append(f"queue {queue}: node name {node!r}, expected {QUEUE_NODES[queue]}@%h")
    pool = option_value(argv, "-P", "--pool") or "prefork"
    if pool != QUEUE_POOLS.get(queue, "prefork"):
        problems.append(f"queue {queue}: pool {pool!r}, expected {QUEUE_POOLS.get(queue)}")
    if "-E" not in argv and "--task-events" not in argv:
        problems.append(f"queue {queue}: worker started without -E sends no task events")
    if queue == "dead_letter" and option_value(argv, "-c", "--concurrency") != "1":
        problems.append("the dead-letter consumer must run with -c 1")
    return problems

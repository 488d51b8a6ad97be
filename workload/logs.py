"""Structured logs (structlog, one JSON object per line) for the workers and the API.

Workers: Celery's own log records go through the same renderer, and every task attempt adds
one line when it ends with task_id, task_name, state, duration and queue (a retried attempt
logs ``task retry`` instead), plus ``task failed`` with the exception on failure.
API: one line per request. ``WORKLOAD_LOG_FORMAT=console`` gives human-readable lines.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, TextIO

import structlog
from celery import signals

_SHARED_PROCESSORS: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def configure(
    level: int | str = "INFO", fmt: str | None = None, stream: TextIO | None = None
) -> None:
    """Route structlog and the standard library's logging to one JSON (or console) handler."""
    fmt = (fmt or os.environ.get("WORKLOAD_LOG_FORMAT", "json")).lower()
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=False)
        if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            # Drop disabled levels before any work: a busy worker logs per task.
            structlog.stdlib.filter_by_level,
            *_SHARED_PROCESSORS,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_SHARED_PROCESSORS,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
    # Our per-task line below replaces Celery's "Task x succeeded in ..." line.
    logging.getLogger("celery.app.trace").setLevel(logging.WARNING)


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)


# --- workers --------------------------------------------------------------------------------
#
# The per-task hooks are plain method calls from the task base class (workload.dlq's
# DeadLetterTask.before_start / after_return), not task_prerun/task_postrun receivers: Celery's
# signal dispatch and a structlog event built only to be dropped cost a few percent of a
# worker's CPU per task (bench/RESULTS.md, "The workload against stock Celery").

_task_log = structlog.get_logger("workload.task")
_task_stdlib_logger = logging.getLogger("workload.task")
# task id -> (start time, the contextvars tokens to reset); a pool thread runs several tasks.
_running: dict[str, tuple[float, Any]] = {}
_MAX_RUNNING = 10_000  # entries of attempts that never returned (ignored/rejected) are dropped


def _on_setup_logging(loglevel: int | str | None = None, **_: Any) -> None:
    configure(level=loglevel or "INFO")


def task_started(task_id: str, task_name: str) -> None:
    """Bind task_id/task_name to every log line of this attempt and start its clock."""
    if len(_running) >= _MAX_RUNNING:
        _running.clear()
    tokens = structlog.contextvars.bind_contextvars(task_id=task_id, task_name=task_name)
    _running[task_id] = (time.monotonic(), tokens)


def task_returned(task_id: str, state: str | None, delivery_info: dict[str, Any] | None) -> None:
    """One ``task finished`` line (state, duration, queue) when INFO is on; unbind."""
    started, tokens = _running.pop(task_id, (None, None))
    if _task_stdlib_logger.isEnabledFor(logging.INFO):
        duration = round(time.monotonic() - started, 6) if started is not None else None
        queue = (delivery_info or {}).get("routing_key")
        _task_log.info("task finished", state=state, duration=duration, queue=queue)
    if tokens is not None:
        structlog.contextvars.reset_contextvars(**tokens)


def _on_failure(task_id: str, exception: BaseException, sender: Any = None, **_: Any) -> None:
    _task_log.error(
        "task failed",
        task_id=task_id,
        task_name=getattr(sender, "name", None),
        exception=type(exception).__name__,
        error=str(exception)[:1000],
        retries=getattr(getattr(sender, "request", None), "retries", None),
    )


def _on_retry(request: Any = None, reason: Any = None, **_: Any) -> None:
    task_id = getattr(request, "id", None)
    _task_log.warning(
        "task retry",
        task_id=task_id,
        task_name=getattr(request, "task", None),
        retries=getattr(request, "retries", None),
        reason=str(reason)[:1000],
    )
    # A retried attempt does not reach after_return: unbind it here.
    _, tokens = _running.pop(task_id, (None, None)) if task_id else (None, None)
    if tokens is not None:
        structlog.contextvars.reset_contextvars(**tokens)


def connect_worker_signals() -> None:
    """Hook the worker's signals (failures and retries only, which are rare); Celery then
    leaves logging to :func:`configure`."""
    signals.setup_logging.connect(_on_setup_logging, weak=False)
    signals.task_failure.connect(_on_failure, weak=False)
    signals.task_retry.connect(_on_retry, weak=False)


# --- API ------------------------------------------------------------------------------------


def install_request_logging(flask_app: Any) -> None:
    """One log line per request: method, path, status, duration."""
    from flask import g, request

    log = structlog.get_logger("workload.api")

    @flask_app.before_request
    def _start_timer() -> None:
        g.request_started = time.monotonic()

    @flask_app.after_request
    def _log_request(response: Any) -> Any:
        started = getattr(g, "request_started", None)
        duration = round(time.monotonic() - started, 6) if started is not None else None
        log.info(
            "request",
            method=request.method,
            path=request.path,
            status=response.status_code,
            duration=duration,
            remote=request.remote_addr,
            job_id=getattr(g, "job_id", None),
        )
        return response

"""Structured logs (structlog, one JSON object per line) for the workers and the API.

Workers: Celery's own log records go through the same renderer, and every task adds one line
when it ends with task_id, task_name, state, duration and, on failure, the exception.
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

_task_log = structlog.get_logger("workload.task")
_started: dict[str, float] = {}


def _on_setup_logging(loglevel: int | str | None = None, **_: Any) -> None:
    configure(level=loglevel or "INFO")


def _on_prerun(task_id: str, task: Any, **_: Any) -> None:
    _started[task_id] = time.monotonic()
    structlog.contextvars.bind_contextvars(task_id=task_id, task_name=task.name)


def _on_postrun(task_id: str, task: Any, state: str | None = None, **_: Any) -> None:
    started = _started.pop(task_id, None)
    duration = round(time.monotonic() - started, 6) if started is not None else None
    queue = (task.request.delivery_info or {}).get("routing_key")
    _task_log.info("task finished", state=state, duration=duration, queue=queue)
    structlog.contextvars.clear_contextvars()


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
    _task_log.warning(
        "task retry",
        task_id=getattr(request, "id", None),
        task_name=getattr(request, "task", None),
        retries=getattr(request, "retries", None),
        reason=str(reason)[:1000],
    )


def connect_worker_signals() -> None:
    """Hook the worker's signals; Celery then leaves logging to :func:`configure`."""
    signals.setup_logging.connect(_on_setup_logging, weak=False)
    signals.task_prerun.connect(_on_prerun, weak=False)
    signals.task_postrun.connect(_on_postrun, weak=False)
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

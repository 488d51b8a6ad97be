"""Structured logs: JSON lines by default, one event per line, secrets masked.

Standard-library loggers (celery, kombu, redis) are routed through the same processors, so
every line the process writes has the same shape, and a broker password never reaches a log
even when a library puts the URL in an exception message.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
import structlog

# scheme://user:password@host -> scheme://user:****@host (also with an empty user)
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)(?P<pw>[^@\s]+)@")


def mask_url(url: str) -> str:
    """The URL with its password replaced by ``****`` (for logs, errors and metrics)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return _URL_PASSWORD.sub(r"\g<head>****@", url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return urlunsplit(parts._replace(netloc=f"{user}:****@{host}{port}"))


def mask_secrets(text: str) -> str:
    """Mask every URL password found anywhere in ``text``."""
    return _URL_PASSWORD.sub(r"\g<head>****@", text)


def _mask_processor(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    for key, value in event_dict.items():
        if isinstance(value, str) and "://" in value:
            event_dict[key] = mask_secrets(value)
    return event_dict


def _json_dumps(obj: Any, **_: Any) -> str:
    return orjson.dumps(obj, default=str).decode()


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    """Set up structlog and the standard library to write one line per event to stderr."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        _mask_processor,
    ]
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=False)
        if fmt == "console"
        else structlog.processors.JSONRenderer(serializer=_json_dumps)
    )
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Libraries are chatty at INFO (every connection); keep them at WARNING unless debugging.
    for noisy in ("celery", "kombu", "amqp", "redis"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))

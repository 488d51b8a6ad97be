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

import orjson
import structlog

# A URL as it appears in a message: a scheme, then everything up to whitespace or the next
# URL of a kombu failover list (``sentinel://a;sentinel://b``). Its userinfo ends at the
# *last* ``@``: a password may contain unencoded ``@ / : # ?`` (Redis's own URL parser
# splits at the last ``@`` too), and cutting at the first one would leak the rest.
_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://(?:(?!;[a-zA-Z][a-zA-Z0-9+.-]*://)\S)*")
_USER_UNSAFE = frozenset("@/?#[]")
MASK = "****"


def _mask_one(match: re.Match[str]) -> str:
    url = match.group(0)
    scheme, _, rest = url.partition("://")
    at = rest.rfind("@")
    if at < 0:
        return url
    userinfo, tail = rest[:at], rest[at:]
    user, colon, _password = userinfo.partition(":")
    if not colon and not _USER_UNSAFE.intersection(user):
        return url  # a user name and no password (amqp://guest@host): nothing secret
    if _USER_UNSAFE.intersection(user):
        return f"{scheme}://{MASK}{tail}"  # userinfo that cannot be parsed: masked whole
    return f"{scheme}://{user}:{MASK}{tail}"


def mask_url(url: str) -> str:
    """The URL with its password replaced by ``****``, everything else exactly as given.

    The user name stays (it helps to see *which* user failed); a userinfo that cannot be
    parsed (an unencoded ``@``, ``/``, ``?`` or ``#`` before the password) is masked whole.
    """
    return mask_secrets(url)


def mask_secrets(text: str) -> str:
    """Mask the password of every URL found anywhere in ``text``."""
    if "://" not in text:
        return text
    return _URL.sub(_mask_one, text)


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

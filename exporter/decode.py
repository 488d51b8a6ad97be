"""Decode the kombu envelopes Celery publishes on its event channels.

An envelope is JSON: ``{"body": <base64 of JSON>, "content-type": "application/json",
"content-encoding": "utf-8", "headers": {...}, "properties": {"body_encoding": "base64",
...}}``. The body is one event dict, or a list of them when the worker batches task events
(routing key ``task.multi``).

Only JSON bodies are decoded. Any other content type (pickle, YAML, msgpack) is rejected by
name before its body is touched: the exporter never deserializes anything but JSON.
"""

from __future__ import annotations

import binascii
from typing import Any

import orjson

JSON_CONTENT_TYPES = frozenset({"application/json", "application/x-json"})
MAX_MESSAGE_BYTES = 8 * 1024 * 1024

_loads = orjson.loads
_JSONDecodeError = orjson.JSONDecodeError
_a2b_base64 = binascii.a2b_base64


# Reasons a message is rejected before its events are read (the metric's reason label).
DECODE_REJECT_REASONS = (
    "oversized",
    "malformed_envelope",
    "content_type",
    "body_encoding",
    "malformed_body",
)


class Rejected(ValueError):
    """A message that cannot be applied; ``reason`` names the metric label."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def decode_envelope(data: bytes | str) -> list[Any] | tuple[Any]:
    """The events in one published message, or :class:`Rejected` with a reason."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise Rejected("oversized")
    try:
        envelope = _loads(data)
    except _JSONDecodeError:
        raise Rejected("malformed_envelope") from None
    if type(envelope) is not dict:
        raise Rejected("malformed_envelope")
    if envelope.get("content-type") not in JSON_CONTENT_TYPES:
        raise Rejected("content_type")
    body = envelope.get("body")
    properties = envelope.get("properties")
    encoding = properties.get("body_encoding") if type(properties) is dict else None
    if encoding == "base64":
        try:
            body = _a2b_base64(body, strict_mode=True)
        except (binascii.Error, ValueError, TypeError):
            raise Rejected("body_encoding") from None
    elif encoding is not None and encoding != "utf-8":
        raise Rejected("body_encoding")
    if type(body) is not bytes and type(body) is not str:
        raise Rejected("malformed_body")
    try:
        events = _loads(body)
    except _JSONDecodeError:
        raise Rejected("malformed_body") from None
    if type(events) is dict:
        return (events,)
    if type(events) is list:
        return events
    raise Rejected("malformed_body")

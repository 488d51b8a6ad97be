"""Celery event envelopes as kombu publishes them on Redis (for tests that publish directly)."""

from __future__ import annotations

import base64
import time
from typing import Any

import orjson

HEARTBEAT_CHANNEL = "/0.celeryev/worker.heartbeat"


def envelope(body: dict[str, Any] | list[dict[str, Any]]) -> bytes:
    """One kombu message: a JSON envelope with a base64 JSON body (an event or a list)."""
    return orjson.dumps(
        {
            "body": base64.b64encode(orjson.dumps(body)).decode(),
            "content-type": "application/json",
            "content-encoding": "utf-8",
            "headers": {},
            "properties": {"body_encoding": "base64", "delivery_tag": "t"},
        }
    )


def heartbeat(hostname: str, processed: int = 0, timestamp: float | None = None) -> bytes:
    return envelope(
        {
            "type": "worker-heartbeat",
            "hostname": hostname,
            "timestamp": time.time() if timestamp is None else timestamp,
            "freq": 2.0,
            "active": 0,
            "processed": processed,
        }
    )


def publish_heartbeats(client: Any, count: int, hostname: str = "flood@test",
                       batch: int = 20_000) -> int:  # fmt: skip
    """PUBLISH ``count`` heartbeats in pipelined batches; returns how many reached a
    subscriber (PUBLISH's reply)."""
    received = 0
    pipe = client.pipeline(transaction=False)
    for start in range(0, count, batch):
        for i in range(start, min(count, start + batch)):
            pipe.publish(HEARTBEAT_CHANNEL, heartbeat(hostname, i))
        received += sum(pipe.execute())
    return received

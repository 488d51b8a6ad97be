"""The exporter's configuration, validated once at startup."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from exporter.httpserver import Limits
from exporter.state import Options

REDIS_SCHEMES = ("redis", "rediss")
RECEIVER_SCHEMES = ("amqp", "amqps", "pyamqp", "librabbitmq")


class ConfigError(ValueError):
    """A configuration mistake, reported as one line before anything starts."""


@dataclass(frozen=True)
class Config:
    broker_url: str = "redis://localhost:6379/0"
    listen_address: str = ":9808"
    web_config_file: str | None = None
    http_limits: Limits = field(default_factory=Limits)
    queues: tuple[str, ...] = ()
    admission_limits: Mapping[str, int] = field(default_factory=dict)  # queue -> backlog limit
    broker_poll_interval: float = 5.0
    retry_interval: float = 0.0  # longest reconnect wait; 0: capped exponential backoff
    inspect_interval: float = 30.0
    inspect_timeout: float = 2.0
    enable_events_interval: float = 0.0
    visibility_timeout: float = 3600.0
    global_keyprefix: str = ""
    # kombu's broker_transport_options (--broker-transport-option key=value, repeatable):
    # master_name and sentinel_kwargs for Sentinel, visibility_timeout, global_keyprefix...
    broker_transport_options: Mapping[str, Any] = field(default_factory=dict)
    # Celery's broker_use_ssl (--broker-ssl-option key=value, repeatable).
    broker_ssl_options: Mapping[str, Any] = field(default_factory=dict)
    metric_prefix: str = "celery_"
    static_labels: Mapping[str, str] = field(default_factory=dict)
    event_source: str = "auto"
    max_backlog_bytes: int = 512 * 1024 * 1024
    wait_for_broker: bool = True
    state: Options = field(default_factory=Options)

    @property
    def scheme(self) -> str:
        return urlsplit(self.broker_url).scheme.lower()

    @property
    def uses_redis_fast_path(self) -> bool:
        if self.event_source == "auto":
            return self.scheme in REDIS_SCHEMES
        return self.event_source == "redis"

    @property
    def redis_db(self) -> int:
        path = urlsplit(self.broker_url).path.strip("/")
        return int(path) if path else 0

    def validate(self) -> Config:
        """Raise :class:`ConfigError` with a precise message; return self when valid."""
        if self.scheme not in REDIS_SCHEMES + RECEIVER_SCHEMES:
            raise ConfigError(
                f"unsupported broker URL scheme {self.scheme + '://' if self.scheme else '(none)'}"
                f": use redis://, rediss:// or amqp://"
            )
        parts = urlsplit(self.broker_url)
        if not parts.hostname and not parts.path.startswith("/") and self.scheme in REDIS_SCHEMES:
            raise ConfigError("broker URL has no host")
        if self.scheme in REDIS_SCHEMES:
            try:
                self.redis_db  # noqa: B018 - validates the /<db> part
            except ValueError:
                raise ConfigError(f"broker URL database {parts.path!r} is not a number") from None
        if self.event_source not in ("auto", "redis", "receiver"):
            raise ConfigError("--event-source must be auto, redis or receiver")
        if self.event_source == "redis" and self.scheme not in REDIS_SCHEMES:
            raise ConfigError("--event-source redis needs a redis:// or rediss:// broker URL")
        for name, value in (
            ("--broker-poll-interval", self.broker_poll_interval),
            ("--visibility-timeout", self.visibility_timeout),
            ("--inspect-timeout", self.inspect_timeout),
        ):
            if value <= 0:
                raise ConfigError(f"{name} must be positive")
        if not re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", self.metric_prefix):
            raise ConfigError(f"--metric-prefix {self.metric_prefix!r} is not a metric name prefix")
        if self.state.max_tracked_tasks < 1:
            raise ConfigError("--max-tracked-tasks must be at least 1")
        return self

"""The exporter's configuration, validated once at startup."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from exporter import broker
from exporter.httpserver import Limits
from exporter.metrics import DEFAULT_PREFIX
from exporter.state import Options

REDIS_SCHEMES = broker.FAST_PATH_SCHEMES  # redis, rediss, sentinel
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
    metric_prefix: str = DEFAULT_PREFIX
    static_labels: Mapping[str, str] = field(default_factory=dict)
    created_series: bool = True  # the _created samples of counters and histograms
    event_source: str = "auto"
    max_backlog_bytes: int = 512 * 1024 * 1024
    wait_for_broker: bool = True
    state: Options = field(default_factory=Options)

    @property
    def scheme(self) -> str:
        return broker.scheme_of(self.broker_url)

    @property
    def uses_redis_fast_path(self) -> bool:
        if self.event_source == "auto":
            return self.scheme in REDIS_SCHEMES
        return self.event_source == "redis"

    @property
    def redis_db(self) -> int:
        return broker.redis_db(self.broker_url)

    def validate(self) -> Config:
        """Raise :class:`ConfigError` with a precise message; return self when valid."""
        if self.scheme in broker.CLUSTER_SCHEMES:
            raise ConfigError(broker.cluster_message(self.broker_url))
        if self.scheme not in REDIS_SCHEMES + RECEIVER_SCHEMES:
            raise ConfigError(
                f"unsupported broker URL scheme {self.scheme + '://' if self.scheme else '(none)'}"
                f": use redis://, rediss://, sentinel:// or amqp://"
            )
        if self.scheme in REDIS_SCHEMES:
            problem = broker.url_problem(self.broker_url)
            if problem is not None:
                raise ConfigError(problem)
        if self.scheme in broker.SENTINEL_SCHEMES and not self.broker_transport_options.get(
            "master_name"
        ):
            raise ConfigError(
                "a sentinel:// broker URL needs --broker-transport-option master_name=<name> "
                "(the name the sentinels monitor, as in Celery's broker_transport_options)"
            )
        try:
            broker.ssl_options(self.broker_ssl_options)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if self.event_source not in ("auto", "redis", "receiver"):
            raise ConfigError("--event-source must be auto, redis or receiver")
        if self.event_source == "redis" and self.scheme not in REDIS_SCHEMES:
            raise ConfigError(
                "--event-source redis needs a redis://, rediss:// or sentinel:// broker URL"
            )
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

"""Every setting of the reference workload, read from the environment in one place.

Celery's broker and result backend follow Celery's own variable names; everything else is
prefixed ``WORKLOAD_``. Values are read when a process starts (a worker, the API, a CLI), so
tests point a subprocess somewhere else simply by giving it another environment.
docs/workload.md lists every variable with its default.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from workload.queues import ROUTES, WORK_QUEUES


class ConfigError(ValueError):
    """An environment variable holds a value the workload cannot use."""


def env_str(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


def env_int(name: str, default: int, minimum: int = 0) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


def env_float(name: str, default: float, minimum: float = 0.0) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def env_limits(name: str, known: tuple[str, ...]) -> dict[str, int]:
    """``cpu=2000,email=500`` -> {queue: limit}; unknown queues or bad numbers are errors."""
    limits: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in os.environ.get(name, "").split(","))):
        queue, _, raw = part.partition("=")
        queue = queue.strip()
        if queue not in known:
            raise ConfigError(f"{name}: unknown queue {queue!r}; known: {', '.join(known)}")
        try:
            limits[queue] = int(raw)
        except ValueError:
            raise ConfigError(f"{name}: limit of {queue!r} must be a whole number") from None
        if limits[queue] < 0:
            raise ConfigError(f"{name}: limit of {queue!r} must be >= 0")
    return limits


def env_list(name: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    return tuple(part.strip().lower() for part in raw.split(",") if part.strip())


@dataclass(frozen=True)
class RetrySettings:
    """Capped exponential backoff with full jitter, shared by every retrying task."""

    base_seconds: float
    max_seconds: float
    jitter: bool


@dataclass(frozen=True)
class UrlPolicy:
    """Which URLs the API accepts and the workers fetch (thumbnails, fetch_data)."""

    schemes: tuple[str, ...]
    # Empty means "any host", still subject to the private-network rule below.
    hosts: tuple[str, ...]
    allow_private: bool


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int
    sender: str
    timeout: float
    starttls: bool
    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class Settings:
    broker_url: str
    result_backend: str
    data_redis_url: str
    visibility_timeout: int
    unacked_restore_interval: int | None
    unacked_restore_throttle: int | None
    result_expires: int
    prefetch_multiplier: int
    task_events: bool
    redis_connect_timeout: float
    redis_socket_timeout: float
    retry: RetrySettings
    url_policy: UrlPolicy
    smtp: SmtpSettings
    email_rate_limit: str
    report_dir: Path
    report_max_rows: int
    report_work_rounds: int
    report_max_retries: int
    email_max_retries: int
    image_max_retries: int
    fetch_max_retries: int
    debit_max_retries: int
    lock_ttl_ms: int
    lock_retry_seconds: float
    debit_hold_seconds: float
    opening_balance: int
    http_timeout: float
    http_max_bytes: int
    thumbnail_dir: Path
    thumbnail_size: int
    image_max_pixels: int
    api_max_body_bytes: int
    # Admission control: queue -> most waiting messages before the API answers 429 (0: off).
    api_backlog_limits: dict[str, int]
    api_backlog_cache_ms: int
    api_retry_after: int
    state_dir: Path
    beat_refresh_stats_seconds: float
    beat_purge_seconds: float
    report_retention: int
    dlq_retention: int
    log_format: str
    log_level: str


def _optional_int(name: str) -> int | None:
    return env_int(name, 0, minimum=1) if os.environ.get(name, "").strip() else None


# Queues the API publishes to, so the ones admission control guards.
API_QUEUES: tuple[str, ...] = tuple(q for q in WORK_QUEUES if q in ROUTES.values())
DEFAULT_MAX_BACKLOG = 10_000


def backlog_limits() -> dict[str, int]:
    """Admission limits per API queue ({queue: most waiting messages}, 0 = no limit).

    ``WORKLOAD_API_MAX_BACKLOG`` is every queue's limit (10,000 by default);
    ``WORKLOAD_API_BACKLOG_LIMITS`` (``email=500,cpu=2000``) overrides single queues.
    The status page and the stack read the limits from here.
    """
    default = env_int("WORKLOAD_API_MAX_BACKLOG", DEFAULT_MAX_BACKLOG)
    overrides = env_limits("WORKLOAD_API_BACKLOG_LIMITS", API_QUEUES)
    return {queue: overrides.get(queue, default) for queue in API_QUEUES}


def load() -> Settings:
    """Read the environment now; raises ConfigError naming the variable at fault."""
    broker = env_str("CELERY_BROKER_URL", "redis://localhost:6379/0")
    scratch = Path(tempfile.gettempdir()) / "workload"
    result_expires = env_int("WORKLOAD_RESULT_EXPIRES", 86400, minimum=1)
    return Settings(
        broker_url=broker,
        result_backend=env_str("CELERY_RESULT_BACKEND", "redis://localhost:6379/1"),
        data_redis_url=env_str("WORKLOAD_DATA_REDIS_URL", broker),
        visibility_timeout=env_int("WORKLOAD_VISIBILITY_TIMEOUT", 3600, minimum=1),
        unacked_restore_interval=_optional_int("WORKLOAD_UNACKED_RESTORE_INTERVAL"),
        unacked_restore_throttle=_optional_int("WORKLOAD_UNACKED_RESTORE_THROTTLE"),
        result_expires=result_expires,
        prefetch_multiplier=env_int("WORKLOAD_PREFETCH_MULTIPLIER", 1, minimum=0),
        task_events=env_bool("WORKLOAD_TASK_EVENTS", True),
        redis_connect_timeout=env_float("WORKLOAD_REDIS_CONNECT_TIMEOUT", 5.0, minimum=0.1),
        redis_socket_timeout=env_float("WORKLOAD_REDIS_SOCKET_TIMEOUT", 30.0, minimum=2.0),
        retry=RetrySettings(
            base_seconds=env_float("WORKLOAD_RETRY_BASE", 1.0),
            max_seconds=env_float("WORKLOAD_RETRY_BACKOFF_MAX", 300.0),
            jitter=env_bool("WORKLOAD_RETRY_JITTER", True),
        ),
        url_policy=UrlPolicy(
            schemes=env_list("WORKLOAD_ALLOWED_SCHEMES", ("http", "https")),
            hosts=env_list("WORKLOAD_ALLOWED_HOSTS"),
            allow_private=env_bool("WORKLOAD_ALLOW_PRIVATE_NETWORKS", False),
        ),
        smtp=SmtpSettings(
            host=env_str("WORKLOAD_SMTP_HOST", "localhost"),
            port=env_int("WORKLOAD_SMTP_PORT", 25, minimum=1),
            sender=env_str("WORKLOAD_SMTP_FROM", "welcome@example.com"),
            timeout=env_float("WORKLOAD_SMTP_TIMEOUT", 10.0, minimum=0.1),
            starttls=env_bool("WORKLOAD_SMTP_STARTTLS", False),
            username=env_str("WORKLOAD_SMTP_USER", ""),
            password=env_str("WORKLOAD_SMTP_PASSWORD", ""),
        ),
        email_rate_limit=env_str("WORKLOAD_EMAIL_RATE_LIMIT", "10/m"),
        report_dir=Path(env_str("WORKLOAD_REPORT_DIR", str(scratch / "reports"))),
        report_max_rows=env_int("WORKLOAD_REPORT_MAX_ROWS", 200_000, minimum=1),
        report_work_rounds=env_int("WORKLOAD_REPORT_WORK_ROUNDS", 200, minimum=1),
        report_max_retries=env_int("WORKLOAD_REPORT_MAX_RETRIES", 5),
        email_max_retries=env_int("WORKLOAD_EMAIL_MAX_RETRIES", 5),
        image_max_retries=env_int("WORKLOAD_IMAGE_MAX_RETRIES", 3),
        fetch_max_retries=env_int("WORKLOAD_FETCH_MAX_RETRIES", 5),
        debit_max_retries=env_int("WORKLOAD_DEBIT_MAX_RETRIES", 20),
        lock_ttl_ms=env_int("WORKLOAD_LOCK_TTL_MS", 10_000, minimum=1),
        lock_retry_seconds=env_float("WORKLOAD_LOCK_RETRY_SECONDS", 0.2),
        debit_hold_seconds=env_float("WORKLOAD_DEBIT_HOLD_SECONDS", 0.0),
        opening_balance=env_int("WORKLOAD_OPENING_BALANCE", 10_000),
        http_timeout=env_float("WORKLOAD_HTTP_TIMEOUT", 10.0, minimum=0.1),
        http_max_bytes=env_int("WORKLOAD_HTTP_MAX_BYTES", 10 * 1024 * 1024, minimum=1),
        thumbnail_dir=Path(env_str("WORKLOAD_THUMBNAIL_DIR", str(scratch / "thumbnails"))),
        thumbnail_size=env_int("WORKLOAD_THUMBNAIL_SIZE", 128, minimum=1),
        image_max_pixels=env_int("WORKLOAD_IMAGE_MAX_PIXELS", 40_000_000, minimum=1),
        api_max_body_bytes=env_int("WORKLOAD_API_MAX_BODY_BYTES", 64 * 1024, minimum=256),
        api_backlog_limits=backlog_limits(),
        api_backlog_cache_ms=env_int("WORKLOAD_API_BACKLOG_CACHE_MS", 100),
        api_retry_after=env_int("WORKLOAD_API_RETRY_AFTER", 10, minimum=1),
        state_dir=Path(env_str("WORKLOAD_STATE_DIR", str(scratch / "state"))),
        beat_refresh_stats_seconds=env_float(
            "WORKLOAD_BEAT_REFRESH_STATS_SECONDS", 30.0, minimum=0.1
        ),
        beat_purge_seconds=env_float("WORKLOAD_BEAT_PURGE_SECONDS", 300.0, minimum=0.1),
        report_retention=env_int("WORKLOAD_REPORT_RETENTION", result_expires, minimum=1),
        dlq_retention=env_int("WORKLOAD_DLQ_RETENTION", 7 * 86400, minimum=1),
        log_format=env_str("WORKLOAD_LOG_FORMAT", "json").lower(),
        log_level=env_str("WORKLOAD_LOG_LEVEL", "INFO").upper(),
    )

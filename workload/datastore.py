"""The Redis client for the workload's own data (balances, locks, dead letters, job ids).

``WORKLOAD_DATA_REDIS_URL`` defaults to the broker's URL; every key starts with
``workload:`` so it never collides with kombu's keys.
"""

from __future__ import annotations

import functools

import redis

from workload.config import Settings

KEY_PREFIX = "workload:"


@functools.cache
def _client_for(url: str, connect_timeout: float, socket_timeout: float) -> redis.Redis:
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=connect_timeout,
        socket_timeout=socket_timeout,
        decode_responses=True,
    )


def client(settings: Settings) -> redis.Redis:
    """A shared client (redis-py's pool is safe across forks: it reconnects per process)."""
    return _client_for(
        settings.data_redis_url, settings.redis_connect_timeout, settings.redis_socket_timeout
    )


@functools.cache
def _broker_for(url: str, connect_timeout: float, socket_timeout: float) -> redis.Redis:
    return redis.Redis.from_url(
        url, socket_connect_timeout=connect_timeout, socket_timeout=socket_timeout
    )


def broker(settings: Settings) -> redis.Redis:
    """A shared client of the broker's Redis (queue lengths: admission control, stats)."""
    return _broker_for(
        settings.broker_url, settings.redis_connect_timeout, settings.redis_socket_timeout
    )

"""A producer for tests that hold a ``RedisServer``: the workload's own client configuration
(tests/support/workload_stack.py), JSON only and with task-sent events, pointed at it."""

from __future__ import annotations

from celery import Celery

from tests.support.procs import RedisServer, celery_env
from tests.support.workload_stack import client_app as workload_client


def client_app(redis_server: RedisServer) -> Celery:
    return workload_client(celery_env(redis_server))

"""Helpers the tests share: real redis-server, Celery workers and exporters on free ports."""
